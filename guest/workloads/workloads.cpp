#include "guest/workloads/workloads.hpp"

#include "guest/workloads/platform.hpp"

namespace vmmlab::guest {
namespace {

struct Workload {
    Text name;
    int (*run)(const Args& args);
};

constexpr Workload kWorkloads[] = {
    {"hello", run_hello},     {"pio", run_exits},       {"pio-ioeventfd", run_exits},
    {"mmio", run_exits},      {"cpuid", run_exits},     {"vmcall", run_exits},
    {"hlt", run_exits},       {"exits", run_exits},     {"stream", run_stream},
    {"gups", run_gups},       {"latency", run_latency}, {"fault", run_fault},
    {"cpuinfo", run_cpuinfo}, {"echo", run_echo},       {"blk", run_blk},
    {"net", run_net},
};

} // namespace

void print_line(const Line& line) {
    platform::write(line.text());
    platform::write("\n");
}

void print_text(Text text) {
    platform::write(text);
    platform::write("\n");
}

void report(Text workload, Text metric, ResultValue value, Text unit, int vcpu) {
    Line line;
    format_result(line, workload, metric, value, unit, vcpu);
    print_line(line);
}

double ticks_to_seconds(uint64_t ticks) {
    return static_cast<double>(ticks) / static_cast<double>(platform::tick_hz());
}

bool Args::only(const Text* known, size_t count) const {
    for (size_t i = 0; i < command_line_.option_count; ++i) {
        bool found = false;
        for (size_t k = 0; k < count; ++k)
            found = found || command_line_.options[i].key == known[k];
        if (found) continue;
        Line line;
        line.put("error: ").put(workload_).put(": unknown option '").put(command_line_.options[i].key);
        line.put("' (known:");
        for (size_t k = 0; k < count; ++k)
            line.put(' ').put(known[k]);
        if (count == 0) line.put(" none");
        line.put(')');
        print_line(line);
        return false;
    }
    return true;
}

bool Args::size(Text key, uint64_t fallback, uint64_t& out) const {
    const Option* option = command_line_.find(key);
    if (option == nullptr) {
        out = fallback;
        return true;
    }
    const NumberResult parsed = parse_size(option->value);
    if (parsed.ok && parsed.value != 0) {
        out = parsed.value;
        return true;
    }
    Line line;
    line.put("error: ").put(workload_).put(": bad ").put(key).put(" '").put(option->value);
    line.put("' (expected a byte count above 0 with an optional K/M/G/T suffix, e.g. 64M)");
    print_line(line);
    return false;
}

bool Args::count(Text key, uint64_t fallback, uint64_t& out) const {
    const Option* option = command_line_.find(key);
    if (option == nullptr) {
        out = fallback;
        return true;
    }
    const NumberResult parsed = parse_count(option->value);
    if (parsed.ok) {
        out = parsed.value;
        return true;
    }
    Line line;
    line.put("error: ").put(workload_).put(": bad ").put(key).put(" '").put(option->value);
    line.put("' (expected a decimal number)");
    print_line(line);
    return false;
}

Text Args::text(Text key, Text fallback) const {
    const Option* option = command_line_.find(key);
    return option == nullptr ? fallback : option->value;
}

void Args::error(Text message) const {
    Line line;
    line.put("error: ").put(workload_).put(": ").put(message);
    print_line(line);
}

int run_command_line(Text command_line) {
    CommandLine parsed;
    const ParseError error = parse_command_line(command_line, parsed);
    if (!error.ok()) {
        Line line;
        line.put("error: command line: ").put(error.message).put(": '").put(error.word).put('\'');
        print_line(line);
        return kExitUsage;
    }
    for (const Workload& workload : kWorkloads)
        if (workload.name == parsed.workload) return workload.run(Args{parsed.workload, parsed});
    Line line;
    line.put("error: unknown workload '").put(parsed.workload).put("' (known:");
    for (const Workload& workload : kWorkloads)
        line.put(' ').put(workload.name);
    line.put(')');
    print_line(line);
    return kExitUsage;
}

} // namespace vmmlab::guest
