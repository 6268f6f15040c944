#include "trace/exit_stats.hpp"

#include <algorithm>
#include <array>
#include <stdexcept>

#include <fmt/format.h>

#include "cpu/exit_handler.hpp"

namespace vmmlab {

namespace {

template <typename Alternative>
constexpr std::size_t kReasonOf = VcpuExit(std::in_place_type<Alternative>).index();

static_assert(kExitReasonCount == std::variant_size_v<VcpuExit>, "update kExitReasonCount");

// For each reason: -1 when it has no site, 0 when it reads at its site, 1 when it writes.
constexpr std::array<int, kExitReasonCount> kSiteDirection = [] {
    std::array<int, kExitReasonCount> direction{};
    direction.fill(-1);
    direction[kReasonOf<IoIn>] = 0;
    direction[kReasonOf<MmioRead>] = 0;
    direction[kReasonOf<IoOut>] = 1;
    direction[kReasonOf<MmioWrite>] = 1;
    return direction;
}();

constexpr std::size_t kUnknownReason = kReasonOf<Unknown>;

const LatencyHistogram kEmpty{};

ExitStatsRow make_row(std::string reason, std::string site, const LatencyHistogram& histogram,
                      double seconds) {
    ExitStatsRow row;
    row.reason = std::move(reason);
    row.site = std::move(site);
    row.count = histogram.count();
    row.mean_ns = histogram.mean();
    row.min_ns = histogram.min();
    row.p50_ns = histogram.percentile(50);
    row.p90_ns = histogram.percentile(90);
    row.p99_ns = histogram.percentile(99);
    row.max_ns = histogram.max();
    row.per_second = seconds > 0 ? static_cast<double>(row.count) / seconds : 0.0;
    return row;
}

nlohmann::json row_json(const ExitStatsRow& row) {
    return {{"count", row.count},   {"mean_ns", row.mean_ns},      {"min_ns", row.min_ns},
            {"p50_ns", row.p50_ns}, {"p90_ns", row.p90_ns},        {"p99_ns", row.p99_ns},
            {"max_ns", row.max_ns}, {"per_second", row.per_second}};
}

struct SiteRow {
    SiteId site;
    bool is_write;
    std::uint64_t count;
};

// The sites of `reason` with exits, most exits first. A site's histograms hold the reads or writes of
// its own bus, so only sites of the reason's bus count (PIO for io-in/io-out, MMIO for mmio-*).
std::vector<SiteRow> site_rows(const ExitStats& stats, const SiteTable& sites, std::size_t reason) {
    std::vector<SiteRow> rows;
    const int direction = kSiteDirection[reason];
    if (direction < 0) return rows;
    const BusKind bus =
        reason == kReasonOf<IoIn> || reason == kReasonOf<IoOut> ? BusKind::Pio : BusKind::Mmio;
    for (std::size_t site = 0; site < stats.site_count(); ++site) {
        const auto id = static_cast<SiteId>(site);
        if (id == kNoSite || sites.site(id).kind != bus) continue;
        const auto& histogram = stats.by_site(id, direction == 1);
        if (histogram.count() != 0) rows.push_back({id, direction == 1, histogram.count()});
    }
    std::ranges::sort(rows, [](const SiteRow& a, const SiteRow& b) {
        return a.count != b.count ? a.count > b.count : a.site < b.site;
    });
    return rows;
}

std::vector<std::size_t> reasons_by_count(const ExitStats& stats) {
    std::vector<std::size_t> reasons;
    for (std::size_t reason = 0; reason < kExitReasonCount; ++reason)
        if (stats.by_reason(reason).count() != 0) reasons.push_back(reason);
    std::ranges::sort(reasons, [&](std::size_t a, std::size_t b) {
        const std::uint64_t count_a = stats.by_reason(a).count();
        const std::uint64_t count_b = stats.by_reason(b).count();
        return count_a != count_b ? count_a > count_b : a < b;
    });
    return reasons;
}

double to_seconds(std::chrono::nanoseconds duration) {
    return std::chrono::duration<double>(duration).count();
}

} // namespace

ExitStats::ExitStats(std::size_t site_count)
    : reason_histograms_(kExitReasonCount), site_histograms_(2 * std::min(site_count, kMaxSites)) {
}

void ExitStats::record(std::size_t reason, SiteId site, std::uint64_t latency_ns) noexcept {
    if (reason >= kExitReasonCount) reason = kUnknownReason;
    reason_histograms_[reason].record(latency_ns);
    const int direction = kSiteDirection[reason];
    if (direction < 0 || site == kNoSite) return;
    const std::size_t slot = 2 * std::size_t{site} + static_cast<std::size_t>(direction);
    if (slot < site_histograms_.size()) site_histograms_[slot].record(latency_ns);
}

void ExitStats::merge(const ExitStats& other) {
    if (other.site_histograms_.size() != site_histograms_.size())
        throw std::invalid_argument(fmt::format("merging exit stats of {} sites into stats of {} sites",
                                                other.site_count(), site_count()));
    for (std::size_t i = 0; i < reason_histograms_.size(); ++i)
        reason_histograms_[i].merge(other.reason_histograms_[i]);
    for (std::size_t i = 0; i < site_histograms_.size(); ++i)
        site_histograms_[i].merge(other.site_histograms_[i]);
}

const LatencyHistogram& ExitStats::by_reason(std::size_t reason) const noexcept {
    return reason < reason_histograms_.size() ? reason_histograms_[reason] : kEmpty;
}

const LatencyHistogram& ExitStats::by_site(SiteId site, bool is_write) const noexcept {
    const std::size_t slot = 2 * std::size_t{site} + (is_write ? 1 : 0);
    return slot < site_histograms_.size() ? site_histograms_[slot] : kEmpty;
}

std::uint64_t ExitStats::total() const noexcept {
    std::uint64_t total = 0;
    for (const auto& histogram : reason_histograms_)
        total += histogram.count();
    return total;
}

ExitStats merge_exit_stats(std::span<const ExitStats* const> per_vcpu, std::size_t site_count) {
    ExitStats merged(site_count);
    for (const ExitStats* stats : per_vcpu)
        if (stats != nullptr) merged.merge(*stats);
    return merged;
}

std::vector<ExitStatsRow> exit_stats_rows(const ExitStats& stats, const SiteTable& sites,
                                          std::chrono::nanoseconds run_duration) {
    const double seconds = to_seconds(run_duration);
    std::vector<ExitStatsRow> rows;
    for (const std::size_t reason : reasons_by_count(stats)) {
        rows.push_back(make_row(exit_kind_name(reason), {}, stats.by_reason(reason), seconds));
        for (const SiteRow& site : site_rows(stats, sites, reason))
            rows.push_back(make_row(exit_kind_name(reason), sites.site(site.site).label(),
                                    stats.by_site(site.site, site.is_write), seconds));
    }
    return rows;
}

std::string format_exit_stats(const ExitStats& stats, const SiteTable& sites,
                              std::chrono::nanoseconds run_duration) {
    const auto latency = [](std::uint64_t ns) { return format_nanoseconds(static_cast<double>(ns)); };
    const auto rate = [](double per_second) {
        return per_second > 0 ? fmt::format("{:.0f}", per_second) : std::string("-");
    };
    std::string out = fmt::format("{:<36} {:>10} {:>9} {:>9} {:>9} {:>9} {:>10}\n", "reason / site", "count",
                                  "p50", "p90", "p99", "max", "exits/s");
    for (const ExitStatsRow& row : exit_stats_rows(stats, sites, run_duration)) {
        const std::string label = row.site.empty() ? row.reason : "  " + row.site;
        out += fmt::format("{:<36} {:>10} {:>9} {:>9} {:>9} {:>9} {:>10}\n", label, row.count,
                           latency(row.p50_ns), latency(row.p90_ns), latency(row.p99_ns), latency(row.max_ns),
                           rate(row.per_second));
    }
    const double seconds = to_seconds(run_duration);
    const std::uint64_t total = stats.total();
    out += fmt::format("{:<36} {:>10} {:>9} {:>9} {:>9} {:>9} {:>10}\n", "total", total, "", "", "", "",
                       rate(seconds > 0 ? static_cast<double>(total) / seconds : 0.0));
    return out;
}

nlohmann::json exit_stats_json(const ExitStats& stats, const SiteTable& sites,
                               std::chrono::nanoseconds run_duration) {
    const double seconds = to_seconds(run_duration);
    nlohmann::json reasons = nlohmann::json::array();
    for (const std::size_t reason : reasons_by_count(stats)) {
        nlohmann::json entry =
            row_json(make_row(exit_kind_name(reason), {}, stats.by_reason(reason), seconds));
        entry["reason"] = exit_kind_name(reason);
        nlohmann::json site_entries = nlohmann::json::array();
        for (const SiteRow& site_row : site_rows(stats, sites, reason)) {
            const Site& site = sites.site(site_row.site);
            nlohmann::json site_entry =
                row_json(make_row({}, {}, stats.by_site(site_row.site, site_row.is_write), seconds));
            site_entry["site"] = site.name;
            site_entry["bus"] = bus_kind_name(site.kind);
            site_entry["start"] = site.start;
            site_entry["size"] = site.size;
            site_entries.push_back(std::move(site_entry));
        }
        entry["sites"] = std::move(site_entries);
        reasons.push_back(std::move(entry));
    }
    return {{"duration_ns", run_duration.count()},
            {"total", stats.total()},
            {"per_second", seconds > 0 ? static_cast<double>(stats.total()) / seconds : 0.0},
            {"reasons", std::move(reasons)}};
}

} // namespace vmmlab
