#include "memory/page_tables.hpp"

#include <algorithm>
#include <array>

#include <fmt/format.h>

namespace vmmlab {

namespace {

constexpr std::uint64_t kPresent = 1ULL << 0;
constexpr std::uint64_t kWritable = 1ULL << 1;
constexpr std::uint64_t kPageSizeBit = 1ULL << 7; // PS: this entry is a leaf (PDPTE: 1G, PDE: 2M)
// Physical address bits 51..12 of an entry or of CR3 (MAXPHYADDR up to 52).
constexpr std::uint64_t kAddressMask = 0x000f'ffff'ffff'f000ULL;
constexpr std::uint64_t kEntriesPerTable = 512;
constexpr std::uint64_t k4K = 1ULL << 12;
constexpr std::uint64_t k2M = 1ULL << 21;
constexpr std::uint64_t k1G = 1ULL << 30;
constexpr std::uint64_t k512G = 1ULL << 39;

// ceil(value / divisor) without overflow for any value.
constexpr std::uint64_t divide_round_up(std::uint64_t value, std::uint64_t divisor) {
    return value / divisor + (value % divisor != 0 ? 1 : 0);
}

const char* describe(PageSize size) {
    switch (size) {
    case PageSize::k4K:
        return "4K";
    case PageSize::k2M:
        return "2M";
    case PageSize::k1G:
        return "1G";
    }
    return "?";
}

// How many entries each level of the identity map fills (the counts of the next level's tables or of
// leaves), for [0, limit).
struct LevelCounts {
    std::uint64_t pdpt_tables;
    std::uint64_t pd_tables;
    std::uint64_t pt_tables;
    std::uint64_t tables() const { return 1 + pdpt_tables + pd_tables + pt_tables; }
};

// 4 KiB leaves cover [0, min(limit, small_leaf_limit)): one page table per 2 MiB of that.
LevelCounts level_counts(std::uint64_t limit, PageSize leaf, std::uint64_t small_leaf_limit) {
    LevelCounts counts{divide_round_up(limit, k512G), 0, 0};
    if (leaf != PageSize::k1G) counts.pd_tables = divide_round_up(limit, k1G);
    if (leaf == PageSize::k4K) counts.pt_tables = divide_round_up(std::min(limit, small_leaf_limit), k2M);
    return counts;
}

// Writes `tables` consecutive tables starting at `base`; entry number g (counted across all of them) is
// entry_for(g) while g < entries, and zero after that.
template <typename EntryFor>
std::expected<void, MemoryFault> write_level(const GuestMemory& memory, GuestAddress base,
                                             std::uint64_t tables, std::uint64_t entries,
                                             EntryFor entry_for) {
    std::array<std::uint64_t, kEntriesPerTable> table{};
    for (std::uint64_t t = 0; t < tables; ++t) {
        for (std::uint64_t i = 0; i < kEntriesPerTable; ++i) {
            const std::uint64_t g = t * kEntriesPerTable + i;
            table[i] = g < entries ? entry_for(g) : 0;
        }
        if (auto written = memory.write(base + t * kPageTableSize, std::as_bytes(std::span(table))); !written)
            return written;
    }
    return {};
}

constexpr const char* kLevelNames[] = {"", "PT", "PD", "PDPT", "PML4"};

} // namespace

std::uint64_t page_size_bytes(PageSize size) {
    switch (size) {
    case PageSize::k4K:
        return k4K;
    case PageSize::k2M:
        return k2M;
    case PageSize::k1G:
        return k1G;
    }
    return k4K;
}

std::uint64_t page_table_bytes_needed(std::uint64_t limit, PageSize leaf, std::uint64_t small_leaf_limit) {
    return level_counts(limit, leaf, small_leaf_limit).tables() * kPageTableSize;
}

std::expected<IdentityMap, PageTableError> build_identity_map(const GuestMemory& memory, GuestAddress area,
                                                              std::uint64_t area_size, std::uint64_t limit,
                                                              PageSize leaf, std::uint64_t small_leaf_limit) {
    using Kind = PageTableError::Kind;
    if (area.value % kPageTableSize != 0)
        return std::unexpected(PageTableError{
            Kind::AreaNotAligned, fmt::format("page-table area {:#x} is not 4 KiB aligned", area.value)});
    if (limit > kMaxIdentityMapLimit)
        return std::unexpected(PageTableError{
            Kind::LimitTooLarge, fmt::format("identity map limit {:#x} is above {:#x} (4-level paging)",
                                             limit, kMaxIdentityMapLimit)});
    const LevelCounts counts = level_counts(limit, leaf, small_leaf_limit);
    const std::uint64_t needed = counts.tables() * kPageTableSize;
    if (needed > area_size)
        return std::unexpected(PageTableError{
            Kind::DoesNotFit,
            fmt::format(
                "page tables for [0, {:#x}) with {} pages need {:#x} bytes; the area at {:#x} has {:#x}",
                limit, describe(leaf), needed, area.value, area_size)});
    if (!memory.contains(area, needed))
        return std::unexpected(
            PageTableError{Kind::AreaOutsideRam,
                           fmt::format("page-table area {:#x}+{:#x} is outside RAM", area.value, needed)});

    const GuestAddress pml4 = area;
    const GuestAddress pdpts = pml4 + kPageTableSize;
    const GuestAddress pds = pdpts + counts.pdpt_tables * kPageTableSize;
    const GuestAddress pts = pds + counts.pd_tables * kPageTableSize;
    const auto points_to = [](GuestAddress tables) {
        return
            [tables](std::uint64_t g) { return (tables.value + g * kPageTableSize) | kPresent | kWritable; };
    };
    const auto leaf_of = [](std::uint64_t size) {
        const std::uint64_t flags = kPresent | kWritable | (size == k4K ? 0 : kPageSizeBit);
        return [size, flags](std::uint64_t g) { return g * size | flags; };
    };
    const std::uint64_t leaves = divide_round_up(limit, page_size_bytes(leaf));

    auto written = write_level(memory, pml4, 1, counts.pdpt_tables, points_to(pdpts));
    if (written) {
        if (leaf == PageSize::k1G)
            written = write_level(memory, pdpts, counts.pdpt_tables, leaves, leaf_of(k1G));
        else
            written = write_level(memory, pdpts, counts.pdpt_tables, counts.pd_tables, points_to(pds));
    }
    if (written && leaf != PageSize::k1G) {
        if (leaf == PageSize::k2M)
            written = write_level(memory, pds, counts.pd_tables, leaves, leaf_of(k2M));
        else // the first pt_tables entries point to page tables, the rest up to the limit are 2M leaves
            written =
                write_level(memory, pds, counts.pd_tables, divide_round_up(limit, k2M), [&](std::uint64_t g) {
                    return g < counts.pt_tables ? points_to(pts)(g) : leaf_of(k2M)(g);
                });
    }
    if (written && leaf == PageSize::k4K)
        written = write_level(memory, pts, counts.pt_tables,
                              std::min(leaves, counts.pt_tables * kEntriesPerTable), leaf_of(k4K));
    if (!written) // checked above; kept so a broken GuestMemory cannot go unnoticed
        return std::unexpected(PageTableError{Kind::AreaOutsideRam, written.error().describe()});
    return IdentityMap{pml4.value, needed};
}

std::expected<Translation, WalkError> walk(const GuestMemory& memory, std::uint64_t cr3,
                                           std::uint64_t virtual_address) {
    using Kind = WalkError::Kind;
    // Canonical: bits 63..48 repeat bit 47.
    const auto sign_extended =
        static_cast<std::uint64_t>(static_cast<std::int64_t>(virtual_address << 16) >> 16);
    if (sign_extended != virtual_address)
        return std::unexpected(WalkError{
            Kind::NonCanonical, 0, fmt::format("virtual address {:#x} is not canonical", virtual_address)});

    std::uint64_t table = cr3 & kAddressMask;
    for (int level = 4; level >= 1; --level) {
        const auto shift = static_cast<unsigned>(12 + 9 * (level - 1));
        const std::uint64_t index = (virtual_address >> shift) & (kEntriesPerTable - 1);
        const GuestAddress entry_address{table + index * sizeof(std::uint64_t)};
        const auto entry = memory.read_object<std::uint64_t>(entry_address);
        const auto stop = [&](Kind kind, const char* what) {
            return std::unexpected(
                WalkError{kind, level,
                          fmt::format("virtual address {:#x}: {} entry {} at {:#x} {}", virtual_address,
                                      kLevelNames[level], index, entry_address.value, what)});
        };
        if (!entry) return stop(Kind::TableOutsideRam, "is outside RAM");
        if ((*entry & kPresent) == 0) return stop(Kind::NotPresent, "is not present");
        const bool is_leaf = level == 1 || ((level == 2 || level == 3) && (*entry & kPageSizeBit) != 0);
        if (level == 4 && (*entry & kPageSizeBit) != 0) return stop(Kind::ReservedBit, "has the PS bit set");
        if (is_leaf) {
            const std::uint64_t offset_mask = (std::uint64_t{1} << shift) - 1;
            const std::uint64_t frame =
                *entry & kAddressMask & ~offset_mask; // drops PAT (bit 12) of large leaves
            const PageSize size = level == 3 ? PageSize::k1G : level == 2 ? PageSize::k2M : PageSize::k4K;
            return Translation{GuestAddress{frame | (virtual_address & offset_mask)}, size};
        }
        table = *entry & kAddressMask;
    }
    return std::unexpected(WalkError{Kind::NotPresent, 1, "unreachable"}); // the loop returns at level 1
}

std::expected<GuestAddress, WalkError> translate(const GuestMemory& memory, std::uint64_t cr3,
                                                 std::uint64_t virtual_address) {
    auto translation = walk(memory, cr3, virtual_address);
    if (!translation) return std::unexpected(std::move(translation.error()));
    return translation->address;
}

} // namespace vmmlab
