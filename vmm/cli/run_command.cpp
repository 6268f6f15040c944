#include "cli/run_command.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include "arch/x86/host_cpu.hpp"
#include "guest/embedded_image.hpp"
#include "trace/chrome_trace.hpp"
#include "trace/exit_stats.hpp"
#include "trace/kvm_stats.hpp"

namespace vmmlab::cli {

RawTerminal::RawTerminal(int fd) : fd_(fd) {
    if (::tcgetattr(fd_, &saved_) != 0) {
        fd_ = -1;
        return;
    }
    termios raw = saved_;
    // Keystrokes go to the guest one by one and unechoed, Ctrl-C and Ctrl-Z included; output processing
    // (OPOST: "\n" -> "\r\n") stays on, as the tiny guest ends its lines with "\n" only.
    raw.c_lflag &= ~static_cast<tcflag_t>(ICANON | ECHO | ECHONL | ISIG | IEXTEN);
    raw.c_iflag &= ~static_cast<tcflag_t>(IXON | ICRNL | INLCR | IGNCR | ISTRIP | BRKINT);
    raw.c_cc[VMIN] = 1;
    raw.c_cc[VTIME] = 0;
    ::tcsetattr(fd_, TCSANOW, &raw);
}

RawTerminal::~RawTerminal() {
    if (fd_ >= 0) ::tcsetattr(fd_, TCSANOW, &saved_);
}

void add_knob_flags(CLI::App& command, KnobFlags& flags) {
    command.add_option("--profile", flags.profile, "untuned or tuned: the starting set of knob values")
        ->capture_default_str();
    command.add_option("--config", flags.config_file, "a JSON file of knob values (see --print-config)");
    command.add_option("--cpus", flags.cpus, "number of vCPUs");
    command.add_option("--memory", flags.memory, "guest RAM, e.g. 256M or 4G");
    command.add_option("--backing", flags.backing, "host backing of guest RAM: 4k, thp, 2m, 1g");
    command.add_flag("--prefault", flags.prefault, "fault all guest RAM in before the guest starts");
    command.add_flag("--no-prefault", flags.no_prefault, "leave guest RAM to be faulted in on first touch");
    command.add_option("--guest-page", flags.guest_page, "leaf size of the guest's identity map: 4k, 2m, 1g");
    command.add_option("--pin", flags.pin, "host CPU of each vCPU, e.g. 0,1 or 2-3, or none");
    command.add_option("--halt-poll", flags.halt_poll, "KVM halt polling: default, off, or nanoseconds");
    command.add_option("--disable-exits", flags.disable_exits,
                       "exits KVM stops taking: none or hlt,pause,mwait (needs --pin)");
    command.add_option("--cpu-model", flags.cpu_model, "host (host topology and caches) or minimal");
    command.add_option("--guest-cmdline", flags.guest_cmdline,
                       "the guest's command line: workload and options");
    command.add_option(
        "--io-notify", flags.io_notify,
        "virtio queue kicks: exit (MMIO exit to userspace) or ioeventfd (needs --io-thread on)");
    command.add_option("--io-irq", flags.io_irq,
                       "virtio interrupts: userspace (KVM_SIGNAL_MSI) or irqfd (GSI routes and irqfds)");
    command.add_option("--io-thread", flags.io_thread,
                       "virtio device work: off (on the vCPU thread) or on (a thread per device)");
}

void add_linux_flags(CLI::App& command, KnobFlags& flags) {
    command.add_option("--kernel", flags.kernel,
                       "boot this Linux bzImage instead of the embedded tiny guest");
    command.add_option("--initrd", flags.initrd, "the Linux guest's initrd (e.g. from tools/mkinitramfs)");
    command.add_option_function<std::string>(
        "--cmdline", [&flags](const std::string& value) { flags.kernel_cmdline = value; },
        fmt::format("the Linux kernel's command line (default \"{}\")", kDefaultKernelCmdline));
    command
        .add_option("--disk", flags.disks,
                    "a virtio-blk disk: path=IMG[,readonly=on][,direct=on][,engine=sync|threads|uring] "
                    "(repeatable; one PCI function each)")
        ->allow_extra_args(false);
}

std::expected<VmConfig, std::string> build_config(const KnobFlags& flags, unsigned host_cpus) {
    const unsigned cpus = flags.cpus != 0 ? flags.cpus : 1;
    auto config = profile_config(flags.profile, cpus, host_cpus);
    if (!config) return config;
    bool cpu_model_chosen = !flags.cpu_model.empty();
    if (!flags.config_file.empty()) {
        std::ifstream in(flags.config_file);
        if (!in) return std::unexpected(fmt::format("config: {}: cannot open", flags.config_file));
        auto json = nlohmann::json::parse(in, nullptr, false);
        if (json.is_discarded())
            return std::unexpected(fmt::format("config: {}: not valid JSON", flags.config_file));
        config = apply_json(*config, json, host_cpus);
        if (!config) return config;
        cpu_model_chosen = cpu_model_chosen || json.contains("cpu_model");
        if (flags.cpus != 0 && config->cpus != flags.cpus && config->pin.size() == config->cpus)
            config->pin.clear(); // re-derived below for the new count
    }
    nlohmann::json overrides = nlohmann::json::object();
    if (flags.cpus != 0) {
        overrides["cpus"] = flags.cpus;
        if (config->profile == "tuned" && flags.pin.empty())
            overrides["pin"] = profile_config("tuned", flags.cpus, host_cpus)->pin;
    }
    auto set = [&](const char* key, const std::string& value) {
        if (!value.empty()) overrides[key] = value;
    };
    set("memory", flags.memory);
    set("backing", flags.backing);
    set("guest_page", flags.guest_page);
    set("pin", flags.pin);
    set("halt_poll", flags.halt_poll);
    set("disable_exits", flags.disable_exits);
    set("cpu_model", flags.cpu_model);
    set("guest_cmdline", flags.guest_cmdline);
    set("io_notify", flags.io_notify);
    set("io_irq", flags.io_irq);
    set("io_thread", flags.io_thread);
    set("kernel", flags.kernel);
    set("initrd", flags.initrd);
    if (flags.kernel_cmdline) overrides["kernel_cmdline"] = *flags.kernel_cmdline;
    if (!flags.disks.empty()) overrides["disks"] = flags.disks;
    if (flags.prefault) overrides["prefault"] = true;
    if (flags.no_prefault) overrides["prefault"] = false;
    auto result = apply_json(*config, overrides, host_cpus);
    if (!result) {
        // Name the flag, not the JSON key, for errors that came from the command line.
        std::string message = result.error();
        if (message.starts_with("config: ")) message = "--" + message.substr(8);
        for (auto& c : message)
            if (c == '_' && &c < message.data() + message.find(':')) c = '-';
        if (message.starts_with("--kernel-cmdline:")) message.replace(0, 16, "--cmdline");
        if (message.starts_with("--disks:")) message.replace(0, 7, "--disk");
        return std::unexpected(message);
    }
    if (result->boots_linux() && !cpu_model_chosen) result->cpu_model = x86::CpuModel::HostPassthrough;
    return result;
}

namespace {
std::chrono::milliseconds to_milliseconds(double seconds) {
    return std::chrono::milliseconds(static_cast<std::int64_t>(std::max(0.0, seconds) * 1000));
}
} // namespace

int trace_report_command(const std::string& path, std::size_t top) {
    auto summary = summarize_trace_file(path, top);
    if (!summary) {
        std::fprintf(stderr, "vmmlab: %s\n", summary.error().message.c_str());
        return 1;
    }
    std::fputs(format_trace_summary(*summary).c_str(), stdout);
    return 0;
}

void add_compare_flags(CLI::App& command, CompareOptions& options) {
    command.add_option("--timeout", options.timeout_s,
                       "seconds each VM run may take; then it is stopped with status 124 (0: no limit)");
    command.add_option("--workload", options.workload, "the guest command line to compare")
        ->capture_default_str();
    command.add_option("--runs", options.runs, "runs of each column")->capture_default_str();
    command.add_option("--variant", options.variants,
                       "LABEL=FLAGS: a column with these knob flags instead of untuned/tuned, e.g. "
                       "--variant '4k=--guest-page 4k' --variant '2m=--guest-page 2m' (repeatable)");
    command.add_flag("!--no-native", options.native, "leave out the native column");
}

std::expected<KnobFlags, std::string> apply_flag_text(KnobFlags base, const std::string& text) {
    CLI::App parser{"variant"};
    add_knob_flags(parser, base);
    try {
        parser.parse(text, false);
    } catch (const CLI::ParseError& error) {
        return std::unexpected(fmt::format("'{}': {}", text, error.what()));
    }
    return base;
}

std::string describe_exits(const RunReport& report) {
    std::string out;
    for (std::size_t vcpu = 0; vcpu < report.exit_counts.size(); ++vcpu) {
        std::string line;
        std::uint64_t total = 0;
        const auto& counts = report.exit_counts[vcpu].by_kind;
        for (std::size_t kind = 0; kind < counts.size(); ++kind) {
            if (counts[kind] == 0) continue;
            total += counts[kind];
            line += fmt::format("{}{} {}", line.empty() ? "" : ", ", exit_kind_name(kind), counts[kind]);
        }
        out += fmt::format("vCPU {}: {} userspace exits ({})\n", vcpu, total, line.empty() ? "none" : line);
    }
    if (report.unclaimed_pio + report.unclaimed_mmio > 0)
        out +=
            fmt::format("unclaimed accesses: {} PIO, {} MMIO\n", report.unclaimed_pio, report.unclaimed_mmio);
    return out;
}

int run_command(const KnobFlags& flags, const RunOptions& options) {
    const auto host = x86::read_host_cpu();
    auto config = build_config(flags, host.logical_cpus);
    if (!config) {
        std::fprintf(stderr, "vmmlab: %s\n", config.error().c_str());
        return 2;
    }
    // The cross-field rules too, so a bad combination is a usage error like a bad value.
    if (auto valid = validate(*config, host.pdpe1gb); !valid) {
        std::fprintf(stderr, "vmmlab: %s\n", valid.error().c_str());
        return 2;
    }
    if (options.print_config) {
        std::printf("%s\n", to_json(*config).dump(2).c_str());
        return 0;
    }
    if (!options.quiet_config) std::fprintf(stderr, "vmmlab: config: %s\n", describe(*config).c_str());
    ConsoleOptions console;
    std::optional<RawTerminal> raw_terminal;
    if (options.console_input == "stdin") {
        console.input_fd = STDIN_FILENO;
        if (::isatty(STDIN_FILENO)) {
            raw_terminal.emplace(STDIN_FILENO);
            console.escape = true;
            std::fprintf(stderr, "vmmlab: the terminal is the guest's serial console; Ctrl-A x quits\n");
        }
    } else if (options.console_input != "none") {
        std::fprintf(stderr, "vmmlab: --console-input %s: expected stdin or none\n",
                     options.console_input.c_str());
        return 2;
    }
    TraceOptions trace{.counters = options.stats || !options.stats_json.empty(),
                       .kernel_stats =
                           options.stats || !options.stats_json.empty() || options.stats_interval_s > 0,
                       .timeline_path = options.trace,
                       .ring_capacity = options.trace_capacity,
                       .kvm_exit_tracepoint = options.kvm_exits,
                       .stats_interval = to_milliseconds(options.stats_interval_s),
                       .on_interval = [](const std::string& line) {
                           std::fprintf(stderr, "vmmlab: kvm stats: %s\n", line.c_str());
                       }};
    Vm vm(*config, embedded_guest_image(), std::move(console), std::move(trace));
    auto report = vm.run(to_milliseconds(options.timeout_s));
    raw_terminal.reset();
    std::fprintf(stderr, "vmmlab: %s; exit status %d\n", report.stop_reason.c_str(), report.exit_status);
    std::fprintf(stderr, "vmmlab: memory: %s\n", report.achieved_backing.c_str());
    std::fputs(describe_exits(report).c_str(), stderr);
    const auto run_time = std::chrono::nanoseconds(
        static_cast<std::int64_t>(std::max(0.0, report.end_us - report.first_run_us) * 1000));
    if (options.stats && report.exit_stats) {
        std::fprintf(stderr, "\nuserspace exits (time in the monitor per exit):\n%s",
                     format_exit_stats(*report.exit_stats, *report.sites, run_time).c_str());
        if (report.kernel_vcpu_stats)
            std::fprintf(
                stderr, "\nKVM's own statistics over the run (vCPUs summed; * = exits and halts):\n%s",
                format_kvm_stats(report.kernel_vcpu_stats->layout, report.kernel_vcpu_stats->snapshot)
                    .c_str());
        else
            std::fprintf(stderr, "\nKVM's own statistics: unavailable (%s)\n",
                         report.kernel_stats_note.c_str());
        if (report.kernel_vm_stats)
            std::fprintf(
                stderr, "\nKVM's statistics of the VM (MMU, TLB flushes, ...):\n%s",
                format_kvm_stats(report.kernel_vm_stats->layout, report.kernel_vm_stats->snapshot).c_str());
    }
    if (!options.stats_json.empty() && report.exit_stats) {
        nlohmann::json json;
        json["config"] = to_json(*config);
        json["exit_status"] = report.exit_status;
        json["userspace_exits"] = exit_stats_json(*report.exit_stats, *report.sites, run_time);
        if (report.kernel_vm_stats)
            json["kvm_vm_stats"] =
                kvm_stats_json(report.kernel_vm_stats->layout, report.kernel_vm_stats->snapshot);
        if (report.kernel_vcpu_stats)
            json["kvm_vcpu_stats"] =
                kvm_stats_json(report.kernel_vcpu_stats->layout, report.kernel_vcpu_stats->snapshot);
        std::ofstream out(options.stats_json);
        out << json.dump(2) << '\n';
        if (!out) {
            std::fprintf(stderr, "vmmlab: --stats-json %s: cannot write\n", options.stats_json.c_str());
            return 1;
        }
    }
    if (options.kvm_exits) {
        if (report.kvm_exits)
            std::fprintf(stderr,
                         "\nkvm:kvm_exit events of the vCPU threads, by hardware exit reason (%llu lines "
                         "unparsed):\n%s",
                         static_cast<unsigned long long>(report.kvm_exits->malformed()),
                         report.kvm_exits->format().c_str());
        else
            std::fprintf(stderr, "vmmlab: --kvm-exits: %s\n", report.kvm_exits_note.c_str());
    }
    if (!options.trace.empty())
        std::fprintf(
            stderr,
            "vmmlab: trace: %llu exits written to %s (%llu older ones dropped; see --trace-capacity)\n",
            static_cast<unsigned long long>(report.trace_records), options.trace.c_str(),
            static_cast<unsigned long long>(report.trace_dropped));
    if (options.boot_time) {
        std::fprintf(stderr, "vmmlab: boot time: process start -> VM set up %.0f us -> first KVM_RUN %.0f us",
                     report.setup_done_us, report.first_run_us);
        if (report.init_marker_us >= 0)
            std::fprintf(stderr, " -> init marker %.0f us", report.init_marker_us);
        std::fprintf(stderr, " -> VM end %.0f us\n", report.end_us);
    }
    return report.exit_status;
}

} // namespace vmmlab::cli

