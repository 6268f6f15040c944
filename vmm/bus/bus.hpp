// An address-range bus for one address space (PIO or MMIO). Ranges are checked when inserted (no
// overlap, no wrap); once the VM runs the bus is only read, so lookups take no lock: a binary search
// over sorted ranges that also checks the access's last byte.
#pragma once

#include <algorithm>
#include <cstdint>
#include <expected>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "bus/address.hpp"
#include "bus/device.hpp"

namespace vmmlab {

template <typename Address>
class Bus {
public:
    struct Range {
        Address base;
        std::uint64_t size;
        Device* device;
        std::uint64_t last() const { return std::uint64_t{base.value} + size - 1; }
    };
    struct Hit {
        Device* device;
        std::uint64_t offset;
    };

    // Refuses an empty range, one that wraps the address space, or one that overlaps another.
    std::expected<void, std::string> insert(Address base, std::uint64_t size, Device& device) {
        const std::uint64_t start = base.value;
        const std::uint64_t limit = std::uint64_t{std::numeric_limits<decltype(base.value)>::max()};
        if (size == 0 || size - 1 > limit - start)
            return std::unexpected(
                fmt::format("{}: range {:#x}+{:#x} is empty or wraps", device.name(), start, size));
        Range range{base, size, &device};
        auto position = std::ranges::upper_bound(ranges_, base, {}, &Range::base);
        if (position != ranges_.end() && position->base.value <= range.last())
            return std::unexpected(fmt::format("{}: range {:#x}+{:#x} overlaps {}", device.name(), start,
                                               size, position->device->name()));
        if (position != ranges_.begin() && std::prev(position)->last() >= start)
            return std::unexpected(fmt::format("{}: range {:#x}+{:#x} overlaps {}", device.name(), start,
                                               size, std::prev(position)->device->name()));
        ranges_.insert(position, range);
        return {};
    }

    // The device whose range holds every byte of [address, address + length), or nothing.
    std::optional<Hit> find(Address address, std::uint64_t length) const {
        auto after = std::ranges::upper_bound(ranges_, address, {}, &Range::base);
        if (after == ranges_.begin() || length == 0) return std::nullopt;
        const Range& range = *std::prev(after);
        const std::uint64_t offset = std::uint64_t{address.value} - range.base.value;
        if (offset >= range.size || length > range.size - offset) return std::nullopt;
        return Hit{range.device, offset};
    }

    const std::vector<Range>& ranges() const { return ranges_; }

private:
    std::vector<Range> ranges_;
};

using PioBus = Bus<PioAddress>;
using MmioBus = Bus<MmioAddress>;

} // namespace vmmlab
