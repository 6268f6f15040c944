#include "guest/workloads/platform.hpp"
#include "guest/workloads/workloads.hpp"

namespace vmmlab::guest {

int run_hello(const Args& args) {
    constexpr Text kOptions[] = {"exit"};
    uint64_t status = 0;
    if (!args.only(kOptions) || !args.count("exit", 0, status)) return kExitUsage;
    if (status > 255) {
        args.error("exit must be 0..255");
        return kExitUsage;
    }
    constexpr uint64_t kMiB = 1024 * 1024;
    const unsigned online = platform::cpu_count();
    Line line;
    line.put("hello from ")
        .put(platform::name())
        .put(": ")
        .put_u64(online)
        .put(' ')
        .put(platform::cpu_noun());
    line.put(", ").put_u64(platform::memory_bytes() / kMiB).put(" MiB RAM, page size ");
    line.put_bytes(platform::page_size());
    print_line(line);
    if (online < platform::cpus_expected()) {
        line.clear();
        line.put("hello: only ").put_u64(online).put(" of ").put_u64(platform::cpus_expected());
        line.put(' ').put(platform::cpu_noun()).put(" checked in within 1 s");
        print_line(line);
    }
    report("hello", "vcpus_online", ResultValue::whole(online), "count");
    report("hello", "memory", ResultValue::whole(platform::memory_bytes() / kMiB), "MiB");
    report("hello", "page_size", ResultValue::whole(platform::page_size()), "bytes");
    return static_cast<int>(status);
}

int run_fault(const Args& args) {
    constexpr Text kOptions[] = {"type"};
    if (!args.only(kOptions)) return kExitUsage;
    const Text type = args.text("type", "ud");
    if (type == Text{"panic"}) platform::fail("fault type=panic requested");
    Line line;
    line.put("fault: raising ").put(type);
    print_line(line);
    if (!platform::raise_exception(type)) {
        line.clear();
        line.put("type '").put(type).put(
            "' cannot be raised here (known: ud pf gp de panic; natively only panic)");
        args.error(line.text());
    }
    return kExitUsage;
}

} // namespace vmmlab::guest

namespace vmmlab::guest {

// echo [lines=N] [timeout=S]: reads N lines from the console input (the serial port in the guest,
// stdin natively) and prints each back as "echo: <line>"; proves that input reaches the guest.
int run_echo(const Args& args) {
    constexpr Text kOptions[] = {"lines", "timeout"};
    uint64_t lines = 1, timeout_s = 30;
    if (!args.only(kOptions) || !args.count("lines", 1, lines) || !args.count("timeout", 30, timeout_s))
        return kExitUsage;
    const uint64_t timeout_ticks = timeout_s * platform::tick_hz();
    uint64_t done = 0;
    Line line;
    while (done < lines) {
        const int value = platform::read_byte(timeout_ticks);
        if (value < 0) {
            Line message;
            message.put("no input for ").put_u64(timeout_s).put(" s after ").put_u64(done).put(" line(s)");
            args.error(message.text());
            report("echo", "lines", ResultValue::whole(done), "count");
            return kExitFailed;
        }
        if (value == '\r' || value == '\n') {
            if (line.text().empty()) continue; // the "\n" of a "\r\n", or an empty line
            Line echoed;
            echoed.put("echo: ").put(line.text());
            print_line(echoed);
            line.clear();
            ++done;
            continue;
        }
        line.put(static_cast<char>(value));
    }
    report("echo", "lines", ResultValue::whole(done), "count");
    return kExitOk;
}

} // namespace vmmlab::guest
