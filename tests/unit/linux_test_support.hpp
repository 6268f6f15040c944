// Helpers shared by the Linux boot unit tests: guest RAM backed by plain vectors, reads of little-endian
// fields out of it, and a synthetic bzImage.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
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

// A minimal bzImage: boot sector + setup sectors with the setup header filled in, then `kernel_bytes` of
// protected-mode "kernel" whose bytes follow a pattern, so the copy can be checked byte for byte.
struct BzImageBuilder {
    std::uint8_t setup_sects = 4;
    std::uint16_t boot_flag = 0xaa55;
    std::uint32_t magic = 0x53726448; // "HdrS"
    std::uint16_t version = 0x020f;
    std::uint8_t loadflags = 0x01;     // LOADED_HIGH
    std::uint16_t xloadflags = 0x0003; // XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G
    std::uint8_t relocatable = 1;
    std::uint32_t kernel_alignment = 0x200000;
    std::uint64_t pref_address = 0x1000000;
    std::uint32_t init_size = 0x800000;
    std::uint32_t cmdline_size = 2047;
    std::uint32_t initrd_addr_max = 0x7fffffff;
    std::uint8_t header_length = 0x6a; // the jump at 0x200: header ends at 0x202 + 0x6a = 0x26c
    std::size_t kernel_bytes = 0x3000;
    std::uint32_t syssize = 0; // 0: kernel_bytes / 16

    template <typename T>
    static void put(std::vector<std::byte>& file, std::size_t offset, T value) {
        std::memcpy(file.data() + offset, &value, sizeof value);
    }

    std::size_t kernel_offset() const { return (std::size_t{setup_sects == 0 ? 4U : setup_sects} + 1) * 512; }

    static std::byte pattern(std::size_t i) { return static_cast<std::byte>((i * 7 + 3) & 0xff); }

    std::vector<std::byte> build() const {
        std::vector<std::byte> file(kernel_offset() + kernel_bytes);
        put<std::uint8_t>(file, 0x1f1, setup_sects);
        put<std::uint32_t>(file, 0x1f4,
                           syssize != 0 ? syssize : static_cast<std::uint32_t>(kernel_bytes / 16));
        put<std::uint16_t>(file, 0x1fe, boot_flag);
        put<std::uint8_t>(file, 0x200, 0xeb);
        put<std::uint8_t>(file, 0x201, header_length);
        put<std::uint32_t>(file, 0x202, magic);
        put<std::uint16_t>(file, 0x206, version);
        put<std::uint8_t>(file, 0x211, loadflags);
        put<std::uint32_t>(file, 0x214, 0x100000); // code32_start
        put<std::uint32_t>(file, 0x22c, initrd_addr_max);
        put<std::uint32_t>(file, 0x230, kernel_alignment);
        put<std::uint8_t>(file, 0x234, relocatable);
        put<std::uint8_t>(file, 0x235, 21); // min_alignment
        put<std::uint16_t>(file, 0x236, xloadflags);
        put<std::uint32_t>(file, 0x238, cmdline_size);
        put<std::uint64_t>(file, 0x258, pref_address);
        put<std::uint32_t>(file, 0x260, init_size);
        put<std::uint32_t>(file, 0x268, 0x12345); // kernel_info_offset: copied, not interpreted
        for (std::size_t i = 0; i < kernel_bytes; ++i)
            file[kernel_offset() + i] = pattern(i);
        return file;
    }
};

} // namespace vmmlab::test