namespace vmmlab::cli {

namespace {
struct Series {
    std::string unit;
    std::vector<double> values;
    double mean() const {
        double sum = 0;
        for (double v : values)
            sum += v;
        return values.empty() ? 0 : sum / static_cast<double>(values.size());
    }
    double spread() const { // sample standard deviation
        if (values.size() < 2) return 0;
        double m = mean(), sum = 0;
        for (double v : values)
            sum += (v - m) * (v - m);
        return std::sqrt(sum / static_cast<double>(values.size() - 1));
    }
};
using Column = std::map<std::string, Series>; // "workload.metric" -> values

void add_results(Column& column, const std::vector<GuestResult>& results) {
    for (const auto& result : results) {
        auto& series = column[result.workload + "." + result.metric];
        series.unit = result.unit;
        series.values.push_back(result.value);
    }
}

std::string native_program() {
    std::error_code error;
    auto self = std::filesystem::read_symlink("/proc/self/exe", error);
    auto native = self.parent_path() / "vmmlab-native";
    return !error && std::filesystem::exists(native) ? native.string() : std::string{};
}

std::expected<std::vector<GuestResult>, std::string> run_native(const std::string& program,
                                                                const std::string& workload) {
    std::string command = program;
    std::istringstream words(workload);
    for (std::string word; words >> word;)
        command += " '" + word + "'";
    FILE* pipe = ::popen(command.c_str(), "r");
    if (pipe == nullptr) return std::unexpected("cannot start " + program);
    std::vector<GuestResult> results;
    char line[4096];
    while (std::fgets(line, sizeof line, pipe) != nullptr) {
        std::string_view text(line);
        while (!text.empty() && (text.back() == '\n' || text.back() == '\r'))
            text.remove_suffix(1);
        if (auto result = parse_result_line(text)) results.push_back(*result);
    }
    int status = ::pclose(pipe);
    if (status != 0) return std::unexpected(fmt::format("{} exited with status {}", command, status));
    return results;
}
} // namespace

int compare_command(const KnobFlags& flags, const CompareOptions& options) {
    const unsigned host_cpus = x86::read_host_cpu().logical_cpus;
    std::vector<std::pair<std::string, Column>> columns;
    std::map<std::string, KnobFlags> column_flags; // per VM column
    const std::string native = options.native ? native_program() : std::string{};
    if (!native.empty()) columns.emplace_back("native", Column{});
    if (options.variants.empty())
        for (const char* profile : {"untuned", "tuned"}) {
            columns.emplace_back(profile, Column{});
            column_flags[profile] = flags;
            column_flags[profile].profile = profile;
        }
    for (const auto& variant : options.variants) {
        const auto equals = variant.find('=');
        const std::string label = variant.substr(0, equals);
        if (equals == std::string::npos || label.empty() || label.starts_with('-') ||
            column_flags.contains(label) || label == "native") {
            std::fprintf(stderr, "vmmlab: --variant '%s': expected LABEL=FLAGS with a new label\n",
                         variant.c_str());
            return 2;
        }
        auto parsed = apply_flag_text(flags, variant.substr(equals + 1));
        if (!parsed) {
            std::fprintf(stderr, "vmmlab: --variant %s\n", parsed.error().c_str());
            return 2;
        }
        columns.emplace_back(label, Column{});
        column_flags[label] = *parsed;
    }
    struct ColumnExits {
        ExitCounts counts; // summed over vCPUs and runs
        double seconds = 0;
    };
    std::map<std::string, ColumnExits> exits; // VM column -> its exits and guest run time

    for (auto& [name, column] : columns) {
        if (name == "native") continue;
        column_flags[name].guest_cmdline = options.workload;
        auto config = build_config(column_flags[name], host_cpus);
        if (!config) {
            std::fprintf(stderr, "vmmlab: %s\n", config.error().c_str());
            return 2;
        }
        if (config->boots_linux()) {
            std::fprintf(stderr,
                         "vmmlab: %s: compare runs the tiny guest's workloads; a kernel (%s) cannot be "
                         "compared\n",
                         name.c_str(), config->kernel.c_str());
            return 2;
        }
        std::fprintf(stderr, "vmmlab: %s: %s\n", name.c_str(), describe(*config).c_str());
    }
    // Interleave the columns run by run, so a drift in machine speed hits all of them alike.
    for (unsigned run = 0; run < options.runs; ++run) {
        for (auto& [name, column] : columns) {
            std::vector<GuestResult> results;
            if (name == "native") {
                auto native_results = run_native(native, options.workload);
                if (!native_results) {
                    std::fprintf(stderr, "vmmlab: native: %s\n", native_results.error().c_str());
                    return 1;
                }
                results = *native_results;
            } else {
                auto config = build_config(column_flags[name], host_cpus).value();
                Vm vm(config, embedded_guest_image(), ConsoleOptions{[](std::span<const std::byte>) {}});
                auto report = vm.run(to_milliseconds(options.timeout_s));
                if (report.exit_status != 0) {
                    std::fprintf(stderr, "vmmlab: %s run %u: %s, exit status %d\n", name.c_str(), run + 1,
                                 report.stop_reason.c_str(), report.exit_status);
                    return 1;
                }
                results = report.results;
                auto& column_exits = exits[name];
                for (const auto& counts : report.exit_counts)
                    for (std::size_t kind = 0; kind < counts.by_kind.size(); ++kind)
                        column_exits.counts.by_kind[kind] += counts.by_kind[kind];
                column_exits.seconds += (report.end_us - report.first_run_us) / 1e6;
            }
            add_results(column, results);
            std::fprintf(stderr, "vmmlab: %s run %u/%u done\n", name.c_str(), run + 1, options.runs);
        }
    }

    std::printf("workload: %s, %u runs per column (mean ± sample standard deviation%s)\n\n",
                options.workload.c_str(), options.runs, native.empty() ? "" : "; % of native");
    std::string header = fmt::format("| {:<34} | {:<8} |", "metric", "unit");
    for (const auto& [name, column] : columns)
        header += fmt::format(" {:>26} |", name);
    std::printf("%s\n|%s|%s|", header.c_str(), std::string(36, '-').c_str(), std::string(10, '-').c_str());
    for (std::size_t i = 0; i < columns.size(); ++i)
        std::printf("%s|", std::string(28, '-').c_str());
    std::printf("\n");
    const Column& reference = columns.back().second;
    for (const auto& [metric, series] : reference) {
        std::string row = fmt::format("| {:<34} | {:<8} |", metric, series.unit);
        const Series* native_series = nullptr;
        if (!native.empty())
            if (auto found = columns.front().second.find(metric); found != columns.front().second.end())
                native_series = &found->second;
        for (const auto& [name, column] : columns) {
            auto found = column.find(metric);
            if (found == column.end()) {
                row += fmt::format(" {:>26} |", "-");
                continue;
            }
            std::string cell = fmt::format("{:.4g} ± {:.2g}", found->second.mean(), found->second.spread());
            if (native_series != nullptr && name != "native" && native_series->mean() != 0)
                cell += fmt::format(" ({:.0f}%)", 100.0 * found->second.mean() / native_series->mean());
            row += fmt::format(" {:>26} |", cell);
        }
        std::printf("%s\n", row.c_str());
    }
    std::printf("\nuserspace exits per second of guest run time, by reason:\n");
    for (const auto& [name, column_exits] : exits) {
        std::string line;
        std::uint64_t total = 0;
        for (std::size_t kind = 0; kind < column_exits.counts.by_kind.size(); ++kind) {
            const auto count = column_exits.counts.by_kind[kind];
            total += count;
            if (count > 0 && column_exits.seconds > 0)
                line += fmt::format(", {} {:.0f}", exit_kind_name(kind),
                                    static_cast<double>(count) / column_exits.seconds);
        }
        std::printf("  %-10s total %.0f%s\n", name.c_str(),
                    column_exits.seconds > 0 ? static_cast<double>(total) / column_exits.seconds : 0,
                    line.c_str());
    }
    return 0;
}

} // namespace vmmlab::cli
