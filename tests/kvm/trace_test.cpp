// Exit accounting on a real VM: userspace stats per device, KVM's own stats, and the Chrome trace.
#include <catch2/catch.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "guest/abi/boot_abi.hpp"
#include "guest/embedded_image.hpp"
#include "trace/chrome_trace.hpp"
#include "vm/vm.hpp"

using namespace vmmlab;

namespace {
constexpr std::uint64_t kIterations = 500;
// The pio workload writes the bench port 100 times untimed (warm-up), then `iterations` times.
constexpr std::uint64_t kPortWrites = 100 + kIterations;

struct TracedRun {
    RunReport report;
    std::string console;
};

TracedRun traced_pio_run(const std::string& trace_path) {
    VmConfig config;
    config.memory = 64ULL << 20;
    config.guest_cmdline = "pio iterations=" + std::to_string(kIterations);
    TracedRun run;
    Vm vm(config, embedded_guest_image(), ConsoleOptions{[&run](std::span<const std::byte> bytes) {
              run.console.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
          }},
          TraceOptions{.counters = true, .kernel_stats = true, .timeline_path = trace_path});
    run.report = vm.run(std::chrono::seconds(60));
    std::printf("--- guest console\n%s--- %s, status %d\n", run.console.c_str(),
                run.report.stop_reason.c_str(), run.report.exit_status);
    return run;
}
} // namespace

TEST_CASE("N PIO writes to a userspace port: N exits for that port in every account", "[kvm][trace]") {
    const auto trace_path = (std::filesystem::temp_directory_path() / "vmmlab-trace-test.json").string();
    std::filesystem::remove(trace_path);
    auto run = traced_pio_run(trace_path);
    REQUIRE(run.report.exit_status == 0);

    // Userspace: exactly kPortWrites io-out exits at the bench port's site, none of them reads.
    REQUIRE(run.report.exit_stats.has_value());
    REQUIRE(run.report.sites);
    const SiteId bench = run.report.sites->find(PioAddress{abi::kBenchPioPort});
    CHECK(run.report.sites->site(bench).name == "bench-pio");
    CHECK(run.report.exit_stats->by_site(bench, true).count() == kPortWrites);
    CHECK(run.report.exit_stats->by_site(bench, false).count() == 0);
    CHECK(run.report.exit_stats->by_site(bench, true).max() > 0);

    // The kernel: at least as many I/O exits (the console's OUTs and INs count there too).
    INFO("kernel stats: " << run.report.kernel_stats_note);
    REQUIRE(run.report.kernel_vcpu_stats.has_value());
    const auto io_exits = kvm_stat_value(run.report.kernel_vcpu_stats->layout,
                                         run.report.kernel_vcpu_stats->snapshot, "io_exits");
    REQUIRE(io_exits.has_value());
    CHECK(*io_exits >= kPortWrites);

    // The timeline: valid JSON with one complete event per bench-port write, each with its instruction.
    std::ifstream in(trace_path);
    REQUIRE(in.good());
    const auto trace = nlohmann::json::parse(in, nullptr, false);
    REQUIRE_FALSE(trace.is_discarded());
    std::uint64_t port_events = 0, with_instruction = 0;
    for (const auto& event : trace.at("traceEvents")) {
        if (event.value("ph", "") != "X" || !event.contains("args")) continue;
        const auto& args = event.at("args");
        if (args.value("port", "") != "0x520") continue;
        ++port_events;
        if (args.value("instruction", "").starts_with("out")) ++with_instruction;
    }
    CHECK(port_events == kPortWrites);
    CHECK(run.report.trace_dropped == 0);
    CHECK(with_instruction == kPortWrites);

    // And the report reader agrees.
    auto summary = summarize_trace_file(trace_path);
    REQUIRE(summary.has_value());
    CHECK(summary->events == run.report.trace_records);
    std::filesystem::remove(trace_path);
}
