// What the host offers for backing guest memory: hugetlbfs pools and the transparent-hugepage mode.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace vmmlab {

struct HugepagePool {
    std::uint64_t page_size = 0; // bytes
    std::uint64_t total = 0;     // nr_hugepages
    std::uint64_t free = 0;      // free_hugepages
    std::uint64_t reserved = 0;  // resv_hugepages: promised to mappings but not yet faulted in
    std::uint64_t available() const { return free >= reserved ? free - reserved : 0; }
};

// Reads every hugepages-<N>kB folder under root, smallest page size first.
std::vector<HugepagePool> read_hugepage_pools(const std::filesystem::path& root = "/sys/kernel/mm/hugepages");

// The bracketed word of a sysfs choice file such as "always [madvise] never".
std::optional<std::string> selected_choice(std::string_view sysfs_text);

// The THP mode ("always", "madvise", "never"), or nothing where the kernel has no THP.
std::optional<std::string>
read_thp_mode(const std::filesystem::path& file = "/sys/kernel/mm/transparent_hugepage/enabled");

// "2M", "1G", "4K", or the byte count where it is not a whole unit.
std::string format_page_size(std::uint64_t bytes);

} // namespace vmmlab
