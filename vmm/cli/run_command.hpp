// `vmmlab run` and `vmmlab compare`: knob flags -> VmConfig -> a VM running the embedded guest.
#pragma once

#include <CLI/CLI.hpp>
#include <expected>
#include <optional>
#include <string>
#include <vector>

#include <termios.h>

#include "config/vm_config.hpp"
#include "vm/vm.hpp"

namespace vmmlab::cli {

// Knob flags as given; an empty string means "not given" (the profile's or the file's value stays).
struct KnobFlags {
    std::string profile = "untuned";
    std::string config_file;
    unsigned cpus = 0;
    std::string memory, backing, guest_page, pin, halt_poll, disable_exits, cpu_model, guest_cmdline;
    std::string io_notify, io_irq, io_thread;
    bool prefault = false, no_prefault = false;
    // The Linux guest (`run` only): bzImage and initrd paths, and the kernel command line, which may be
    // given as an empty string.
    std::string kernel, initrd;
    std::optional<std::string> kernel_cmdline;
    // --disk, repeatable: each "path=IMG[,readonly=on][,direct=on][,engine=...]"; any given replace the
    // file's list.
    std::vector<std::string> disks;
};

void add_knob_flags(CLI::App& command, KnobFlags& flags);
// --kernel, --initrd, --cmdline and --disk.
void add_linux_flags(CLI::App& command, KnobFlags& flags);

// Profile first, then the JSON file, then each flag given. Every error is one line naming the knob.
// A Linux guest gets the host CPU model unless the flags or the file name one (Linux wants kvmclock, XSAVE
// and the host's features; the untuned profile's minimal model is for the tiny guest's measurements).
std::expected<VmConfig, std::string> build_config(const KnobFlags& flags, unsigned host_cpus);

// Puts a terminal into raw input mode for its lifetime and restores what was there before.
class RawTerminal {
public:
    explicit RawTerminal(int fd);
    ~RawTerminal();
    RawTerminal(const RawTerminal&) = delete;
    RawTerminal& operator=(const RawTerminal&) = delete;

private:
    int fd_;
    termios saved_{};
};

struct RunOptions {
    bool print_config = false; // print the effective config as JSON and exit
    bool boot_time = false;    // print process start -> first instruction -> init -> end
    bool quiet_config = false;
    std::string console_input = "stdin"; // stdin or none
    double timeout_s = 0;                // stop the VM with status 124 after this long; 0: never
    bool stats = false;                  // end-of-run table: userspace exits (histograms) + KVM's stats
    std::string stats_json;              // the same as JSON into this file
    std::string trace;                   // Chrome trace-event JSON of the latest exits into this file
    std::size_t trace_capacity = 100000; // exits kept per vCPU for --trace
    bool kvm_exits = false;              // count the kvm:kvm_exit tracepoint of the vCPU threads
    double stats_interval_s = 0;         // > 0: KVM's key stats every this many seconds during the run
};

// `vmmlab trace report FILE`: a summary of a trace written by `run --trace`.
int trace_report_command(const std::string& path, std::size_t top);
int run_command(const KnobFlags& flags, const RunOptions& options);

// Knob flags written as one string ("--guest-page 2m --backing thp") applied on top of `base`.
std::expected<KnobFlags, std::string> apply_flag_text(KnobFlags base, const std::string& text);

struct CompareOptions {
    std::string workload = "stream size=64M";
    unsigned runs = 3;
    bool native = true;
    // "LABEL=FLAGS" columns to compare instead of the untuned and tuned profiles, e.g.
    // "2m=--guest-page 2m"; each starts from the command's own flags.
    std::vector<std::string> variants;
    double timeout_s = 0; // per VM run, as for `run`
};
void add_compare_flags(CLI::App& command, CompareOptions& options);
int compare_command(const KnobFlags& flags, const CompareOptions& options);

// A one-paragraph summary of exits per kind and vCPU, for the end of a run.
std::string describe_exits(const RunReport& report);

} // namespace vmmlab::cli
