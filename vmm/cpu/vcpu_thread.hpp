// One thread per vCPU: KVM_RUN, decode, count, handle, until the VM stops. A kick sets immediate_exit
// in the kvm_run area and then signals the thread, so a kick that lands just before KVM_RUN is never lost.
#pragma once

#include <memory>
#include <optional>
#include <thread>

#include <pthread.h>
#include <sys/types.h>

#include "cpu/exit_handler.hpp"
#include "cpu/run_control.hpp"
#include "kvm/kvm.hpp"
#include "trace/exit_stats.hpp"
#include "trace/site_table.hpp"
#include "trace/trace_ring.hpp"

namespace vmmlab {

// What a vCPU thread records about its exits. Off (the default) costs one predictable branch per exit.
struct VcpuTracing {
    const SiteTable* sites = nullptr; // required when counting
    bool counters = false;            // ExitStats: counts and latency histograms by reason and site
    std::size_t ring_capacity = 0;    // > 0: a TraceRing of the latest exits (with RIP, via sync regs)
};

class VcpuThread {
public:
    VcpuThread(kvm::VcpuFd vcpu, std::optional<unsigned> host_cpu);
    VcpuThread(const VcpuThread&) = delete;
    VcpuThread& operator=(const VcpuThread&) = delete;
    ~VcpuThread();

    kvm::VcpuFd& fd() { return vcpu_; }
    // Starts the run loop. Pinning happens on the new thread before its first KVM_RUN; a pinning
    // failure stops the VM with a clear reason.
    void start(const PioBus& pio, const MmioBus& mmio, UnclaimedAccesses& unclaimed, RunControl& control,
               const VcpuTracing& tracing = {});
    void kick();
    void join();
    const ExitCounts& exit_counts() const { return counts_; }    // valid after join()
    const ExitStats* exit_stats() const { return stats_.get(); } // after join(); null when not counting
    const TraceRing* trace_ring() const { return ring_.get(); }  // after join(); null without a timeline
    // The thread's kernel id once it runs (0 before), e.g. for per-thread tracepoints.
    pid_t tid() const { return tid_.load(std::memory_order_acquire); }

private:
    void loop(ExitContext context, RunControl& control);
    void account(const VcpuExit& exit, std::uint64_t exit_ns);

    kvm::VcpuFd vcpu_;
    std::optional<unsigned> host_cpu_;
    std::thread thread_;
    std::atomic<bool> started_{false};
    std::atomic<pid_t> tid_{0};
    ExitCounts counts_;
    const SiteTable* sites_ = nullptr;
    std::unique_ptr<ExitStats> stats_;
    std::unique_ptr<TraceRing> ring_;
};

// Installs the no-op handler of the kick signal (once per process) and returns its number.
int install_kick_signal();

} // namespace vmmlab
