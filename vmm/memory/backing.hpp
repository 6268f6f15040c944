// Host memory behind guest RAM: 4K anonymous pages, transparent huge pages, or hugetlbfs pools of 2M or
// 1G pages (memfd_create with MFD_HUGETLB). A hugetlbfs pool too small for the request is refused before
// anything is mapped, with the command that fixes it, so the guest can never take a SIGBUS later.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "memory/guest_address.hpp"
#include "memory/guest_memory.hpp"

namespace vmmlab {

enum class Backing { Anonymous4K, Thp, Hugetlb2M, Hugetlb1G };

std::string_view to_string(Backing backing);   // "4k", "thp", "2m", "1g"
std::uint64_t host_page_size(Backing backing); // the page size the backing asks the kernel for

// x86 RAM layout: below the 32-bit PCI hole [3 GiB, 4 GiB), then from 4 GiB on.
inline constexpr std::uint64_t kPciHoleStart = 0xc000'0000;
inline constexpr std::uint64_t kPciHoleEnd = 0x1'0000'0000;

struct RamRange {
    GuestAddress start;
    std::uint64_t size;
};
std::vector<RamRange> ram_layout(std::uint64_t ram_size);

struct BackingOptions {
    Backing backing = Backing::Anonymous4K;
    bool prefault = false;
    std::filesystem::path hugepages_root = "/sys/kernel/mm/hugepages"; // where pools are checked
};

// Maps RAM for the given layout. Throws SystemError on a host failure or a pool too small.
GuestMemory allocate_guest_ram(std::uint64_t ram_size, const BackingOptions& options);

// What the kernel actually gave: for THP the huge share of the process's anonymous memory
// (AnonHugePages in /proc/self/smaps_rollup), for hugetlbfs the pool, for 4K "4K pages".
std::string describe_achieved_backing(Backing backing, std::uint64_t ram_size);

// Throws SystemError naming the fix when the pool for `backing` cannot supply ram_size.
void check_hugepage_pool(Backing backing, std::uint64_t ram_size,
                         const std::filesystem::path& hugepages_root);

} // namespace vmmlab
