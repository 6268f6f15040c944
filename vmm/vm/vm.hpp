// A VM assembled from a VmConfig: KVM handles, guest RAM, buses and devices, vCPU threads, and either the
// embedded tiny guest or a Linux kernel (config.kernel) laid out in memory. run() returns when the guest
// ends the VM.
//
// The platform every guest sees (PIO ports):
//   0x60, 0x64    i8042 keyboard controller, no keys, no mouse; IRQ 1 and 12; pulse 0xfe resets
//   0x70-0x71     CMOS RTC showing the host's clock (UTC)
//   0x80          POST/delay port: writes dropped, reads 0xff
//   0x3f8-0x3ff   16550A UART, IRQ 4: the console, in both directions
//   0x510 0x514   exit port, boot marker (guest/abi/boot_abi.hpp); 0x520, 0x524 benchmark sinks
//   0x600-0x602   ACPI sleep control/status and reset registers (power-off, reboot)
//   0xcf8-0xcff   PCI configuration mechanism #1 with an empty bus 0 (reads of every function all ones)
//   0x2e 0x4e 0x81-0x8f 0x2e8 0x2f8 0x3e8   probed by Linux, absent: Super I/O configuration, ISA DMA
//                 page registers, COM4, COM2, COM3. Reads return all ones ("nothing here"), writes are
//                 dropped, and neither counts as unclaimed
// In-kernel (KVM): PIC 0x20/0xa0/0x4d0, PIT 0x40-0x43 and 0x61, IO-APIC, local APICs. Other ports are
// unclaimed: answered the same way, but counted and logged, because the guest expected something there.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "config/vm_config.hpp"
#include "cpu/exit_handler.hpp"
#include "trace/exit_stats.hpp"
#include "trace/hw_exit_reasons.hpp"
#include "trace/kvm_stats.hpp"
#include "trace/site_table.hpp"

namespace vmmlab {

class KvmExitTracepoint; // trace/tracefs.hpp
struct VirtioFunction;   // vm.cpp
namespace virtio {
class VirtioDevice;
}

struct GuestResult {
    std::string workload, metric, unit;
    double value = 0;
    int vcpu = -1;
};

// Parses one "@result workload=... metric=... value=... unit=..." line; nothing for other lines.
std::optional<GuestResult> parse_result_line(std::string_view line);

struct RunReport {
    int exit_status = 0;
    std::string stop_reason;
    std::vector<GuestResult> results;
    std::vector<ExitCounts> exit_counts; // per vCPU
    std::uint64_t unclaimed_pio = 0, unclaimed_mmio = 0;
    std::string achieved_backing;
    // Monotonic times from process start (microseconds): VM set up, first KVM_RUN, boot marker 1, end.
    double setup_done_us = 0, first_run_us = 0, init_marker_us = -1, end_us = 0;

    // With TraceOptions::counters: every vCPU's userspace exits merged, and the sites they name.
    std::shared_ptr<const SiteTable> sites;
    std::optional<ExitStats> exit_stats;
    // With TraceOptions::kernel_stats, where KVM has KVM_GET_STATS_FD: what the kernel counted during the
    // run (end - start), for the VM and summed over its vCPUs. Empty where the kernel lacks the interface.
    std::optional<KvmStats> kernel_vm_stats, kernel_vcpu_stats;
    std::string kernel_stats_note; // why kernel stats are missing, if they are
    // With TraceOptions::timeline_path: records written, and records the rings had to drop.
    std::uint64_t trace_records = 0, trace_dropped = 0;
    // With TraceOptions::kvm_exit_tracepoint: the kernel's kvm:kvm_exit events of the vCPU threads by
    // hardware exit reason (SVM or VMX), or why they could not be captured.
    std::optional<KvmExitCounter> kvm_exits;
    std::string kvm_exits_note;
};

struct TraceOptions {
    bool counters = false;              // per-vCPU exit counts and latency histograms by reason and device
    bool kernel_stats = false;          // KVM's binary stats (VM and vCPUs) at start and end
    std::string timeline_path;          // non-empty: write a Chrome trace-event JSON of the latest exits here
    std::size_t ring_capacity = 100000; // exits kept per vCPU for the timeline
    bool kvm_exit_tracepoint = false;   // count kvm:kvm_exit for the vCPU threads through tracefs
    // With kernel_stats: every interval during the run, the vCPUs' key KVM stats since the last one.
    std::chrono::milliseconds stats_interval{0};
    std::function<void(const std::string& line)> on_interval{};
};

// A kernel or initrd that cannot be read or booted: a bad input rather than a host failure. The message
// is one line naming the file and the cause, e.g. "kernel /boot/vmlinuz: truncated bzImage: ...".
class GuestImageError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

struct ConsoleOptions {
    // Receives every byte the guest writes to its serial port; defaults to stdout.
    std::function<void(std::span<const std::byte>)> output;
    // Where the serial port's input comes from: a descriptor the caller keeps open for the run (e.g.
    // stdin), or -1 for none. `escape`: Ctrl-A x ends the VM (status 0); for a terminal in raw mode.
    int input_fd = -1;
    bool escape = false;
};

class Vm {
public:
    // `guest_image` is the tiny guest's ELF; a Linux guest (config.kernel set) does not use it. Throws
    // GuestImageError for a kernel or initrd that cannot be read or booted (a missing file or one that is
    // no bzImage before any VM is created), SystemError for an invalid config or a host set-up failure.
    Vm(const VmConfig& config, std::span<const std::byte> guest_image, ConsoleOptions console = {},
       TraceOptions trace = {});
    ~Vm();
    Vm(const Vm&) = delete;
    Vm& operator=(const Vm&) = delete;
    // Runs until the guest ends the VM, or until `timeout` (when non-zero) has passed: then the VM is
    // stopped with status 124 and a reason saying so, so a wedged guest cannot hang the caller.
    RunReport run(std::chrono::milliseconds timeout = std::chrono::milliseconds{0});

private:
    struct State;
    static void write_timeline(State& state, RunReport& report);
    static void start_exit_tracepoint(State& state, std::optional<KvmExitCounter>& counter,
                                      std::optional<KvmExitTracepoint>& tracepoint, RunReport& report);
    static void start_tiny_guest(State& s, std::span<const std::byte> guest_image, std::uint32_t flags,
                                 bool guest_avx);
    // One virtio-blk PCI function per configured disk (see vm.cpp for the addresses and GSIs).
    static void attach_disks(State& s);
    // Any virtio device as the next PCI function, with the I/O path of the config's io_* knobs.
    static VirtioFunction& attach_virtio_device(State& s, std::unique_ptr<virtio::VirtioDevice> device,
                                                std::string name);
    std::unique_ptr<State> state_;
};

// Monotonic microseconds since this process started (from /proc/self/stat), for boot timing.
double microseconds_since_process_start();

} // namespace vmmlab
