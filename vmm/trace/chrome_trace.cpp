#include "trace/chrome_trace.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <tuple>
#include <unordered_map>

#include <fmt/format.h>

#include "cpu/exit_handler.hpp"
#include "trace/histogram.hpp"

namespace vmmlab {

namespace {

constexpr int kProcessId = 1;

std::string hex(std::uint64_t value) {
    return fmt::format("{:#x}", value);
}

// The data bytes as the little-endian value the guest wrote or read.
std::string data_value(const ExitRecord& record) {
    const std::size_t size = std::min<std::size_t>(record.size, record.data.size());
    std::uint64_t value = 0;
    for (std::size_t i = 0; i < size; ++i)
        value |= std::uint64_t{std::to_integer<std::uint8_t>(record.data[i])} << (8 * i);
    return hex(value);
}

double microseconds(std::uint64_t nanoseconds) {
    return static_cast<double>(nanoseconds) / 1000.0;
}

// Nearest rank over sorted values: the smallest value with at least p% of all values at or below it.
double nearest_rank(const std::vector<double>& sorted, double p) {
    if (sorted.empty()) return 0;
    const auto rank = static_cast<std::size_t>(std::ceil(p * static_cast<double>(sorted.size()) / 100.0));
    return sorted[std::clamp<std::size_t>(rank, 1, sorted.size()) - 1];
}

std::optional<std::uint64_t> parse_rip(const nlohmann::json& value) {
    if (value.is_number_unsigned()) return value.get<std::uint64_t>();
    if (value.is_number_integer() && value.get<std::int64_t>() >= 0)
        return static_cast<std::uint64_t>(value.get<std::int64_t>());
    if (!value.is_string()) return std::nullopt;
    const auto& text = value.get_ref<const std::string&>();
    if (text.empty()) return std::nullopt;
    try {
        std::size_t used = 0;
        const std::uint64_t rip = std::stoull(text, &used, 0);
        if (used != text.size()) return std::nullopt;
        return rip;
    } catch (const std::exception&) {
        return std::nullopt;
    }
}

std::unexpected<TraceFileError> fail(std::string message) {
    return std::unexpected(TraceFileError{std::move(message)});
}

} // namespace

nlohmann::json chrome_trace(std::span<const TraceRing* const> rings, const SiteTable& sites,
                            const ChromeTraceOptions& options) {
    std::vector<std::vector<ExitRecord>> snapshots;
    std::uint64_t origin = UINT64_MAX;
    std::uint64_t records = 0;
    std::uint64_t dropped = 0;
    std::set<std::uint32_t> vcpus;
    for (const TraceRing* ring : rings) {
        if (ring == nullptr) continue;
        snapshots.push_back(ring->snapshot());
        dropped += ring->dropped();
        for (const ExitRecord& record : snapshots.back()) {
            origin = std::min(origin, record.start_ns);
            vcpus.insert(record.vcpu);
        }
        records += snapshots.back().size();
    }
    if (origin == UINT64_MAX) origin = 0;

    nlohmann::json events = nlohmann::json::array();
    events.push_back({{"name", "process_name"},
                      {"ph", "M"},
                      {"pid", kProcessId},
                      {"args", {{"name", options.process_name}}}});
    for (const std::uint32_t vcpu : vcpus)
        events.push_back({{"name", "thread_name"},
                          {"ph", "M"},
                          {"pid", kProcessId},
                          {"tid", vcpu},
                          {"args", {{"name", fmt::format("vCPU {}", vcpu)}}}});

    std::map<std::tuple<std::uint32_t, std::uint64_t, std::uint8_t>, std::optional<std::string>> instructions;
    for (const auto& snapshot : snapshots) {
        for (const ExitRecord& record : snapshot) {
            const std::string reason = exit_kind_name(record.reason);
            const Site& site = sites.site(record.site);
            nlohmann::json args = {{"reason", reason}, {"rip", hex(record.rip)}};
            if (record.site != kNoSite) {
                args["site"] = site.label();
                args[site.kind == BusKind::Pio ? "port" : "gpa"] = hex(record.address);
            }
            if (record.size != 0) {
                args["size"] = record.size;
                args["write"] = record.is_write;
                args["data"] = data_value(record);
            }
            if (options.instruction_at) {
                const auto key = std::make_tuple(record.vcpu, record.rip, record.reason);
                auto known = instructions.find(key);
                if (known == instructions.end())
                    known = instructions
                                .emplace(key, options.instruction_at(record.vcpu, record.rip, record.reason))
                                .first;
                if (known->second) args["instruction"] = *known->second;
            }
            events.push_back({{"name", record.site == kNoSite ? reason : reason + " " + site.name},
                              {"cat", "exit"},
                              {"ph", "X"},
                              {"pid", kProcessId},
                              {"tid", record.vcpu},
                              {"ts", microseconds(record.start_ns - origin)},
                              {"dur", microseconds(record.duration_ns)},
                              {"args", std::move(args)}});
        }
    }
    return {{"traceEvents", std::move(events)},
            {"displayTimeUnit", "ns"},
            {"otherData",
             {{"generator", "vmmlab"}, {"origin_ns", origin}, {"records", records}, {"dropped", dropped}}}};
}

std::expected<nlohmann::json, TraceFileError> load_trace_file(const std::string& path) {
    std::ifstream file(path, std::ios::binary);
    if (!file) return fail(fmt::format("{}: cannot open: {}", path, std::strerror(errno)));
    std::ostringstream text;
    text << file.rdbuf();
    if (file.bad()) return fail(fmt::format("{}: cannot read", path));
    try {
        return nlohmann::json::parse(text.str());
    } catch (const nlohmann::json::parse_error& error) {
        return fail(fmt::format("{}: not JSON (parse error at byte {})", path, error.byte));
    }
}

std::expected<TraceSummary, TraceFileError> summarize_trace(const nlohmann::json& trace, std::size_t top) {
    const nlohmann::json* events = nullptr;
    if (trace.is_array())
        events = &trace;
    else if (trace.is_object() && trace.contains("traceEvents") && trace["traceEvents"].is_array())
        events = &trace["traceEvents"];
    if (events == nullptr)
        return fail(
            "not a Chrome trace: expected an object with a \"traceEvents\" array, or an array of events");

    struct NameData {
        std::vector<double> durations;
        double total = 0;
    };
    struct RipData {
        std::uint64_t count = 0;
        double total = 0;
        std::string instruction;
        std::map<std::string, std::uint64_t> names;
    };
    std::map<std::string, NameData> names;
    std::unordered_map<std::uint64_t, RipData> rips;
    TraceSummary summary;

    for (std::size_t index = 0; index < events->size(); ++index) {
        const nlohmann::json& event = (*events)[index];
        if (!event.is_object()) return fail(fmt::format("event {} is not an object", index));
        const auto phase = event.find("ph");
        if (phase == event.end() || !phase->is_string())
            return fail(fmt::format("event {} has no \"ph\" string", index));
        if (phase->get_ref<const std::string&>() != "X") continue;
        const auto name = event.find("name");
        if (name == event.end() || !name->is_string())
            return fail(fmt::format("event {}: \"name\" is not a string", index));
        const auto ts = event.find("ts");
        if (ts == event.end() || !ts->is_number() || !std::isfinite(ts->get<double>()))
            return fail(fmt::format("event {}: \"ts\" is not a number", index));
        const auto dur = event.find("dur");
        if (dur == event.end() || !dur->is_number() || !std::isfinite(dur->get<double>()) ||
            dur->get<double>() < 0)
            return fail(fmt::format("event {}: \"dur\" is not a non-negative number", index));
        const double duration = event["dur"].get<double>();
        const std::string& event_name = name->get_ref<const std::string&>();
        auto& data = names[event_name];
        data.durations.push_back(duration);
        data.total += duration;
        ++summary.events;

        const auto args = event.find("args");
        if (args == event.end() || !args->is_object()) continue;
        const auto rip_arg = args->find("rip");
        if (rip_arg == args->end()) continue;
        const auto rip = parse_rip(*rip_arg);
        if (!rip) continue;
        auto& site = rips[*rip];
        ++site.count;
        site.total += duration;
        ++site.names[event_name];
        const auto instruction = args->find("instruction");
        if (site.instruction.empty() && instruction != args->end() && instruction->is_string())
            site.instruction = instruction->get<std::string>();
    }

    for (auto& [name, data] : names) {
        std::ranges::sort(data.durations);
        const auto count = static_cast<double>(data.durations.size());
        summary.by_name.push_back(TraceNameSummary{name, data.durations.size(), data.total,
                                                   data.total / count, nearest_rank(data.durations, 50),
                                                   nearest_rank(data.durations, 99), data.durations.back()});
    }
    std::ranges::sort(summary.by_name, [](const TraceNameSummary& a, const TraceNameSummary& b) {
        return a.count != b.count ? a.count > b.count : a.name < b.name;
    });

    for (const auto& [rip, data] : rips) {
        const auto most = std::ranges::max_element(
            data.names, [](const auto& a, const auto& b) { return a.second < b.second; });
        summary.top_rips.push_back(TraceSiteSummary{rip, data.instruction, most->first, data.count,
                                                    data.total / static_cast<double>(data.count)});
    }
    std::ranges::sort(summary.top_rips, [](const TraceSiteSummary& a, const TraceSiteSummary& b) {
        return a.count != b.count ? a.count > b.count : a.rip < b.rip;
    });
    if (summary.top_rips.size() > top) summary.top_rips.resize(top);
    return summary;
}

std::expected<TraceSummary, TraceFileError> summarize_trace_file(const std::string& path, std::size_t top) {
    auto trace = load_trace_file(path);
    if (!trace) return std::unexpected(std::move(trace.error()));
    auto summary = summarize_trace(*trace, top);
    if (!summary) return fail(fmt::format("{}: {}", path, summary.error().message));
    return summary;
}

std::string format_trace_summary(const TraceSummary& summary) {
    const auto us = [](double microseconds) { return format_nanoseconds(microseconds * 1000.0); };
    std::string out = fmt::format("{} exits\n\n{:<36} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
                                  summary.events, "name", "count", "total", "mean", "p50", "p99", "max");
    for (const auto& row : summary.by_name)
        out += fmt::format("{:<36} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}\n", row.name, row.count,
                           us(row.total_us), us(row.mean_us), us(row.p50_us), us(row.p99_us), us(row.max_us));
    if (!summary.top_rips.empty()) {
        out += fmt::format("\n{:<20} {:<28} {:<24} {:>10} {:>10}\n", "rip", "instruction", "exit", "count",
                           "mean");
        for (const auto& site : summary.top_rips)
            out += fmt::format("{:<20} {:<28} {:<24} {:>10} {:>10}\n", hex(site.rip),
                               site.instruction.empty() ? "?" : site.instruction, site.name, site.count,
                               us(site.mean_us));
    }
    return out;
}

} // namespace vmmlab
