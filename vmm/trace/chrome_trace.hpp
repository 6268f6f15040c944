// Exit traces in the Chrome trace-event format (load the file in chrome://tracing, Perfetto or
// speedscope), and the reader behind `vmmlab trace report FILE`.
//
// Written form:
//   {"traceEvents": [
//      {"name": "process_name", "ph": "M", "pid": 1, "args": {"name": "vmmlab"}},
//      {"name": "thread_name", "ph": "M", "pid": 1, "tid": 0, "args": {"name": "vCPU 0"}},
//      {"name": "io-out serial", "cat": "exit", "ph": "X", "pid": 1, "tid": 0, "ts": 12.345, "dur": 1.2,
//       "args": {"reason": "io-out", "site": "serial (pio 0x3f8)", "port": "0x3f8", "rip": "0x1004",
//                "size": 1, "write": true, "data": "0x41", "instruction": "out dx, al"}}, ...],
//    "displayTimeUnit": "ns",
//    "otherData": {"generator": "vmmlab", "origin_ns": N, "records": N, "dropped": N}}
// ts and dur are microseconds (doubles); ts counts from the earliest record (origin_ns on the monitor's
// clock). MMIO exits carry "gpa" instead of "port"; exits without an address carry neither.
#pragma once

#include <cstddef>
#include <cstdint>
#include <expected>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "trace/site_table.hpp"
#include "trace/trace_ring.hpp"

namespace vmmlab {

struct ChromeTraceOptions {
    // The instruction behind an exit ("out dx, al"), or nothing; called once per distinct (vcpu, rip,
    // reason). Typically disassemble_guest() over the VM's memory and the vCPU's CR3
    // (trace/disassembler.hpp); the reason tells whether RIP is at the instruction or already past it.
    std::function<std::optional<std::string>(std::uint32_t vcpu, std::uint64_t rip, std::uint8_t reason)>
        instruction_at;
    std::string process_name = "vmmlab";
};

// The records of every ring (oldest first, ring by ring), with a thread_name event per vCPU seen.
nlohmann::json chrome_trace(std::span<const TraceRing* const> rings, const SiteTable& sites,
                            const ChromeTraceOptions& options = {});

// What can be wrong with a trace file: one line, e.g. "trace.json: not JSON (parse error at byte 17)",
// "event 3: \"dur\" is not a non-negative number".
struct TraceFileError {
    std::string message;
};

// Reads and parses a JSON file; the error names the file.
std::expected<nlohmann::json, TraceFileError> load_trace_file(const std::string& path);

struct TraceNameSummary {
    std::string name; // the event name: "io-out serial", "hlt"
    std::uint64_t count = 0;
    double total_us = 0, mean_us = 0, p50_us = 0, p99_us = 0, max_us = 0; // nearest-rank percentiles
};
struct TraceSiteSummary {
    std::uint64_t rip = 0;
    std::string instruction; // from the events' "instruction" arg; empty when none had one
    std::string name;        // the most frequent event name at this rip
    std::uint64_t count = 0;
    double mean_us = 0;
};
struct TraceSummary {
    std::uint64_t events = 0;               // complete ("X") events
    std::vector<TraceNameSummary> by_name;  // most events first
    std::vector<TraceSiteSummary> top_rips; // most events first, at most `top` entries
};

// Summarises the complete events of a trace: a JSON object with a "traceEvents" array, or a bare array
// of events (both are valid Chrome traces). Events other than "X" are skipped; an "X" event without a
// string name or numeric non-negative ts/dur is an error. "rip" args may be numbers or hex strings.
std::expected<TraceSummary, TraceFileError> summarize_trace(const nlohmann::json& trace,
                                                            std::size_t top = 10);
// load_trace_file + summarize_trace, with the file name in front of any error.
std::expected<TraceSummary, TraceFileError> summarize_trace_file(const std::string& path,
                                                                 std::size_t top = 10);

// The report `vmmlab trace report` prints: a table by name, then the top RIPs.
std::string format_trace_summary(const TraceSummary& summary);

} // namespace vmmlab
