#include "cpu/exit.hpp"

#include <fmt/format.h>

#include "base/overloaded.hpp"
#include "kvm/kvm_uapi.hpp"

namespace vmmlab {

namespace {
VcpuExit decode_io(const kvm_run& run, std::span<std::byte> run_area) {
    const auto& io = run.io;
    const bool size_ok = io.size == 1 || io.size == 2 || io.size == 4;
    const std::uint64_t length = std::uint64_t{io.size} * io.count;
    // The kernel places the data inside the mapped area; check start and last byte before trusting it.
    if (!size_ok || io.count == 0 || io.data_offset > run_area.size() ||
        length > run_area.size() - io.data_offset)
        return Unknown{KVM_EXIT_IO, true};
    auto data = run_area.subspan(io.data_offset, length);
    PioAddress port{io.port};
    if (io.direction == KVM_EXIT_IO_OUT) return IoOut{port, io.size, io.count, data};
    if (io.direction == KVM_EXIT_IO_IN) return IoIn{port, io.size, io.count, data};
    return Unknown{KVM_EXIT_IO, true};
}

VcpuExit decode_mmio(kvm_run& run) {
    auto& mmio = run.mmio;
    if (mmio.len == 0 || mmio.len > sizeof(mmio.data)) return Unknown{KVM_EXIT_MMIO, true};
    auto data = std::as_writable_bytes(std::span(mmio.data)).first(mmio.len);
    MmioAddress address{mmio.phys_addr};
    if (mmio.is_write != 0) return MmioWrite{address, data};
    return MmioRead{address, data};
}
} // namespace

VcpuExit decode(std::span<std::byte> run_area) {
    if (run_area.size() < sizeof(kvm_run)) return Unknown{0, true};
    auto& run = *reinterpret_cast<kvm_run*>(run_area.data());
    switch (run.exit_reason) {
    case KVM_EXIT_IO:
        return decode_io(run, run_area);
    case KVM_EXIT_MMIO:
        return decode_mmio(run);
    case KVM_EXIT_HLT:
        return Hlt{};
    case KVM_EXIT_SHUTDOWN:
        return Shutdown{};
    case KVM_EXIT_SYSTEM_EVENT:
        return SystemEvent{run.system_event.type};
    case KVM_EXIT_FAIL_ENTRY:
        return FailEntry{run.fail_entry.hardware_entry_failure_reason, run.fail_entry.cpu};
    case KVM_EXIT_INTERNAL_ERROR:
        return InternalError{run.internal.suberror};
    default:
        return Unknown{run.exit_reason};
    }
}

std::string describe(const VcpuExit& exit) {
    return std::visit(
        Overloaded{
            [](const IoIn& e) {
                return fmt::format("io-in port {:#x} size {} count {}", e.port.value, e.size, e.count);
            },
            [](const IoOut& e) {
                return fmt::format("io-out port {:#x} size {} count {}", e.port.value, e.size, e.count);
            },
            [](const MmioRead& e) {
                return fmt::format("mmio-read {:#x} len {}", e.address.value, e.data.size());
            },
            [](const MmioWrite& e) {
                return fmt::format("mmio-write {:#x} len {}", e.address.value, e.data.size());
            },
            [](const Hlt&) { return std::string("hlt"); },
            [](const Shutdown&) { return std::string("shutdown"); },
            [](const SystemEvent& e) { return fmt::format("system-event type {}", e.type); },
            [](const FailEntry& e) {
                return fmt::format("fail-entry hardware reason {:#x} cpu {}", e.hardware_reason, e.cpu);
            },
            [](const InternalError& e) { return fmt::format("internal-error suberror {}", e.suberror); },
            [](const Unknown& e) {
                return fmt::format("unknown (reason {}{})", e.reason, e.malformed ? ", malformed" : "");
            },
        },
        exit);
}

} // namespace vmmlab
