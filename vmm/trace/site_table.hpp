// Exit "sites": the PIO port ranges and MMIO ranges a VM's devices occupy, each given a small integer id
// and a name before the vCPUs start, so the hot path can account an exit to a device with a binary
// search and an array index, never a string or an allocation.
//
// Ids 0..2 are fixed: kNoSite (exits without an address: hlt, shutdown, ...), kUnclaimedPio and
// kUnclaimedMmio (accesses no device claims). Registered ranges get ids 3, 4, ... in registration order.
// Build the table once (add() or from_buses()), then share it read-only between vCPU threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <expected>
#include <string>
#include <vector>

#include "bus/address.hpp"
#include "bus/bus.hpp"

namespace vmmlab {

enum class BusKind : std::uint8_t { Pio, Mmio };
const char* bus_kind_name(BusKind kind); // "pio", "mmio"

using SiteId = std::uint16_t;
inline constexpr SiteId kNoSite = 0;
inline constexpr SiteId kUnclaimedPio = 1;
inline constexpr SiteId kUnclaimedMmio = 2;
inline constexpr std::size_t kMaxSites = 65535;

struct Site {
    BusKind kind = BusKind::Pio;
    std::uint64_t start = 0;
    std::uint64_t size = 0; // 0 for the three fixed sites
    std::string name;       // the device's name ("serial", "virtio-blk"); "-" for kNoSite
    // "serial (pio 0x3f8)", "unclaimed pio", "-"
    std::string label() const;
};

class SiteTable {
public:
    SiteTable(); // the three fixed sites

    // Registers [start, start + size) of `kind` under `name`. Refuses an empty range, one that wraps (or,
    // for PIO, goes past port 0xffff), one that overlaps a registered range, and a table that is full.
    std::expected<SiteId, std::string> add(BusKind kind, std::uint64_t start, std::uint64_t size,
                                           std::string name);
    // One site per bus range, named by the range's device.
    static SiteTable from_buses(const PioBus& pio, const MmioBus& mmio);

    // The site whose range holds `address`, or kUnclaimedPio / kUnclaimedMmio. A binary search over the
    // sorted ranges of that bus kind: O(log n), no allocation, no lock.
    SiteId find(BusKind kind, std::uint64_t address) const noexcept;
    SiteId find(PioAddress port) const noexcept { return find(BusKind::Pio, port.value); }
    SiteId find(MmioAddress address) const noexcept { return find(BusKind::Mmio, address.value); }

    // The site with that id; an unknown id gives the kNoSite entry.
    const Site& site(SiteId id) const noexcept { return id < sites_.size() ? sites_[id] : sites_[kNoSite]; }
    std::size_t size() const noexcept { return sites_.size(); }

private:
    struct Range {
        std::uint64_t start;
        std::uint64_t last;
        SiteId id;
    };
    std::vector<Site> sites_;
    std::vector<Range> pio_ranges_;  // sorted by start, disjoint
    std::vector<Range> mmio_ranges_; // sorted by start, disjoint
};

} // namespace vmmlab
