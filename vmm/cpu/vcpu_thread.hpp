// One thread per vCPU: KVM_RUN, decode, count, handle, until the VM stops. A kick sets immediate_exit
// in the kvm_run area and then signals the thread, so a kick that lands just before KVM_RUN is never lost.
#pragma once

#include <optional>
#include <thread>

#include <pthread.h>

#include "cpu/exit_handler.hpp"
#include "cpu/run_control.hpp"
#include "kvm/kvm.hpp"

namespace vmmlab {

class VcpuThread {
public:
    VcpuThread(kvm::VcpuFd vcpu, std::optional<unsigned> host_cpu);
    VcpuThread(const VcpuThread&) = delete;
    VcpuThread& operator=(const VcpuThread&) = delete;
    ~VcpuThread();

    kvm::VcpuFd& fd() { return vcpu_; }
    // Starts the run loop. Pinning happens on the new thread before its first KVM_RUN; a pinning
    // failure stops the VM with a clear reason.
    void start(const PioBus& pio, const MmioBus& mmio, UnclaimedAccesses& unclaimed, RunControl& control);
    void kick();
    void join();
    const ExitCounts& exit_counts() const { return counts_; } // valid after join()

private:
    void loop(ExitContext context, RunControl& control);

    kvm::VcpuFd vcpu_;
    std::optional<unsigned> host_cpu_;
    std::thread thread_;
    std::atomic<bool> started_{false};
    ExitCounts counts_;
};

// Installs the no-op handler of the kick signal (once per process) and returns its number.
int install_kick_signal();

} // namespace vmmlab
