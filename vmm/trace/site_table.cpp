#include "trace/site_table.hpp"

#include <algorithm>

#include <fmt/format.h>

namespace vmmlab {

const char* bus_kind_name(BusKind kind) {
    return kind == BusKind::Pio ? "pio" : "mmio";
}

std::string Site::label() const {
    if (size == 0) return name;
    return fmt::format("{} ({} {:#x})", name, bus_kind_name(kind), start);
}

SiteTable::SiteTable() {
    sites_.push_back(Site{BusKind::Pio, 0, 0, "-"});
    sites_.push_back(Site{BusKind::Pio, 0, 0, "unclaimed pio"});
    sites_.push_back(Site{BusKind::Mmio, 0, 0, "unclaimed mmio"});
}

std::expected<SiteId, std::string> SiteTable::add(BusKind kind, std::uint64_t start, std::uint64_t size,
                                                  std::string name) {
    const std::uint64_t limit = kind == BusKind::Pio ? 0xffff : UINT64_MAX;
    if (size == 0 || start > limit || size - 1 > limit - start)
        return std::unexpected(fmt::format("site {}: {} range {:#x}+{:#x} is empty or wraps", name,
                                           bus_kind_name(kind), start, size));
    if (sites_.size() >= kMaxSites)
        return std::unexpected(fmt::format("site {}: the table is full ({} sites)", name, kMaxSites));
    auto& ranges = kind == BusKind::Pio ? pio_ranges_ : mmio_ranges_;
    const Range range{start, start + (size - 1), static_cast<SiteId>(sites_.size())};
    auto position = std::ranges::upper_bound(ranges, start, {}, &Range::start);
    const Range* clash = nullptr;
    if (position != ranges.end() && position->start <= range.last) clash = &*position;
    if (position != ranges.begin() && std::prev(position)->last >= start) clash = &*std::prev(position);
    if (clash != nullptr)
        return std::unexpected(fmt::format("site {}: {} range {:#x}+{:#x} overlaps {}", name,
                                           bus_kind_name(kind), start, size, sites_[clash->id].label()));
    ranges.insert(position, range);
    sites_.push_back(Site{kind, start, size, std::move(name)});
    return range.id;
}

SiteTable SiteTable::from_buses(const PioBus& pio, const MmioBus& mmio) {
    SiteTable table;
    // The buses already refused overlaps and wraps, so add() cannot fail here except for a full table;
    // ranges past that point are then accounted as unclaimed.
    for (const auto& range : pio.ranges())
        (void)table.add(BusKind::Pio, range.base.value, range.size, std::string(range.device->name()));
    for (const auto& range : mmio.ranges())
        (void)table.add(BusKind::Mmio, range.base.value, range.size, std::string(range.device->name()));
    return table;
}

SiteId SiteTable::find(BusKind kind, std::uint64_t address) const noexcept {
    const auto& ranges = kind == BusKind::Pio ? pio_ranges_ : mmio_ranges_;
    const SiteId unclaimed = kind == BusKind::Pio ? kUnclaimedPio : kUnclaimedMmio;
    auto after = std::ranges::upper_bound(ranges, address, {}, &Range::start);
    if (after == ranges.begin()) return unclaimed;
    const Range& range = *std::prev(after);
    return address <= range.last ? range.id : unclaimed;
}

} // namespace vmmlab
