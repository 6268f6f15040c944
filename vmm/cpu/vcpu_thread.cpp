#include "cpu/vcpu_thread.hpp"

#include <algorithm>
#include <cstring>
#include <mutex>
#include <stdexcept>

#include <fmt/format.h>
#include <sched.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <time.h>
#include <unistd.h>

#include "base/error.hpp"
#include "base/overloaded.hpp"

namespace vmmlab {

namespace {
void ignore_kick(int) {
}

std::uint64_t now_ns() {
    timespec now{};
    ::clock_gettime(CLOCK_MONOTONIC, &now);
    return static_cast<std::uint64_t>(now.tv_sec) * 1'000'000'000ULL +
           static_cast<std::uint64_t>(now.tv_nsec);
}

// The device site and the address/size/data of an exit, for the stats and the trace record.
struct ExitSite {
    SiteId site = kNoSite;
    std::uint64_t address = 0;
    std::uint8_t size = 0;
    bool is_write = false;
    std::span<const std::byte> data;
};

ExitSite site_of(const VcpuExit& exit, const SiteTable& sites) {
    return std::visit(Overloaded{
                          [&](const IoIn& in) {
                              return ExitSite{sites.find(in.port), in.port.value, in.size, false, in.data};
                          },
                          [&](const IoOut& out) {
                              return ExitSite{sites.find(out.port), out.port.value, out.size, true, out.data};
                          },
                          [&](const MmioRead& read) {
                              return ExitSite{sites.find(read.address), read.address.value,
                                              static_cast<std::uint8_t>(read.data.size()), false, read.data};
                          },
                          [&](const MmioWrite& write) {
                              return ExitSite{sites.find(write.address), write.address.value,
                                              static_cast<std::uint8_t>(write.data.size()), true, write.data};
                          },
                          [](const auto&) { return ExitSite{}; },
                      },
                      exit);
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
                       RunControl& control, const VcpuTracing& tracing) {
    install_kick_signal();
    sites_ = tracing.sites;
    if ((tracing.counters || tracing.ring_capacity > 0) && sites_ == nullptr)
        throw std::invalid_argument("vCPU tracing needs a site table");
    if (tracing.counters) stats_ = std::make_unique<ExitStats>(sites_->size());
    if (tracing.ring_capacity > 0) {
        ring_ = std::make_unique<TraceRing>(tracing.ring_capacity);
        // KVM copies the GPRs into kvm_run on every exit, so each record gets its RIP without an ioctl.
        vcpu_.shared_run().kvm_valid_regs = KVM_SYNC_X86_REGS;
    }
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

void VcpuThread::account(const VcpuExit& exit, std::uint64_t exit_ns) {
    const ExitSite where = site_of(exit, *sites_);
    const std::uint64_t duration = now_ns() - exit_ns;
    if (stats_) stats_->record(exit.index(), where.site, duration);
    if (ring_) {
        ExitRecord record;
        record.start_ns = exit_ns;
        record.duration_ns = duration;
        record.vcpu = vcpu_.id();
        record.reason = static_cast<std::uint8_t>(exit.index());
        record.site = where.site;
        record.address = where.address;
        record.rip = vcpu_.shared_run().s.regs.regs.rip;
        record.size = where.size;
        record.is_write = where.is_write;
        const std::size_t bytes = std::min(where.data.size(), record.data.size());
        std::copy_n(where.data.begin(), bytes, record.data.begin());
        ring_->push(record);
    }
}

void VcpuThread::loop(ExitContext context, RunControl& control) {
    tid_.store(::gettid(), std::memory_order_release);
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
    const bool tracing = stats_ || ring_; // fixed for the run: decided once, not per exit
    try {
        while (!control.stopping()) {
            if (vcpu_.run() == kvm::VcpuFd::RunResult::Interrupted) {
                vcpu_.shared_run().immediate_exit = 0;
                continue;
            }
            const std::uint64_t exit_ns = tracing ? now_ns() : 0;
            const VcpuExit exit = decode(vcpu_.run_area());
            ++counts_.by_kind[exit.index()];
            const ExitAction action = handle_exit(exit, context);
            if (tracing) [[unlikely]]
                account(exit, exit_ns);
            switch (action) {
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
