// Guest RAM as the monitor sees it: a sorted set of regions, each a host mapping. Every access names a
// guest range and is checked end to end (first and last byte, no overflow) before any byte is touched;
// callers get bounded spans or an error naming the range, never a raw pointer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <expected>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "memory/guest_address.hpp"

namespace vmmlab {

struct MemoryFault {
    GuestAddress address;
    std::uint64_t length;
    // "guest range 0x1000+0x20 is outside RAM"
    std::string describe() const;
};

class GuestMemory {
public:
    struct Region {
        GuestAddress start;
        std::uint64_t size;
        std::byte* host;
        GuestAddress end() const { return start + size; } // one past the last byte
    };

    GuestMemory() = default;
    // Regions must not overlap; they are sorted by start here. `owners` keep the host mappings alive.
    GuestMemory(std::vector<Region> regions, std::vector<std::shared_ptr<void>> owners = {});

    // The host bytes of [gpa, gpa + length) when the range lies inside one region.
    std::expected<std::span<std::byte>, MemoryFault> slice(GuestAddress gpa, std::uint64_t length) const;

    // Copies that may cross from one region into the next adjacent one.
    std::expected<void, MemoryFault> read(GuestAddress gpa, std::span<std::byte> out) const;
    std::expected<void, MemoryFault> write(GuestAddress gpa, std::span<const std::byte> in) const;

    template <typename T>
    std::expected<T, MemoryFault> read_object(GuestAddress gpa) const {
        static_assert(std::is_trivially_copyable_v<T>);
        T value;
        if (auto done = read(gpa, std::as_writable_bytes(std::span(&value, 1))); !done)
            return std::unexpected(done.error());
        return value;
    }
    template <typename T>
    std::expected<void, MemoryFault> write_object(GuestAddress gpa, const T& value) const {
        static_assert(std::is_trivially_copyable_v<T>);
        return write(gpa, std::as_bytes(std::span(&value, 1)));
    }

    bool contains(GuestAddress gpa, std::uint64_t length) const;
    const std::vector<Region>& regions() const { return regions_; }
    std::uint64_t total_size() const;

private:
    const Region* find(GuestAddress gpa) const;
    std::vector<Region> regions_;
    std::vector<std::shared_ptr<void>> owners_;
};

} // namespace vmmlab
