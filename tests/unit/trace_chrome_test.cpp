#include <catch2/catch.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

#include <fmt/format.h>
#include <unistd.h>

#include "cpu/exit.hpp"
#include "trace/chrome_trace.hpp"

using namespace vmmlab;

namespace {

template <typename Alternative>
std::uint8_t reason_of() {
    return static_cast<std::uint8_t>(VcpuExit(std::in_place_type<Alternative>).index());
}

struct TempFile {
    std::filesystem::path path;
    explicit TempFile(const std::string& content) {
        path = std::filesystem::temp_directory_path() /
               ("vmmlab-trace-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
        std::ofstream(path) << content;
    }
    ~TempFile() { std::filesystem::remove(path); }
    static inline int counter = 0;
};

nlohmann::json complete(const std::string& name, double ts, double dur, std::uint64_t rip,
                        const std::string& instruction = {}) {
    nlohmann::json args = {{"rip", fmt::format("{:#x}", rip)}};
    if (!instruction.empty()) args["instruction"] = instruction;
    return {{"name", name}, {"ph", "X"}, {"pid", 1}, {"tid", 0}, {"ts", ts}, {"dur", dur}, {"args", args}};
}

} // namespace

TEST_CASE("chrome trace: exporter writes complete events and thread names that parse back", "[trace]") {
    SiteTable sites;
    const SiteId serial = *sites.add(BusKind::Pio, 0x3f8, 8, "serial");
    const SiteId blk = *sites.add(BusKind::Mmio, 0xd000'0000, 0x1000, "virtio-blk");

    TraceRing vcpu0(8), vcpu1(2);
    ExitRecord out;
    out.start_ns = 1'000'000;
    out.duration_ns = 1500;
    out.vcpu = 0;
    out.reason = reason_of<IoOut>();
    out.site = serial;
    out.address = 0x3f8;
    out.rip = 0x1004;
    out.size = 1;
    out.is_write = true;
    out.data[0] = std::byte{0x41};
    vcpu0.push(out);
    out.start_ns += 5000;
    vcpu0.push(out); // same rip: the instruction callback runs once for it

    ExitRecord mmio;
    mmio.vcpu = 1;
    mmio.reason = reason_of<MmioRead>();
    mmio.site = blk;
    mmio.address = 0xd000'0010;
    mmio.size = 4;
    mmio.data = {std::byte{0x78}, std::byte{0x56}, std::byte{0x34}, std::byte{0x12}};
    mmio.rip = 0x2000;
    mmio.start_ns = 1'002'000;
    mmio.duration_ns = 800;
    ExitRecord hlt;
    hlt.vcpu = 1;
    hlt.reason = reason_of<Hlt>();
    hlt.rip = 0x3000;
    hlt.start_ns = 1'010'000;
    hlt.duration_ns = 250;
    vcpu1.push(hlt); // pushed first, then overwritten twice: one drop
    vcpu1.push(mmio);
    vcpu1.push(hlt);

    int calls = 0;
    ChromeTraceOptions options;
    options.instruction_at = [&](std::uint32_t, std::uint64_t rip,
                                 std::uint8_t) -> std::optional<std::string> {
        ++calls;
        if (rip == 0x1004) return "out dx, al";
        return std::nullopt;
    };
    const TraceRing* rings[] = {&vcpu0, &vcpu1};
    const auto parsed = nlohmann::json::parse(chrome_trace(rings, sites, options).dump());

    CHECK(calls == 3); // (0, 0x1004), (1, 0x2000), (1, 0x3000)
    REQUIRE(parsed["traceEvents"].is_array());
    const auto& events = parsed["traceEvents"];
    REQUIRE(events.size() == 1 + 2 + 4); // process name, two thread names, four exits
    CHECK(parsed["otherData"]["dropped"] == 1);
    CHECK(parsed["otherData"]["records"] == 4);
    CHECK(parsed["otherData"]["origin_ns"] == 1'000'000);

    std::map<std::string, int> names;
    for (const auto& event : events) {
        REQUIRE(event["pid"] == 1);
        if (event["ph"] == "M" && event["name"] == "thread_name")
            CHECK(event["args"]["name"] == fmt::format("vCPU {}", event["tid"].get<int>()));
        if (event["ph"] == "X") {
            ++names[event["name"].get<std::string>()];
            CHECK(event["ts"].is_number_float());
            CHECK(event["dur"].is_number_float());
        }
    }
    CHECK(names == std::map<std::string, int>{{"io-out serial", 2}, {"mmio-read virtio-blk", 1}, {"hlt", 1}});

    const auto& first = events[3];
    CHECK(first["name"] == "io-out serial");
    CHECK(first["tid"] == 0);
    CHECK(first["ts"].get<double>() == 0.0);
    CHECK(first["dur"].get<double>() == 1.5);
    CHECK(first["args"]["port"] == "0x3f8");
    CHECK(first["args"]["rip"] == "0x1004");
    CHECK(first["args"]["data"] == "0x41");
    CHECK(first["args"]["write"] == true);
    CHECK(first["args"]["instruction"] == "out dx, al");
    CHECK(events[4]["ts"].get<double>() == 5.0);

    const auto& read = events[5];
    CHECK(read["name"] == "mmio-read virtio-blk");
    CHECK(read["tid"] == 1);
    CHECK(read["ts"].get<double>() == 2.0);
    CHECK(read["args"]["gpa"] == "0xd0000010");
    CHECK(read["args"]["data"] == "0x12345678");
    CHECK_FALSE(read["args"].contains("port"));
    CHECK_FALSE(read["args"].contains("instruction"));
    CHECK_FALSE(events[6]["args"].contains("size"));
}

TEST_CASE("chrome trace: the summary of a known trace", "[trace]") {
    nlohmann::json events = nlohmann::json::array();
    events.push_back(
        {{"name", "thread_name"}, {"ph", "M"}, {"pid", 1}, {"tid", 0}, {"args", {{"name", "vCPU 0"}}}});
    // io-out serial at 0x1004: 1..10 us; hlt at 0x2000: 100 us twice; one event with a numeric rip.
    for (int i = 1; i <= 10; ++i)
        events.push_back(complete("io-out serial", i * 20.0, i, 0x1004, "out dx, al"));
    events.push_back(complete("hlt", 300, 100, 0x2000));
    events.push_back(complete("hlt", 500, 100, 0x2000, "hlt"));
    auto numeric = complete("mmio-write virtio-blk", 700, 4, 0);
    numeric["args"]["rip"] = 0x3000;
    events.push_back(numeric);
    events.push_back({{"name", "instant"}, {"ph", "i"}, {"ts", 1.0}});

    const auto summary = summarize_trace({{"traceEvents", events}}, 2);
    REQUIRE(summary.has_value());
    CHECK(summary->events == 13);
    REQUIRE(summary->by_name.size() == 3);
    const auto& io = summary->by_name[0];
    CHECK(io.name == "io-out serial");
    CHECK(io.count == 10);
    CHECK(io.total_us == Approx(55));
    CHECK(io.mean_us == Approx(5.5));
    CHECK(io.p50_us == Approx(5));
    CHECK(io.p99_us == Approx(10));
    CHECK(io.max_us == Approx(10));
    CHECK(summary->by_name[1].name == "hlt");
    CHECK(summary->by_name[1].mean_us == Approx(100));

    REQUIRE(summary->top_rips.size() == 2); // limited to the top 2
    CHECK(summary->top_rips[0].rip == 0x1004);
    CHECK(summary->top_rips[0].count == 10);
    CHECK(summary->top_rips[0].instruction == "out dx, al");
    CHECK(summary->top_rips[0].name == "io-out serial");
    CHECK(summary->top_rips[0].mean_us == Approx(5.5));
    CHECK(summary->top_rips[1].rip == 0x2000);
    CHECK(summary->top_rips[1].instruction == "hlt");

    const auto everything = summarize_trace(events); // a bare array is a trace too
    REQUIRE(everything.has_value());
    CHECK(everything->top_rips.size() == 3);
    CHECK(everything->top_rips[2].rip == 0x3000);

    const std::string report = format_trace_summary(*summary);
    CHECK(report.find("13 exits") != std::string::npos);
    CHECK(report.find("io-out serial") != std::string::npos);
    CHECK(report.find("0x1004") != std::string::npos);
    CHECK(report.find("out dx, al") != std::string::npos);
}

TEST_CASE("chrome trace: the summary round-trips the exporter's output through a file", "[trace]") {
    SiteTable sites;
    TraceRing ring(4);
    ExitRecord record;
    record.reason = static_cast<std::uint8_t>(VcpuExit(std::in_place_type<Hlt>).index());
    record.rip = 0x42;
    record.duration_ns = 2000;
    ring.push(record);
    ring.push(record);
    const TraceRing* rings[] = {&ring};
    TempFile file(chrome_trace(rings, sites).dump(2));
    const auto summary = summarize_trace_file(file.path.string());
    REQUIRE(summary.has_value());
    REQUIRE(summary->by_name.size() == 1);
    CHECK(summary->by_name[0].name == "hlt");
    CHECK(summary->by_name[0].count == 2);
    CHECK(summary->by_name[0].mean_us == Approx(2.0));
    REQUIRE(summary->top_rips.size() == 1);
    CHECK(summary->top_rips[0].rip == 0x42);
}

TEST_CASE("chrome trace: files that are not traces give one clear line", "[trace]") {
    SECTION("missing file") {
        const auto result = summarize_trace_file("/nonexistent/vmmlab/trace.json");
        REQUIRE_FALSE(result.has_value());
        CHECK(result.error().message ==
              "/nonexistent/vmmlab/trace.json: cannot open: No such file or directory");
    }
    SECTION("not JSON") {
        TempFile file("vmmlab run --trace\n");
        const auto result = summarize_trace_file(file.path.string());
        REQUIRE_FALSE(result.has_value());
        CHECK(result.error().message.starts_with(file.path.string() + ": not JSON (parse error at byte"));
        CHECK(result.error().message.find('\n') == std::string::npos);
    }
    SECTION("JSON but not a trace") {
        TempFile file(R"({"reasons": []})");
        const auto result = summarize_trace_file(file.path.string());
        REQUIRE_FALSE(result.has_value());
        CHECK(result.error().message == file.path.string() +
                                            ": not a Chrome trace: expected an object with a \"traceEvents\" "
                                            "array, or an array of events");
    }
    SECTION("events with wrong fields") {
        using nlohmann::json;
        CHECK(summarize_trace(json{{"traceEvents", json::array({42})}}).error().message ==
              "event 0 is not an object");
        CHECK(summarize_trace(json{{"traceEvents", json::array({json{{"name", "x"}}})}}).error().message ==
              "event 0 has no \"ph\" string");
        CHECK(summarize_trace(json::array({json{{"name", "x"}, {"ph", "X"}, {"ts", 1}, {"dur", -1}}}))
                  .error()
                  .message == "event 0: \"dur\" is not a non-negative number");
        CHECK(summarize_trace(json::array({json{{"name", "x"}, {"ph", "X"}, {"ts", "1"}, {"dur", 1}}}))
                  .error()
                  .message == "event 0: \"ts\" is not a number");
        CHECK(summarize_trace(json::array({json{{"name", 3}, {"ph", "X"}, {"ts", 1}, {"dur", 1}}}))
                  .error()
                  .message == "event 0: \"name\" is not a string");
        CHECK_FALSE(summarize_trace(json("a string")).has_value());
    }
    SECTION("an empty trace is a trace") {
        const auto result = summarize_trace(nlohmann::json{{"traceEvents", nlohmann::json::array()}});
        REQUIRE(result.has_value());
        CHECK(result->events == 0);
    }
}
