// The embedded tiny guest on a real /dev/kvm: boot, text and exit status, SMP, workloads and knobs.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <string>

#include "base/error.hpp"
#include "config/vm_config.hpp"
#include "guest/embedded_image.hpp"
#include "vm/vm.hpp"

using namespace vmmlab;

namespace {
struct GuestRun {
    RunReport report;
    std::string console;
};

GuestRun boot(VmConfig config) {
    GuestRun run;
    Vm vm(config, embedded_guest_image(), ConsoleOptions{[&run](std::span<const std::byte> bytes) {
              run.console.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
          }});
    // Bounded from the host side: TESTING.md has nested guests that wedged; a hang must fail, not stall.
    run.report = vm.run(std::chrono::seconds(60));
    // Left behind for a red run: what the guest printed and why the VM stopped.
    std::printf("--- guest console (%s)\n%s--- %s, status %d\n", describe(config).c_str(),
                run.console.c_str(), run.report.stop_reason.c_str(), run.report.exit_status);
    return run;
}

VmConfig with_cmdline(std::string cmdline, unsigned cpus = 1) {
    VmConfig config;
    config.cpus = cpus;
    config.memory = 128ULL << 20;
    config.guest_cmdline = std::move(cmdline);
    return config;
}

const GuestResult* find(const RunReport& report, std::string_view metric) {
    for (const auto& result : report.results)
        if (result.metric == metric) return &result;
    return nullptr;
}
} // namespace

TEST_CASE("hello boots, prints and ends the VM with status 0", "[kvm][guest]") {
    auto run = boot(with_cmdline("hello"));
    CHECK(run.report.exit_status == 0);
    CHECK_THAT(run.console, Catch::Contains("hello from the vmmlab guest: 1 vCPUs"));
    CHECK(run.report.stop_reason == "the guest wrote status 0 to the exit port");
    REQUIRE(find(run.report, "vcpus_online"));
    CHECK(find(run.report, "vcpus_online")->value == 1);
    CHECK(run.report.unclaimed_pio == 0);
}

TEST_CASE("the guest's exit status becomes the run's", "[kvm][guest]") {
    CHECK(boot(with_cmdline("hello exit=42")).report.exit_status == 42);
}

TEST_CASE("every vCPU of a 2-vCPU guest comes up", "[kvm][guest]") {
    auto run = boot(with_cmdline("hello", 2));
    CHECK(run.report.exit_status == 0);
    REQUIRE(find(run.report, "vcpus_online"));
    CHECK(find(run.report, "vcpus_online")->value == 2);
    REQUIRE(run.report.exit_counts.size() == 2);
}

TEST_CASE("the guest page-size knob is what the guest sees", "[kvm][guest]") {
    for (auto [page, bytes] : {std::pair{PageSize::k4K, 4096.0}, std::pair{PageSize::k2M, 2097152.0}}) {
        auto config = with_cmdline("hello");
        config.guest_page = page;
        auto run = boot(config);
        REQUIRE(find(run.report, "page_size"));
        CHECK(find(run.report, "page_size")->value == bytes);
    }
}

TEST_CASE("an unknown workload is a guest error with a non-zero status", "[kvm][guest]") {
    auto run = boot(with_cmdline("no-such-workload"));
    CHECK(run.report.exit_status != 0);
}

TEST_CASE("the PIO exit microbenchmark reports a finite cycle count and exits to userspace", "[kvm][guest]") {
    auto run = boot(with_cmdline("pio iterations=2000"));
    CHECK(run.report.exit_status == 0);
    REQUIRE_FALSE(run.report.results.empty());
    for (const auto& result : run.report.results) {
        CHECK(std::isfinite(result.value));
        CHECK(result.value > 0);
    }
    // Every OUT to the bench port is one userspace io-out exit.
    CHECK(run.report.exit_counts[0].by_kind[1] >= 2000);
}

TEST_CASE("STREAM on both vCPUs reports four finite bandwidths", "[kvm][guest]") {
    auto run = boot(with_cmdline("stream size=6M ntimes=2 vcpus=all", 2));
    CHECK(run.report.exit_status == 0);
    for (auto metric : {"copy", "scale", "add", "triad"}) {
        INFO(metric);
        const GuestResult* result = nullptr;
        for (const auto& r : run.report.results)
            if (r.metric.find(metric) != std::string::npos) result = &r;
        REQUIRE(result != nullptr);
        CHECK(std::isfinite(result->value));
        CHECK(result->value > 0);
    }
}

TEST_CASE("a hugetlbfs pool too small gives the clear error before anything runs", "[kvm][guest]") {
    auto config = with_cmdline("hello");
    config.memory = 64ULL << 30; // larger than any pool the sandbox or CI sets up
    config.backing = Backing::Hugetlb2M;
    CHECK_THROWS_WITH(Vm(config, embedded_guest_image()), Catch::Contains("hugetlbfs 2m pool"));
}

TEST_CASE("a 2M hugetlbfs backing boots when the pool is large enough", "[kvm][guest]") {
    auto config = with_cmdline("hello");
    config.memory = 64ULL << 20; // tools/test gives the sandbox 64 pages of 2M
    config.backing = Backing::Hugetlb2M;
    auto run = boot(config);
    CHECK(run.report.exit_status == 0);
    CHECK_THAT(run.report.achieved_backing, Catch::Contains("hugetlbfs 2m"));
}
