// The workloads shared by the guest kernel and vmmlab-native, and the helpers they report through.
#pragma once

#include <stdint.h>

#include "guest/workloads/cmdline.hpp"
#include "guest/workloads/text.hpp"

namespace vmmlab::guest {

// Exit statuses (the guest writes them to the exit port; vmmlab-native returns them from main).
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailed = 1;     // the workload ran but its result did not verify
inline constexpr int kExitUsage = 64;     // bad command line, or a size that does not fit
inline constexpr int kExitPanic = 70;     // internal error (panic/assert)
inline constexpr int kExitException = 71; // guest only: a CPU exception or unexpected interrupt

// Parses the command line, runs the workload it names, returns the exit status.
int run_command_line(Text command_line);

// Output helpers: one line each, newline added.
void print_line(const Line& line);
void print_text(Text text);
void report(Text workload, Text metric, ResultValue value, Text unit, int vcpu = -1);

// Reads and checks the options of one workload; every problem is printed as an `error:` line.
class Args {
public:
    Args(Text workload, const CommandLine& command_line) : workload_(workload), command_line_(command_line) {}

    // Fails on any option not in `known`.
    template <size_t N>
    bool only(const Text (&known)[N]) const {
        return only(known, N);
    }
    bool only(const Text* known, size_t count) const;
    bool size(Text key, uint64_t fallback, uint64_t& out) const;
    bool count(Text key, uint64_t fallback, uint64_t& out) const;
    Text text(Text key, Text fallback) const;
    // Prints `error: <workload>: <message>`.
    void error(Text message) const;
    Text workload() const { return workload_; }

private:
    Text workload_;
    const CommandLine& command_line_;
};

// Nanoseconds / seconds for a TSC tick count.
double ticks_to_seconds(uint64_t ticks);

int run_hello(const Args& args);
int run_echo(const Args& args);    // echo [lines=N] [timeout=S]: console input back as "echo: ..."
int run_cpuinfo(const Args& args); // CPUID as this CPU sees it: vendor, topology, APIC IDs, caches
int run_exits(const Args& args);   // pio, pio-ioeventfd, mmio, cpuid, vmcall, hlt and `exits` (all)
int run_stream(const Args& args);
int run_gups(const Args& args);
int run_latency(const Args& args);
int run_fault(const Args& args);
int run_net(
    const Args& args); // net peer=... addr=... mode=rr|stream: UDP over virtio-net (guest/workloads/net.cpp)
int run_blk(
    const Args& args); // blk mode=... bs=... qd=...: the guest's virtio-blk disks (guest/workloads/blk.cpp)
                       // // fault [type=ud|pf|gp|de|panic]: tests the fault and panic paths

} // namespace vmmlab::guest
