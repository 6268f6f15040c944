// Strong types for the two x86 address spaces a device can sit in. They do not convert into each other
// or from plain integers implicitly, so a port number can never be passed where an MMIO address belongs.
#pragma once

#include <compare>
#include <cstdint>

namespace vmmlab {

template <typename Tag, typename Raw>
struct TypedAddress {
    Raw value{};
    constexpr TypedAddress() = default;
    constexpr explicit TypedAddress(Raw raw) : value(raw) {}
    constexpr auto operator<=>(const TypedAddress&) const = default;
};

struct PioTag {};
struct MmioTag {};
using PioAddress = TypedAddress<PioTag, std::uint16_t>;
using MmioAddress = TypedAddress<MmioTag, std::uint64_t>;

} // namespace vmmlab
