// The vmmlab command line. Host set-up failures arrive here as exceptions and leave as one line.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>

#include <spdlog/spdlog.h>

#include "cli/info.hpp"
#include "cli/run_command.hpp"

namespace {

int run_info(const vmmlab::cli::InfoOptions& options, bool as_json) {
    auto info = vmmlab::cli::gather_info(options);
    if (as_json)
        std::printf("%s\n", info.dump(2).c_str());
    else
        std::fputs(vmmlab::cli::render_info(info).c_str(), stdout);
    return 0;
}

} // namespace

int main(int argc, char** argv) {
    CLI::App app{"vmmlab: a minimal KVM monitor for measuring and tuning the cost of virtualization"};
    app.require_subcommand(1);
    std::string log_level = "warn";
    app.add_option("--log-level", log_level, "trace, debug, info, warn, error, off")
        ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}));
    app.set_version_flag("--version", "vmmlab 0.1.0");

    vmmlab::cli::InfoOptions info_options;
    bool info_json = false;
    auto* info = app.add_subcommand("info", "KVM API, capabilities, hugepage pools, THP mode, sandbox use");
    info->add_flag("--json", info_json, "print the report as JSON");
    info->add_option("--kvm", info_options.kvm_path, "the KVM device")->capture_default_str();

    vmmlab::cli::KnobFlags run_flags;
    vmmlab::cli::RunOptions run_options;
    auto* run = app.add_subcommand(
        "run", "boot the embedded tiny guest (workload from --guest-cmdline), or Linux with --kernel");
    vmmlab::cli::add_knob_flags(*run, run_flags);
    vmmlab::cli::add_linux_flags(*run, run_flags);
    run->add_flag("--print-config", run_options.print_config,
                  "print the effective configuration as JSON and exit");
    run->add_option("--console-input", run_options.console_input,
                    "where the guest's serial input comes from: stdin (a terminal is put in raw mode; "
                    "Ctrl-A x quits) or none")
        ->capture_default_str();
    run->add_option("--timeout", run_options.timeout_s,
                    "seconds the guest may run; then the VM is stopped with status 124 (0: no limit)");
    run->add_flag("--stats", run_options.stats,
                  "end-of-run table: userspace exits by reason and device with latency percentiles, and "
                  "KVM's own exit statistics");
    run->add_option("--stats-json", run_options.stats_json, "write the --stats figures as JSON to FILE");
    run->add_option("--trace", run_options.trace,
                    "write the latest exits of each vCPU as Chrome trace-event JSON to FILE (Perfetto)");
    run->add_option("--stats-interval", run_options.stats_interval_s,
                    "print KVM's key exit statistics every this many seconds during the run");
    run->add_flag("--kvm-exits", run_options.kvm_exits,
                  "count the kernel's kvm:kvm_exit tracepoint for the vCPU threads by hardware exit reason "
                  "(SVM/VMX; needs tracefs, usually root)");
    run->add_option("--trace-capacity", run_options.trace_capacity, "exits kept per vCPU for --trace")
        ->capture_default_str();
    run->add_flag("--boot-time", run_options.boot_time,
                  "print process start, first instruction and init times");

    vmmlab::cli::KnobFlags compare_flags;
    vmmlab::cli::CompareOptions compare_options;
    auto* compare =
        app.add_subcommand("compare", "run a workload natively, untuned and tuned; print one table");
    vmmlab::cli::add_knob_flags(*compare, compare_flags);
    vmmlab::cli::add_compare_flags(*compare, compare_options);

    auto* trace = app.add_subcommand("trace", "work with exit traces");
    trace->require_subcommand(1);
    std::string trace_file;
    std::size_t trace_top = 10;
    auto* trace_report = trace->add_subcommand("report", "summarise a trace written by `run --trace FILE`");
    trace_report->add_option("FILE", trace_file, "the trace file")->required();
    trace_report->add_option("--top", trace_top, "exit sites (RIPs) to list")->capture_default_str();

    CLI11_PARSE(app, argc, argv);
    spdlog::set_level(spdlog::level::from_str(log_level));

    try {
        if (info->parsed()) return run_info(info_options, info_json);
        if (run->parsed()) return vmmlab::cli::run_command(run_flags, run_options);
        if (trace_report->parsed()) return vmmlab::cli::trace_report_command(trace_file, trace_top);
        if (compare->parsed()) return vmmlab::cli::compare_command(compare_flags, compare_options);
    } catch (const std::exception& error) {
        std::fprintf(stderr, "vmmlab: %s\n", error.what());
        return 1;
    }
    return 0;
}
