#include "memory/guest_memory.hpp"

#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>

namespace vmmlab {

std::string MemoryFault::describe() const {
    return fmt::format("guest range {:#x}+{:#x} is outside RAM", address.value, length);
}

GuestMemory::GuestMemory(std::vector<Region> regions, std::vector<std::shared_ptr<void>> owners)
    : regions_(std::move(regions)), owners_(std::move(owners)) {
    std::ranges::sort(regions_, {}, &Region::start);
    for (std::size_t i = 0; i < regions_.size(); ++i) {
        const auto& region = regions_[i];
        if (region.size == 0 || region.start.value + region.size < region.start.value)
            throw std::invalid_argument(
                fmt::format("guest memory region at {:#x} is empty or wraps", region.start.value));
        if (i > 0 && regions_[i - 1].end() > region.start)
            throw std::invalid_argument(
                fmt::format("guest memory regions overlap at {:#x}", region.start.value));
    }
}

const GuestMemory::Region* GuestMemory::find(GuestAddress gpa) const {
    // The last region starting at or below gpa, if gpa is inside it.
    auto after = std::ranges::upper_bound(regions_, gpa, {}, &Region::start);
    if (after == regions_.begin()) return nullptr;
    const Region& region = *std::prev(after);
    return gpa.value - region.start.value < region.size ? &region : nullptr;
}

std::expected<std::span<std::byte>, MemoryFault> GuestMemory::slice(GuestAddress gpa,
                                                                    std::uint64_t length) const {
    const Region* region = find(gpa);
    const MemoryFault fault{gpa, length};
    if (region == nullptr) return std::unexpected(fault);
    const std::uint64_t offset = gpa.value - region->start.value;
    if (length > region->size - offset) return std::unexpected(fault);
    return std::span<std::byte>(region->host + offset, length);
}

bool GuestMemory::contains(GuestAddress gpa, std::uint64_t length) const {
    if (length != 0 && gpa.value + (length - 1) < gpa.value) return false; // the last byte wraps
    std::uint64_t done = 0;
    while (done < length) {
        const Region* region = find(gpa + done);
        if (region == nullptr) return false;
        done += std::min(length - done, region->end().value - (gpa + done).value);
    }
    return true;
}

std::expected<void, MemoryFault> GuestMemory::read(GuestAddress gpa, std::span<std::byte> out) const {
    if (!contains(gpa, out.size())) return std::unexpected(MemoryFault{gpa, out.size()});
    std::uint64_t done = 0;
    while (done < out.size()) {
        const Region* region = find(gpa + done);
        const std::uint64_t offset = (gpa + done).value - region->start.value;
        const std::uint64_t chunk = std::min<std::uint64_t>(out.size() - done, region->size - offset);
        std::memcpy(out.data() + done, region->host + offset, chunk);
        done += chunk;
    }
    return {};
}

std::expected<void, MemoryFault> GuestMemory::write(GuestAddress gpa, std::span<const std::byte> in) const {
    if (!contains(gpa, in.size())) return std::unexpected(MemoryFault{gpa, in.size()});
    std::uint64_t done = 0;
    while (done < in.size()) {
        const Region* region = find(gpa + done);
        const std::uint64_t offset = (gpa + done).value - region->start.value;
        const std::uint64_t chunk = std::min<std::uint64_t>(in.size() - done, region->size - offset);
        std::memcpy(region->host + offset, in.data() + done, chunk);
        done += chunk;
    }
    return {};
}

std::uint64_t GuestMemory::total_size() const {
    std::uint64_t total = 0;
    for (const auto& region : regions_)
        total += region.size;
    return total;
}

} // namespace vmmlab
