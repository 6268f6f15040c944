// The embedded tiny guest on a real /dev/kvm: boot, text and exit status, SMP, workloads and knobs.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <string>

#include <unistd.h>

#include "arch/x86/cpuid.hpp"
#include "arch/x86/host_cpu.hpp"
#include "base/error.hpp"
#include "base/unique_fd.hpp"
#include "config/vm_config.hpp"
#include "guest/embedded_image.hpp"
#include "kvm/kvm.hpp"
#include "tiny_guest_run.hpp"
#include "vm/vm.hpp"

using namespace vmmlab;

namespace {
using testing::GuestRun;

GuestRun boot(const VmConfig& config, int input_fd = -1) {
    return testing::run_tiny_guest(config, std::chrono::seconds(60), input_fd);
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

// The value of a metric the run must have reported.
double value_of(const RunReport& report, std::string_view metric) {
    const GuestResult* result = find(report, metric);
    INFO("metric " << metric);
    REQUIRE(result != nullptr);
    return result->value;
}

std::uint64_t exits_of_kind(const RunReport& report, std::string_view kind) {
    std::uint64_t total = 0;
    for (const auto& counts : report.exit_counts)
        for (std::size_t k = 0; k < counts.by_kind.size(); ++k)
            if (exit_kind_name(k) == kind) total += counts.by_kind[k];
    return total;
}

// Every cycle and time figure of a workload is finite and above zero.
void check_figures(const RunReport& report, std::string_view workload) {
    CHECK(report.exit_status == 0);
    std::size_t figures = 0;
    for (const auto& result : report.results) {
        if (result.workload != workload || (result.unit != "cycles" && result.unit != "ns")) continue;
        INFO(result.workload << "." << result.metric);
        CHECK(std::isfinite(result.value));
        CHECK(result.value > 0);
        ++figures;
    }
    CHECK(figures >= 1);
}

// Cache descriptors the monitor's CPUID for vCPU 0 of `cpus` gives the guest (leaf 4 or 0x8000001D).
std::size_t expected_cache_descriptors(unsigned cpus) {
    auto system = kvm::KvmSystem::open();
    auto entries = x86::guest_cpuid(system.supported_cpuid(), x86::CpuModel::HostPassthrough,
                                    {.vcpu_count = cpus, .vcpu_index = 0},
                                    x86::read_host_cache_facts(x86::native_cpuid()));
    REQUIRE(entries.has_value());
    const bool amd = x86::cpuid_vendor(*entries) == x86::CpuVendor::Amd;
    if (amd) {
        auto extended = x86::find_cpuid_entry(*entries, 0x80000001);
        if (!extended || (extended->ecx & (1U << 22)) == 0) return 0; // no TOPOEXT: the guest does not look
    }
    std::size_t count = 0;
    for (std::uint32_t subleaf = 0; subleaf < 16; ++subleaf) {
        auto entry = x86::find_cpuid_entry(*entries, amd ? 0x8000001d : 4, subleaf);
        if (!entry || (entry->eax & 0x1f) == 0) break;
        ++count;
    }
    return count;
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

TEST_CASE("the host CPU model's topology reaches the guest: count, APIC IDs, leaf 0xB, caches",
          "[kvm][guest]") {
    auto config = with_cmdline("cpuinfo", 2);
    config.cpu_model = x86::CpuModel::HostPassthrough;
    auto run = boot(config);
    CHECK(run.report.exit_status == 0);
    CHECK(value_of(run.report, "logical_processors") == 2);
    CHECK(value_of(run.report, "topology_processors") == 2);
    CHECK(value_of(run.report, "distinct_apic_ids") == 2);
    CHECK(value_of(run.report, "hypervisor") == 1);
    const auto descriptors = expected_cache_descriptors(2);
    CHECK(value_of(run.report, "cache_descriptors") == static_cast<double>(descriptors));
    if (descriptors > 0 && value_of(run.report, "last_level_cache") >= 3)
        CHECK(value_of(run.report, "last_level_sharing") == 2); // the L3 is shared by every vCPU
}

TEST_CASE("the minimal CPU model hides caches and AVX and names itself", "[kvm][guest]") {
    auto config = with_cmdline("cpuinfo", 2);
    config.cpu_model = x86::CpuModel::Minimal;
    auto run = boot(config);
    CHECK(run.report.exit_status == 0);
    CHECK_THAT(run.console, Catch::Contains("'vmmlab minimal'"));
    CHECK(value_of(run.report, "logical_processors") == 2);
    CHECK(value_of(run.report, "cache_descriptors") == 0);
    CHECK(value_of(run.report, "avx2") == 0);
}

TEST_CASE("lines written to the serial input reach the guest", "[kvm][guest]") {
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    UniqueFd read_end(fds[0]), write_end(fds[1]);
    // Written before the guest starts: held back until its driver raises DTR, not lost to its FIFO reset.
    const std::string typed = "first line\r\nsecond, with spaces\n";
    REQUIRE(::write(write_end.get(), typed.data(), typed.size()) == static_cast<ssize_t>(typed.size()));
    auto run = boot(with_cmdline("echo lines=2 timeout=20"), read_end.get());
    CHECK(run.report.exit_status == 0);
    CHECK_THAT(run.console, Catch::Contains("echo: first line\n"));
    CHECK_THAT(run.console, Catch::Contains("echo: second, with spaces\n"));
    CHECK(value_of(run.report, "lines") == 2);
}

TEST_CASE("each exit microbenchmark reports finite cycle counts", "[kvm][guest]") {
    SECTION("pio-ioeventfd: the bound port's exits stay in the kernel") {
        auto run = boot(with_cmdline("pio-ioeventfd iterations=2000"));
        check_figures(run.report, "pio-ioeventfd");
        CHECK(value_of(run.report, "ioeventfd_bound") == 1);
        CHECK(exits_of_kind(run.report, "io-out") < 2000); // only the console's OUTs reach userspace
    }
    SECTION("mmio: one userspace exit per access") {
        auto run = boot(with_cmdline("mmio iterations=2000"));
        check_figures(run.report, "mmio");
        CHECK(exits_of_kind(run.report, "mmio-write") + exits_of_kind(run.report, "mmio-read") >= 2000);
    }
    SECTION("cpuid") {
        check_figures(boot(with_cmdline("cpuid iterations=2000")).report, "cpuid");
    }
    SECTION("vmcall") {
        auto run = boot(with_cmdline("vmcall iterations=2000"));
        check_figures(run.report, "vmcall");
        CHECK_THAT(run.console, Catch::Contains("the hypervisor answered rax="));
    }
    SECTION("hlt: LAPIC timer wake-ups") {
        auto run = boot(with_cmdline("hlt iterations=100"));
        check_figures(run.report, "hlt");
        CHECK(value_of(run.report, "wakeups") == 100);
    }
}

TEST_CASE("the memory workloads report finite figures and verify their data", "[kvm][guest]") {
    SECTION("gups") {
        auto run = boot(with_cmdline("gups size=8M updates=200000"));
        CHECK(run.report.exit_status == 0);
        CHECK(value_of(run.report, "gups") > 0);
        CHECK(value_of(run.report, "errors") == 0);
    }
    SECTION("latency") {
        auto run = boot(with_cmdline("latency size=8M loads=200000"));
        check_figures(run.report, "latency");
    }
}

TEST_CASE("vCPU knobs are accepted where the host can honour them", "[kvm][knobs]") {
    auto config = with_cmdline("hello");
    SECTION("pinning") {
        config.pin = {0};
    }
    SECTION("halt polling off") {
        config.halt_poll = {HaltPoll::Mode::Off, 0};
    }
    SECTION("halt polling 200 us") {
        config.halt_poll = {HaltPoll::Mode::Nanoseconds, 200000};
    }
    SECTION("HLT and PAUSE exits disabled on a pinned vCPU") {
        config.pin = {0};
        config.disable_exits = {.hlt = true, .pause = true};
    }
    auto run = boot(config);
    CHECK(run.report.exit_status == 0);
    CHECK(value_of(run.report, "vcpus_online") == 1);
}

TEST_CASE("disabling exits without pinning is refused with the reason", "[kvm][knobs]") {
    auto config = with_cmdline("hello");
    config.disable_exits = {.hlt = true};
    CHECK_THROWS_WITH(Vm(config, embedded_guest_image()), Catch::Contains("pin"));
}

TEST_CASE("1 GiB guest pages: seen by the guest where the CPU has pdpe1gb, refused where not",
          "[kvm][knobs]") {
    auto config = with_cmdline("hello");
    config.guest_page = PageSize::k1G;
    if (x86::read_host_cpu().pdpe1gb) {
        auto run = boot(config);
        CHECK(run.report.exit_status == 0);
        CHECK(value_of(run.report, "page_size") == 1024.0 * 1024 * 1024);
    } else {
        CHECK_THROWS_WITH(Vm(config, embedded_guest_image()), Catch::Contains("pdpe1gb"));
    }
}

TEST_CASE("THP and 1G hugetlbfs backings boot and report what they got", "[kvm][knobs]") {
    SECTION("thp") {
        auto config = with_cmdline("hello");
        config.backing = Backing::Thp;
        config.prefault = true;
        auto run = boot(config);
        CHECK(run.report.exit_status == 0);
        // "THP: N MiB of 128 MiB in huge pages": prefaulted madvise(MADV_HUGEPAGE) memory gets some.
        REQUIRE_THAT(run.report.achieved_backing, Catch::StartsWith("THP: "));
        CHECK(std::stoul(run.report.achieved_backing.substr(5)) > 0);
    }
    SECTION("1g (tools/test gives the sandbox one 1 GiB page)") {
        auto config = with_cmdline("hello");
        config.memory = 1ULL << 30;
        config.backing = Backing::Hugetlb1G;
        auto run = boot(config);
        CHECK(run.report.exit_status == 0);
        CHECK_THAT(run.report.achieved_backing, Catch::Contains("hugetlbfs 1g"));
    }
}

TEST_CASE("RAM above the PCI hole is usable: 3.5 GiB split around 3-4 GiB", "[kvm][guest]") {
    auto config = with_cmdline("hello");
    config.memory = 3584ULL << 20;
    config.guest_page = PageSize::k2M;
    auto run = boot(config);
    CHECK(run.report.exit_status == 0);
    // All of it, less the monitor's low area, image, tables and stacks (a few MiB).
    CHECK(value_of(run.report, "memory") > 3560);
}
