// Per-vCPU exit accounting: how many exits of each reason, how long each took, and which device (site)
// the PIO and MMIO exits went to, with latency histograms for every row.
//
// Keys:
//   reason  the exit's kind: the index of its VcpuExit alternative (exit.index(); names from
//           exit_kind_name in cpu/exit_handler.hpp). Indices >= kExitReasonCount count as "unknown".
//   site    a SiteId from the VM's SiteTable (trace/site_table.hpp). Only io-in, io-out, mmio-read and
//           mmio-write exits are accounted per site (one histogram for reads, one for writes); for other
//           reasons, and for ids outside the table, the site is ignored. Pass a site of the exit's own
//           bus (SiteTable::find(PioAddress) for io-*, find(MmioAddress) for mmio-*): the reports list a
//           site under the reasons of its bus only.
//
// Hot path: record() is a bounds check, two array indexings and two LatencyHistogram::record calls (a
// count-leading-zeros and a handful of adds/compares each): no allocation, no lock, no atomic. All
// histograms are allocated by the constructor, so construct it before the vCPU starts. An ExitStats
// belongs to one vCPU thread; read or merge it only after that thread has been joined.
//
// What latency_ns measures is the caller's choice; the vCPU loop is meant to pass the time from KVM_RUN's
// return to the end of handle_exit (the monitor's share of an exit).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "trace/histogram.hpp"
#include "trace/site_table.hpp"

namespace vmmlab {

// The number of VcpuExit alternatives (checked against cpu/exit.hpp in exit_stats.cpp).
inline constexpr std::size_t kExitReasonCount = 10;

class ExitStats {
public:
    // Preallocates kExitReasonCount + 2 * site_count histograms (about 4.7 KiB each).
    explicit ExitStats(std::size_t site_count);

    void record(std::size_t reason, SiteId site, std::uint64_t latency_ns) noexcept;

    // Adds `other`'s exits. Throws std::invalid_argument when the two were built for different site
    // counts (they would not describe the same SiteTable).
    void merge(const ExitStats& other);

    const LatencyHistogram& by_reason(std::size_t reason) const noexcept;
    // The reads (io-in, mmio-read) or writes (io-out, mmio-write) at one site; empty for unknown ids.
    const LatencyHistogram& by_site(SiteId site, bool is_write) const noexcept;
    std::size_t site_count() const noexcept { return site_histograms_.size() / 2; }
    std::uint64_t total() const noexcept; // exits of every reason

private:
    std::vector<LatencyHistogram> reason_histograms_; // kExitReasonCount
    std::vector<LatencyHistogram> site_histograms_;   // 2 per site: [2 * site + is_write]
};

// Merges the stats of several vCPUs (all built for the same SiteTable); an empty span gives empty stats
// for `site_count` sites.
ExitStats merge_exit_stats(std::span<const ExitStats* const> per_vcpu, std::size_t site_count);

// One line of the report. A reason row has an empty `site`; the site rows of a reason follow it.
struct ExitStatsRow {
    std::string reason; // "io-out"
    std::string site;   // "serial (pio 0x3f8)" or empty
    std::uint64_t count = 0;
    double mean_ns = 0;
    std::uint64_t min_ns = 0, p50_ns = 0, p90_ns = 0, p99_ns = 0, max_ns = 0;
    double per_second = 0; // count / run duration; 0 when the duration is 0
};

// Rows for every reason with exits (most exits first), each followed by its sites (most exits first).
std::vector<ExitStatsRow> exit_stats_rows(const ExitStats& stats, const SiteTable& sites,
                                          std::chrono::nanoseconds run_duration);
// A fixed-width text table of those rows plus a total line:
//   reason / site                 count      p50      p90      p99      max    exits/s
//   io-out                          812   1.20 us  ...
//     serial (pio 0x3f8)            800   ...
std::string format_exit_stats(const ExitStats& stats, const SiteTable& sites,
                              std::chrono::nanoseconds run_duration);
// {"duration_ns": N, "total": N, "reasons": [{"reason", "count", "mean_ns", "min_ns", "p50_ns", "p90_ns",
//  "p99_ns", "max_ns", "per_second", "sites": [{"site", "bus", "start", "count", ...}]}]}
nlohmann::json exit_stats_json(const ExitStats& stats, const SiteTable& sites,
                               std::chrono::nanoseconds run_duration);

} // namespace vmmlab
