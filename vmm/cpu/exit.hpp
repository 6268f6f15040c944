// A VM exit as the vCPU loop sees it: decoded once from the kvm_run area into a sum type, so handling
// is a plain function over values and tests can feed it synthetic exits.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <variant>

#include "bus/address.hpp"

namespace vmmlab {

// The guest executed IN/INS: the handler fills `data` (size * count bytes, inside the kvm_run area).
struct IoIn {
    PioAddress port;
    std::uint8_t size; // bytes per access: 1, 2 or 4
    std::uint32_t count;
    std::span<std::byte> data;
};
// The guest executed OUT/OUTS: `data` holds size * count bytes.
struct IoOut {
    PioAddress port;
    std::uint8_t size;
    std::uint32_t count;
    std::span<const std::byte> data;
};
struct MmioRead {
    MmioAddress address;
    std::span<std::byte> data; // 1 to 8 bytes to fill
};
struct MmioWrite {
    MmioAddress address;
    std::span<const std::byte> data;
};
struct Hlt {};
struct Shutdown {}; // triple fault or the guest asked for a reset the hard way
struct SystemEvent {
    std::uint32_t type; // KVM_SYSTEM_EVENT_SHUTDOWN, _RESET, _CRASH
};
struct FailEntry {
    std::uint64_t hardware_reason;
    std::uint32_t cpu;
};
struct InternalError {
    std::uint32_t suberror;
};
// An exit reason vmmlab does not handle, or a kvm_run area whose fields do not make sense
// (an I/O data offset outside the area, an access size that no instruction produces).
struct Unknown {
    std::uint32_t reason;
    bool malformed = false;
};

using VcpuExit = std::variant<IoIn, IoOut, MmioRead, MmioWrite, Hlt, Shutdown, SystemEvent, FailEntry,
                              InternalError, Unknown>;

// Decodes the exit described by a vCPU's kvm_run area (the whole mapped area, so offsets the kernel
// reports are checked against its end). Pure: reads the area, allocates nothing.
VcpuExit decode(std::span<std::byte> run_area);

// "io-out port 0x3f8 size 1 count 1", "hlt", "unknown (reason 42)" — for logs and test messages.
std::string describe(const VcpuExit& exit);

} // namespace vmmlab
