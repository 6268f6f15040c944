// Helpers shared by the Linux boot unit tests: guest RAM backed by plain vectors, and reads of little-endian
// fields out of it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "memory/guest_memory.hpp"

namespace vmmlab::test {

// Guest RAM made of zero-filled vectors at the given (start, size) ranges.
inline GuestMemory vector_memory(const std::vector<std::pair<std::uint64_t, std::uint64_t>>& ranges) {
    std::vector<GuestMemory::Region> regions;
    std::vector<std::shared_ptr<void>> owners;
    for (const auto& [start, size] : ranges) {
        auto buffer = std::make_shared<std::vector<std::byte>>(size);
        regions.push_back({GuestAddress{start}, size, buffer->data()});
        owners.push_back(std::move(buffer));
    }
    return GuestMemory(std::move(regions), std::move(owners));
}

template <typename T>
T read_guest(const GuestMemory& memory, std::uint64_t address) {
    auto value = memory.read_object<T>(GuestAddress{address});
    if (!value) throw std::runtime_error(value.error().describe());
    return *value;
}

inline std::vector<std::byte> read_bytes(const GuestMemory& memory, std::uint64_t address,
                                         std::size_t length) {
    std::vector<std::byte> bytes(length);
    if (auto done = memory.read(GuestAddress{address}, bytes); !done)
        throw std::runtime_error(done.error().describe());
    return bytes;
}

} // namespace vmmlab::test
