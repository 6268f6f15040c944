#include "memory/backing.hpp"

#include <algorithm>
#include <cerrno>
#include <fstream>
#include <memory>

#include <fmt/format.h>
#include <linux/memfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "base/error.hpp"
#include "base/unique_fd.hpp"
#include "memory/host_pages.hpp"

namespace vmmlab {

namespace {
constexpr std::uint64_t kMiB = 1ULL << 20;
constexpr std::uint64_t kGiB = 1ULL << 30;

// Owns one host mapping; GuestMemory keeps these alive through shared_ptr<void>.
struct HostMapping {
    void* address;
    std::size_t size;
    HostMapping(void* mapped, std::size_t length) : address(mapped), size(length) {}
    HostMapping(const HostMapping&) = delete;
    HostMapping& operator=(const HostMapping&) = delete;
    ~HostMapping() { ::munmap(address, size); }
};

std::uint64_t align_up(std::uint64_t value, std::uint64_t alignment) {
    return (value + alignment - 1) / alignment * alignment;
}

std::shared_ptr<HostMapping> map_anonymous(std::uint64_t size, Backing backing) {
    // Reserve an extra 2 MiB so the region can start on a 2 MiB boundary, as THP needs.
    const std::uint64_t alignment = backing == Backing::Thp ? 2 * kMiB : 4096;
    const std::size_t reserve = size + alignment;
    void* raw =
        ::mmap(nullptr, reserve, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (raw == MAP_FAILED) throw SystemError(fmt::format("mmap of {} MiB guest RAM", size / kMiB), errno);
    const auto base = reinterpret_cast<std::uintptr_t>(raw);
    const std::uintptr_t aligned = align_up(base, alignment);
    if (aligned > base) ::munmap(raw, aligned - base);
    const std::uintptr_t tail = aligned + size;
    if (base + reserve > tail) ::munmap(reinterpret_cast<void*>(tail), base + reserve - tail);
    auto* address = reinterpret_cast<void*>(aligned);
    const int advice = backing == Backing::Thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE;
    if (::madvise(address, size, advice) != 0) {
        int error_number = errno;
        ::munmap(address, size);
        throw SystemError(backing == Backing::Thp ? "madvise(MADV_HUGEPAGE)" : "madvise(MADV_NOHUGEPAGE)",
                          error_number, backing == Backing::Thp ? "is THP compiled into this kernel?" : "");
    }
    return std::make_shared<HostMapping>(address, size);
}

std::shared_ptr<HostMapping> map_hugetlb(std::uint64_t size, Backing backing) {
    const unsigned size_flag = backing == Backing::Hugetlb1G ? MFD_HUGE_1GB : MFD_HUGE_2MB;
    UniqueFd fd(::memfd_create("vmmlab-guest-ram", MFD_CLOEXEC | MFD_HUGETLB | size_flag));
    if (!fd) throw SystemError("memfd_create(MFD_HUGETLB)", errno, "does this kernel have hugetlbfs?");
    if (::ftruncate(fd.get(), static_cast<off_t>(size)) != 0)
        throw SystemError("ftruncate of hugetlbfs memfd", errno);
    // MAP_SHARED without MAP_NORESERVE reserves every page now: a short pool fails here, not later.
    void* address = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
    if (address == MAP_FAILED)
        throw SystemError(
            fmt::format("mmap of {} MiB from the hugetlbfs {} pool", size / kMiB, to_string(backing)), errno,
            "the pool is smaller than the guest's RAM");
    return std::make_shared<HostMapping>(address, size);
}

void prefault(void* address, std::uint64_t size) {
    // MADV_POPULATE_WRITE (Linux 5.14) faults every page in writable; fall back to touching each page.
    constexpr int kMadvPopulateWrite = 23;
    if (::madvise(address, size, kMadvPopulateWrite) == 0) return;
    auto* bytes = static_cast<volatile std::byte*>(address);
    for (std::uint64_t offset = 0; offset < size; offset += 4096)
        bytes[offset] = std::byte{0};
}

std::string pool_folder(Backing backing) {
    return backing == Backing::Hugetlb1G ? "hugepages-1048576kB" : "hugepages-2048kB";
}
} // namespace

std::string_view to_string(Backing backing) {
    switch (backing) {
    case Backing::Anonymous4K:
        return "4k";
    case Backing::Thp:
        return "thp";
    case Backing::Hugetlb2M:
        return "2m";
    case Backing::Hugetlb1G:
        return "1g";
    }
    return "?";
}

std::uint64_t host_page_size(Backing backing) {
    switch (backing) {
    case Backing::Hugetlb1G:
        return kGiB;
    case Backing::Hugetlb2M:
    case Backing::Thp:
        return 2 * kMiB;
    case Backing::Anonymous4K:
        break;
    }
    return 4096;
}

std::vector<RamRange> ram_layout(std::uint64_t ram_size) {
    std::vector<RamRange> ranges;
    const std::uint64_t low = std::min(ram_size, kPciHoleStart);
    if (low > 0) ranges.push_back({GuestAddress{0}, low});
    if (ram_size > low) ranges.push_back({GuestAddress{kPciHoleEnd}, ram_size - low});
    return ranges;
}

void check_hugepage_pool(Backing backing, std::uint64_t ram_size,
                         const std::filesystem::path& hugepages_root) {
    if (backing != Backing::Hugetlb2M && backing != Backing::Hugetlb1G) return;
    const std::uint64_t page = host_page_size(backing);
    const std::string folder = pool_folder(backing);
    // Each RAM range is its own mapping and is rounded up to whole pages.
    std::uint64_t needed = 0;
    for (const auto& range : ram_layout(ram_size))
        needed += align_up(range.size, page) / page;
    std::uint64_t available = 0;
    bool exists = false;
    for (const auto& pool : read_hugepage_pools(hugepages_root)) {
        if (pool.page_size != page) continue;
        exists = true;
        available = pool.available();
    }
    if (!exists)
        throw SystemError(fmt::format("hugetlbfs {} pool absent ({} missing)", to_string(backing),
                                      (hugepages_root / folder).string()),
                          ENOENT,
                          backing == Backing::Hugetlb1G
                              ? "boot with hugepagesz=1G hugepages=N, or use --backing 2m"
                              : "this kernel has no 2M hugetlbfs pages");
    if (available < needed)
        throw SystemError(fmt::format("hugetlbfs {} pool has {} free pages, the guest needs {}",
                                      to_string(backing), available, needed),
                          ENOMEM,
                          fmt::format("echo {} > {} as root, or tools/kvm-sandbox --hugepages-{} {}", needed,
                                      (hugepages_root / folder / "nr_hugepages").string(), to_string(backing),
                                      needed));
}

GuestMemory allocate_guest_ram(std::uint64_t ram_size, const BackingOptions& options) {
    if (ram_size == 0 || ram_size % 4096 != 0)
        throw SystemError(fmt::format("guest RAM size {:#x} is not a positive multiple of 4 KiB", ram_size),
                          EINVAL);
    check_hugepage_pool(options.backing, ram_size, options.hugepages_root);
    std::vector<GuestMemory::Region> regions;
    std::vector<std::shared_ptr<void>> owners;
    for (const auto& range : ram_layout(ram_size)) {
        const bool hugetlb = options.backing == Backing::Hugetlb2M || options.backing == Backing::Hugetlb1G;
        const std::uint64_t mapped =
            hugetlb ? align_up(range.size, host_page_size(options.backing)) : range.size;
        auto mapping =
            hugetlb ? map_hugetlb(mapped, options.backing) : map_anonymous(mapped, options.backing);
        if (options.prefault) prefault(mapping->address, mapping->size);
        regions.push_back({range.start, range.size, static_cast<std::byte*>(mapping->address)});
        owners.push_back(std::move(mapping));
    }
    return GuestMemory(std::move(regions), std::move(owners));
}

std::string describe_achieved_backing(Backing backing, std::uint64_t ram_size) {
    switch (backing) {
    case Backing::Anonymous4K:
        return "4K pages (THP disabled for guest RAM)";
    case Backing::Hugetlb2M:
    case Backing::Hugetlb1G:
        return fmt::format("hugetlbfs {} pages, {} MiB reserved up front", to_string(backing),
                           ram_size / kMiB);
    case Backing::Thp:
        break;
    }
    std::ifstream rollup("/proc/self/smaps_rollup");
    std::string key;
    std::uint64_t kib = 0;
    while (rollup >> key) {
        if (key == "AnonHugePages:") {
            rollup >> kib;
            return fmt::format("THP: {} MiB of {} MiB in huge pages (AnonHugePages)", kib / 1024,
                               ram_size / kMiB);
        }
        rollup.ignore(1 << 10, '\n');
    }
    return "THP: AnonHugePages not reported by this kernel";
}

} // namespace vmmlab
