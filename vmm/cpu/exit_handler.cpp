#include "cpu/exit_handler.hpp"

#include <algorithm>

#include <spdlog/spdlog.h>

#include "base/overloaded.hpp"
#include "kvm/kvm_uapi.hpp"

namespace vmmlab {

namespace {
// Logs the 1st to 10th, then every 10000th unclaimed access, so a guest probing ports cannot flood the log.
bool should_log(std::uint64_t count) {
    return count <= 10 || count % 10000 == 0;
}

template <typename Address>
ExitAction dispatch_read(const Bus<Address>& bus, Address address, std::span<std::byte> data,
                         std::atomic<std::uint64_t>& unclaimed, const char* space, unsigned vcpu) {
    if (auto hit = bus.find(address, data.size())) return hit->device->read(hit->offset, data);
    std::ranges::fill(data, std::byte{0xff});
    if (auto count = unclaimed.fetch_add(1, std::memory_order_relaxed) + 1; should_log(count))
        spdlog::warn("vCPU {}: unclaimed {} read at {:#x} ({} bytes), answered with all ones (#{})", vcpu,
                     space, std::uint64_t{address.value}, data.size(), count);
    return ExitAction::Resume;
}

template <typename Address>
ExitAction dispatch_write(const Bus<Address>& bus, Address address, std::span<const std::byte> data,
                          std::atomic<std::uint64_t>& unclaimed, const char* space, unsigned vcpu) {
    if (auto hit = bus.find(address, data.size())) return hit->device->write(hit->offset, data);
    if (auto count = unclaimed.fetch_add(1, std::memory_order_relaxed) + 1; should_log(count))
        spdlog::warn("vCPU {}: unclaimed {} write at {:#x} ({} bytes), dropped (#{})", vcpu, space,
                     std::uint64_t{address.value}, data.size(), count);
    return ExitAction::Resume;
}
} // namespace

const char* exit_kind_name(std::size_t index) {
    static constexpr const char* kNames[] = {
        "io-in",    "io-out",       "mmio-read",  "mmio-write",     "hlt",
        "shutdown", "system-event", "fail-entry", "internal-error", "unknown"};
    static_assert(std::size(kNames) == std::variant_size_v<VcpuExit>);
    return index < std::size(kNames) ? kNames[index] : "?";
}

ExitAction handle_exit(const VcpuExit& exit, ExitContext& context) {
    return std::visit(
        Overloaded{
            [&](const IoIn& in) {
                // String instructions (INS with REP) arrive as `count` accesses of `size` bytes each.
                ExitAction action = ExitAction::Resume;
                for (std::uint32_t i = 0; i < in.count && action == ExitAction::Resume; ++i)
                    action = dispatch_read(context.pio, in.port,
                                           in.data.subspan(std::size_t{i} * in.size, in.size),
                                           context.unclaimed.pio, "PIO", context.vcpu);
                return action;
            },
            [&](const IoOut& out) {
                ExitAction action = ExitAction::Resume;
                for (std::uint32_t i = 0; i < out.count && action == ExitAction::Resume; ++i)
                    action = dispatch_write(context.pio, out.port,
                                            out.data.subspan(std::size_t{i} * out.size, out.size),
                                            context.unclaimed.pio, "PIO", context.vcpu);
                return action;
            },
            [&](const MmioRead& read) {
                return dispatch_read(context.mmio, read.address, read.data, context.unclaimed.mmio, "MMIO",
                                     context.vcpu);
            },
            [&](const MmioWrite& write) {
                return dispatch_write(context.mmio, write.address, write.data, context.unclaimed.mmio, "MMIO",
                                      context.vcpu);
            },
            // Only reaches userspace without an in-kernel LAPIC: nothing could ever wake the vCPU.
            [](const Hlt&) { return ExitAction::Stop; },
            // Triple fault, or a reset through the keyboard controller / ACPI.
            [](const Shutdown&) { return ExitAction::Reset; },
            [](const SystemEvent& event) {
                if (event.type == KVM_SYSTEM_EVENT_RESET) return ExitAction::Reset;
                if (event.type == KVM_SYSTEM_EVENT_SHUTDOWN) return ExitAction::Stop;
                return ExitAction::Fatal;
            },
            [](const FailEntry&) { return ExitAction::Fatal; },
            [](const InternalError&) { return ExitAction::Fatal; },
            [](const Unknown&) { return ExitAction::Fatal; },
        },
        exit);
}

} // namespace vmmlab
