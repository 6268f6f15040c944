// x86-64 4-level page tables in guest memory: the identity map the monitor builds for the tiny guest, and
// a walker that translates a guest virtual address through whatever tables CR3 points at (for tracing and
// disassembly at a guest RIP).
//
// The identity map covers [0, limit) with one leaf size, or, for 4 KiB leaves, optionally 4 KiB pages
// below `small_leaf_limit` (rounded up to 2 MiB) and 2 MiB pages above it: RAM gets the page size under
// study while the device space up to 4 GiB costs no page tables worth mentioning. Entries are Present |
// Writable (plus PS for 2 MiB and 1 GiB leaves); no NX, no User, no caching bits. The tables are laid out in
// one contiguous area:
//   PML4 (one page) | PDPTs | PDs (2M and 4K leaves) | PTs (4K leaves)
// each level's tables in address order. Entries past the limit are zero (not present). 1 GiB leaves need
// the CPU's pdpe1gb feature; checking it is the caller's job.
#pragma once

#include <cstdint>
#include <expected>
#include <string>

#include "memory/guest_address.hpp"
#include "memory/guest_memory.hpp"

namespace vmmlab {

enum class PageSize { k4K, k2M, k1G };

inline constexpr std::uint64_t kPageTableSize = 4096;
// The identity map covers the lower canonical half at most: virtual addresses below 2^47.
inline constexpr std::uint64_t kMaxIdentityMapLimit = std::uint64_t{1} << 47;

// 4096, 2 MiB or 1 GiB.
std::uint64_t page_size_bytes(PageSize size);

// Bytes of page tables build_identity_map writes for [0, limit) with `leaf` pages (limit rounded up to
// the leaf size): a multiple of 4096, at least one page (the PML4).
inline constexpr std::uint64_t kWholeMap = ~std::uint64_t{0};
std::uint64_t page_table_bytes_needed(std::uint64_t limit, PageSize leaf,
                                      std::uint64_t small_leaf_limit = kWholeMap);

struct PageTableError {
    enum class Kind {
        AreaNotAligned, // the table area does not start on a 4 KiB boundary
        DoesNotFit,     // the tables need more bytes than the area has
        AreaOutsideRam, // the part of the area the tables need is not guest RAM
        LimitTooLarge,  // limit above kMaxIdentityMapLimit
    };
    Kind kind;
    std::string message;
};

struct IdentityMap {
    std::uint64_t cr3;        // guest-physical address of the PML4 (= the area's start)
    std::uint64_t bytes_used; // = page_table_bytes_needed(limit, leaf, small_leaf_limit)
};

// Writes an identity map of [0, round_up(limit, leaf)) into [area, area + area_size). Everything is
// checked before any byte is written. `small_leaf_limit` matters for 4 KiB leaves only (see above).
std::expected<IdentityMap, PageTableError> build_identity_map(const GuestMemory& memory, GuestAddress area,
                                                              std::uint64_t area_size, std::uint64_t limit,
                                                              PageSize leaf,
                                                              std::uint64_t small_leaf_limit = kWholeMap);

struct WalkError {
    enum class Kind {
        NonCanonical,    // bits 63..47 of the virtual address are not all equal
        NotPresent,      // an entry on the way has P = 0
        ReservedBit,     // a PML4 entry with PS set
        TableOutsideRam, // an entry's address (from CR3 or a table) is not guest RAM
    };
    Kind kind;
    int level;           // 4 = PML4 ... 1 = PT where the walk stopped; 0 for NonCanonical
    std::string message; // "virtual address 0x...: PD entry 5 at 0x... is not present"
};

struct Translation {
    GuestAddress address;
    PageSize page_size; // the leaf that mapped it
};

// 4-level paging (CR4.LA57 = 0) with 4K, 2M and 1G leaves. Only the address bits are interpreted:
// access rights (R/W, U/S, NX) and the CR3 control bits (PWT, PCD, PCID) are ignored.
std::expected<Translation, WalkError> walk(const GuestMemory& memory, std::uint64_t cr3,
                                           std::uint64_t virtual_address);
std::expected<GuestAddress, WalkError> translate(const GuestMemory& memory, std::uint64_t cr3,
                                                 std::uint64_t virtual_address);

} // namespace vmmlab
