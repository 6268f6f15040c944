#include "cpu/vcpu_thread.hpp"

#include <cstring>
#include <mutex>

#include <fmt/format.h>
#include <sched.h>
#include <signal.h>
#include <spdlog/spdlog.h>

#include "base/error.hpp"

namespace vmmlab {

namespace {
void ignore_kick(int) {
}

std::string fatal_description(const VcpuExit& exit, kvm::VcpuFd& vcpu) {
    std::uint64_t rip = 0;
    try {
        rip = vcpu.regs().rip;
    } catch (const SystemError&) {
    }
    return fmt::format("vCPU {}: {} at rip {:#x}", vcpu.id(), describe(exit), rip);
}
} // namespace

int install_kick_signal() {
    static std::once_flag once;
    const int signal_number = SIGRTMIN;
    std::call_once(once, [signal_number] {
        struct sigaction action {};
        action.sa_handler = ignore_kick; // no SA_RESTART: KVM_RUN must return EINTR
        sigemptyset(&action.sa_mask);
        check_syscall(::sigaction(signal_number, &action, nullptr), "sigaction for the vCPU kick signal");
    });
    return signal_number;
}

VcpuThread::VcpuThread(kvm::VcpuFd vcpu, std::optional<unsigned> host_cpu)
    : vcpu_(std::move(vcpu)), host_cpu_(host_cpu) {
}

VcpuThread::~VcpuThread() {
    if (thread_.joinable()) thread_.join();
}

void VcpuThread::start(const PioBus& pio, const MmioBus& mmio, UnclaimedAccesses& unclaimed,
                       RunControl& control) {
    install_kick_signal();
    thread_ = std::thread([this, &pio, &mmio, &unclaimed, &control] {
        ExitContext context{pio, mmio, unclaimed, vcpu_.id()};
        loop(context, control);
    });
    started_.store(true, std::memory_order_release);
}

void VcpuThread::kick() {
    vcpu_.shared_run().immediate_exit = 1;
    if (started_.load(std::memory_order_acquire))
        ::pthread_kill(thread_.native_handle(), install_kick_signal());
}

void VcpuThread::join() {
    if (thread_.joinable()) thread_.join();
}

void VcpuThread::loop(ExitContext context, RunControl& control) {
    std::string name = fmt::format("vcpu{}", vcpu_.id());
    ::pthread_setname_np(::pthread_self(), name.c_str());
    if (host_cpu_) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(*host_cpu_, &set);
        if (int error = ::pthread_setaffinity_np(::pthread_self(), sizeof set, &set); error != 0) {
            control.request_stop(1, fmt::format("pinning vCPU {} to host CPU {}: {}", vcpu_.id(), *host_cpu_,
                                                std::strerror(error)));
            return;
        }
    }
    try {
        while (!control.stopping()) {
            if (vcpu_.run() == kvm::VcpuFd::RunResult::Interrupted) {
                vcpu_.shared_run().immediate_exit = 0;
                continue;
            }
            const VcpuExit exit = decode(vcpu_.run_area());
            ++counts_.by_kind[exit.index()];
            switch (handle_exit(exit, context)) {
            case ExitAction::Resume:
                break;
            case ExitAction::Stop:
                control.request_stop(
                    0, fmt::format("vCPU {}: the guest stopped ({})", vcpu_.id(), describe(exit)));
                return;
            case ExitAction::Reset:
                control.request_stop(
                    0, fmt::format("vCPU {}: the guest reset ({})", vcpu_.id(), describe(exit)));
                return;
            case ExitAction::Fatal:
                control.request_stop(1, fatal_description(exit, vcpu_));
                return;
            }
        }
    } catch (const std::exception& error) {
        control.request_stop(1, fmt::format("vCPU {}: {}", vcpu_.id(), error.what()));
    }
}

} // namespace vmmlab
