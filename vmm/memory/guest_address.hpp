// A guest-physical address. Arithmetic is explicit and checked by the callers that hold sizes.
#pragma once

#include <compare>
#include <cstdint>

namespace vmmlab {

struct GuestAddress {
    std::uint64_t value{};
    constexpr GuestAddress() = default;
    constexpr explicit GuestAddress(std::uint64_t raw) : value(raw) {}
    constexpr auto operator<=>(const GuestAddress&) const = default;
    // Wraps like the hardware would; GuestMemory rejects any range whose end wraps.
    constexpr GuestAddress operator+(std::uint64_t offset) const { return GuestAddress{value + offset}; }
};

} // namespace vmmlab
