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
    run->add_flag("--boot-time", run_options.boot_time,
                  "print process start, first instruction and init times");

    vmmlab::cli::KnobFlags compare_flags;
    vmmlab::cli::CompareOptions compare_options;
    auto* compare =
        app.add_subcommand("compare", "run a workload natively, untuned and tuned; print one table");
    vmmlab::cli::add_knob_flags(*compare, compare_flags);
    vmmlab::cli::add_compare_flags(*compare, compare_options);

    CLI11_PARSE(app, argc, argv);
    spdlog::set_level(spdlog::level::from_str(log_level));

    try {
        if (info->parsed()) return run_info(info_options, info_json);
        if (run->parsed()) return vmmlab::cli::run_command(run_flags, run_options);
        if (compare->parsed()) return vmmlab::cli::compare_command(compare_flags, compare_options);
    } catch (const std::exception& error) {
        std::fprintf(stderr, "vmmlab: %s\n", error.what());
        return 1;
    }
    return 0;
}
