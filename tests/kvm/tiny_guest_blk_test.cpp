// The tiny guest's virtio-pci blk driver and `blk` workload on a real /dev/kvm: bytes written by the guest
// land in the image (checked on the host), bytes written by the host are read back by the guest, a
// read-only disk answers writes with IOERR, and every engine, O_DIRECT setting and wait mode reports figures.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

#include "base/unique_fd.hpp"
#include "config/vm_config.hpp"
#include "guest/embedded_image.hpp"
#include "guest/workloads/blk_pattern.hpp"
#include "guest/workloads/random.hpp"
#include "tiny_guest_run.hpp"
#include "vm/vm.hpp"

using namespace vmmlab;

namespace {
namespace fs = std::filesystem;

using testing::GuestRun;

GuestRun boot(const VmConfig& config) {
    return testing::run_tiny_guest(config, std::chrono::seconds(120));
}

VmConfig blk_config(std::string cmdline, std::vector<DiskConfig> disks) {
    VmConfig config;
    config.memory = 128ULL << 20;
    config.guest_cmdline = std::move(cmdline);
    config.disks = std::move(disks);
    return config;
}

const GuestResult* find(const RunReport& report, std::string_view metric) {
    for (const auto& result : report.results)
        if (result.workload == "blk" && result.metric == metric) return &result;
    return nullptr;
}

double value_of(const RunReport& report, std::string_view metric) {
    const GuestResult* result = find(report, metric);
    INFO("metric blk." << metric);
    REQUIRE(result != nullptr);
    return result->value;
}

// The figures every completed run reports: throughput and latency above zero, the request count as asked.
void check_figures(const RunReport& report, double ops) {
    CHECK(value_of(report, "iops") > 0);
    CHECK(value_of(report, "mb_per_s") > 0);
    CHECK(value_of(report, "latency_p50") > 0);
    CHECK(value_of(report, "latency_p99") >= value_of(report, "latency_p50"));
    CHECK(value_of(report, "latency_max") >= value_of(report, "latency_p99"));
    CHECK(value_of(report, "ops") == ops);
}

// A directory whose file system takes O_DIRECT: the temp directory, or (tmpfs before Linux 6.6 refuses
// it) the directory the tests run in.
fs::path direct_capable_directory() {
    for (const fs::path& directory : {fs::temp_directory_path(), fs::current_path()}) {
        const fs::path probe = directory / ("vmmlab-odirect-probe-" + std::to_string(::getpid()));
        UniqueFd fd(::open(probe.c_str(), O_RDWR | O_CREAT | O_DIRECT | O_CLOEXEC, 0600));
        fs::remove(probe);
        if (fd) return directory;
    }
    FAIL("no directory here accepts O_DIRECT");
    return {};
}

class Image {
public:
    // `size` bytes that match no pattern sector (0xA5 everywhere).
    explicit Image(std::uint64_t size, const fs::path& directory = fs::temp_directory_path())
        : path_(directory / ("vmmlab-guestblk-" + std::to_string(::getpid()) + "-" +
                             std::to_string(counter_++) + ".img")) {
        write_all(std::vector<std::uint8_t>(size, 0xa5));
    }
    ~Image() { fs::remove(path_); }
    std::string path() const { return path_.string(); }

    void write_all(const std::vector<std::uint8_t>& bytes) const {
        UniqueFd fd(::open(path_.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
        REQUIRE(fd);
        REQUIRE(::pwrite(fd.get(), bytes.data(), bytes.size(), 0) == static_cast<ssize_t>(bytes.size()));
    }
    std::vector<std::uint8_t> read_all() const {
        std::vector<std::uint8_t> bytes(fs::file_size(path_));
        UniqueFd fd(::open(path_.c_str(), O_RDONLY | O_CLOEXEC));
        REQUIRE(fd);
        REQUIRE(::pread(fd.get(), bytes.data(), bytes.size(), 0) == static_cast<ssize_t>(bytes.size()));
        return bytes;
    }

private:
    static inline int counter_ = 0;
    fs::path path_;
};

// The workload's pattern for the first `bytes` bytes of a disk.
std::vector<std::uint8_t> pattern_bytes(std::uint64_t bytes) {
    std::vector<std::uint64_t> words(bytes / 8);
    guest::blk::fill_pattern(words.data(), 0, bytes / guest::blk::kSectorBytes);
    std::vector<std::uint8_t> out(bytes);
    std::memcpy(out.data(), words.data(), bytes);
    return out;
}

// Sectors of `image` in [0, sectors) that do not hold the pattern.
std::size_t sectors_off_pattern(const std::vector<std::uint8_t>& image, std::uint64_t sectors) {
    const auto expected = pattern_bytes(sectors * guest::blk::kSectorBytes);
    std::size_t bad = 0;
    for (std::uint64_t s = 0; s < sectors; ++s)
        bad += std::memcmp(image.data() + s * 512, expected.data() + s * 512, 512) != 0;
    return bad;
}

constexpr std::uint64_t kImageBytes = 512 * 1024; // 1024 sectors, 128 requests of 4 KiB
} // namespace

TEST_CASE("blk: the guest's writes land in the image as its pattern and read back intact, for every engine "
          "with O_DIRECT off and on",
          "[kvm][guest][blk]") {
    const auto direct_directory = direct_capable_directory();
    for (auto engine :
         {virtio::IoEngineKind::Sync, virtio::IoEngineKind::Threads, virtio::IoEngineKind::IoUring}) {
        for (bool direct : {false, true}) {
            DYNAMIC_SECTION("engine " << virtio::to_string(engine) << ", direct "
                                      << (direct ? "on" : "off")) {
                Image image(kImageBytes, direct ? direct_directory : fs::temp_directory_path());
                const DiskConfig disk{
                    .path = image.path(), .readonly = false, .direct = direct, .engine = engine};

                auto written = boot(blk_config("blk mode=write bs=4k qd=4", {disk}));
                CHECK(written.report.exit_status == 0);
                check_figures(written.report, 128);
                CHECK(value_of(written.report, "io_errors") == 0);
                CHECK(value_of(written.report, "interrupts") > 0); // wait=irq is the default
                CHECK(sectors_off_pattern(image.read_all(), kImageBytes / 512) == 0);

                auto read = boot(blk_config("blk mode=randread bs=4k qd=4 ops=64 verify=on", {disk}));
                CHECK(read.report.exit_status == 0);
                check_figures(read.report, 64);
                CHECK(value_of(read.report, "mismatched_sectors") == 0);
                CHECK(value_of(read.report, "io_errors") == 0);
                CHECK(read.report.unclaimed_pio == 0);
                CHECK(read.report.unclaimed_mmio == 0);
            }
        }
    }
}

TEST_CASE("blk: the guest reads the pattern the host wrote and counts a sector the host spoiled",
          "[kvm][guest][blk]") {
    Image image(kImageBytes);
    auto bytes = pattern_bytes(kImageBytes);
    image.write_all(bytes);
    const DiskConfig disk{.path = image.path()};

    auto clean = boot(blk_config("blk mode=read bs=64k qd=2 verify=on", {disk}));
    CHECK(clean.report.exit_status == 0);
    check_figures(clean.report, 8);
    CHECK(value_of(clean.report, "mismatched_sectors") == 0);

    bytes[300 * 512 + 17] ^= 0x40; // one bit of sector 300
    image.write_all(bytes);
    auto spoiled = boot(blk_config("blk mode=read bs=4k qd=1 verify=on", {disk}));
    CHECK(spoiled.report.exit_status == 1);
    CHECK(value_of(spoiled.report, "mismatched_sectors") == 1);
    CHECK_THAT(spoiled.console, Catch::Contains("blk: sector 300 word 2: read"));
}

TEST_CASE(
    "blk: a read-only disk answers every write with IOERR, the guest says so and the image stays as it was",
    "[kvm][guest][blk]") {
    Image image(kImageBytes);
    const auto before = image.read_all();
    auto run = boot(
        blk_config("blk mode=write bs=4k qd=2 ops=6", {DiskConfig{.path = image.path(), .readonly = true}}));
    CHECK(run.report.exit_status == 1);
    CHECK(value_of(run.report, "io_errors") == 6);
    CHECK(value_of(run.report, "ops") == 6);
    CHECK_THAT(run.console, Catch::Contains("read-only"));
    CHECK_THAT(run.console, Catch::Contains("answered status 1 (IOERR)"));
    CHECK(image.read_all() == before);
}

TEST_CASE(
    "blk: random writes land exactly on the blocks the seed picks, the rest of the image stays as it was",
    "[kvm][guest][blk]") {
    Image image(kImageBytes);
    auto run = boot(blk_config("blk mode=randwrite bs=8k qd=3 ops=20 seed=7 wait=poll",
                               {DiskConfig{.path = image.path(), .engine = virtio::IoEngineKind::Threads}}));
    CHECK(run.report.exit_status == 0);
    check_figures(run.report, 20);

    // The workload's offsets: SplitMix64(seed).below(blocks), one per request.
    constexpr std::uint64_t kBlock = 8192;
    std::vector<bool> picked(kImageBytes / kBlock);
    guest::SplitMix64 random(7);
    for (int i = 0; i < 20; ++i)
        picked[random.below(picked.size())] = true;
    const auto bytes = image.read_all();
    const auto pattern = pattern_bytes(kImageBytes);
    for (std::size_t block = 0; block < picked.size(); ++block) {
        INFO("block " << block << (picked[block] ? " (written)" : " (not written)"));
        const auto* got = bytes.data() + block * kBlock;
        if (picked[block])
            CHECK(std::memcmp(got, pattern.data() + block * kBlock, kBlock) == 0);
        else
            CHECK(std::all_of(got, got + kBlock, [](std::uint8_t b) { return b == 0xa5; }));
    }
}

TEST_CASE("blk: the data round-trips and figures come back on every I/O path (kick by exit or ioeventfd, "
          "interrupt by ioctl or irqfd, device work on the vCPU or an I/O thread)",
          "[kvm][guest][blk][iopath]") {
    struct Path {
        IoNotify notify;
        IoIrq irq;
        bool thread;
    };
    for (const Path path :
         {Path{IoNotify::Exit, IoIrq::Userspace, false}, Path{IoNotify::Exit, IoIrq::Irqfd, false},
          Path{IoNotify::Exit, IoIrq::Userspace, true}, Path{IoNotify::Ioeventfd, IoIrq::Irqfd, true}}) {
        DYNAMIC_SECTION("io-notify " << to_string(path.notify) << ", io-irq " << to_string(path.irq)
                                     << ", io-thread " << (path.thread ? "on" : "off")) {
            Image image(kImageBytes);
            const DiskConfig disk{.path = image.path(), .engine = virtio::IoEngineKind::IoUring};
            auto config = blk_config("blk mode=write bs=4k qd=4", {disk});
            config.io_notify = path.notify;
            config.io_irq = path.irq;
            config.io_thread = path.thread;
            auto written = boot(config);
            CHECK(written.report.exit_status == 0);
            check_figures(written.report, 128);
            CHECK(value_of(written.report, "interrupts") > 0);
            CHECK(sectors_off_pattern(image.read_all(), kImageBytes / 512) == 0);

            config.guest_cmdline = "blk mode=randread bs=4k qd=4 ops=64 verify=on";
            auto read = boot(config);
            CHECK(read.report.exit_status == 0);
            check_figures(read.report, 64);
            CHECK(value_of(read.report, "mismatched_sectors") == 0);
            CHECK(value_of(read.report, "io_errors") == 0);
        }
    }
}

TEST_CASE("blk: wait=poll takes no interrupts, wait=irq one or more, both report figures",
          "[kvm][guest][blk]") {
    Image image(kImageBytes);
    const DiskConfig disk{.path = image.path()};
    auto polled = boot(blk_config("blk mode=randread bs=4k qd=2 ops=32 wait=poll", {disk}));
    CHECK(polled.report.exit_status == 0);
    check_figures(polled.report, 32);
    CHECK(value_of(polled.report, "interrupts") == 0);

    auto interrupted = boot(blk_config("blk mode=read bs=4k qd=1 ops=32 wait=irq", {disk}));
    CHECK(interrupted.report.exit_status == 0);
    check_figures(interrupted.report, 32);
    CHECK(value_of(interrupted.report, "interrupts") >= 1);
}

TEST_CASE("blk: with EVENT_IDX the data still round-trips and kicks stay within one per request",
          "[kvm][guest][blk]") {
    for (auto engine : {virtio::IoEngineKind::Sync, virtio::IoEngineKind::IoUring}) {
        DYNAMIC_SECTION("engine " << virtio::to_string(engine)) {
            Image image(kImageBytes);
            const DiskConfig disk{.path = image.path(), .engine = engine};
            auto written = boot(blk_config("blk mode=write bs=4k qd=4 event_idx=on", {disk}));
            CHECK(written.report.exit_status == 0);
            CHECK_THAT(written.console, Catch::Contains("wait=irq, event_idx"));
            check_figures(written.report, 128);
            CHECK(value_of(written.report, "kicks") >= 1);
            CHECK(value_of(written.report, "kicks") <= 128);
            CHECK(value_of(written.report, "interrupts") >= 1);
            CHECK(sectors_off_pattern(image.read_all(), kImageBytes / 512) == 0);

            auto read =
                boot(blk_config("blk mode=randread bs=4k qd=4 ops=64 verify=on event_idx=on", {disk}));
            CHECK(read.report.exit_status == 0);
            check_figures(read.report, 64);
            CHECK(value_of(read.report, "mismatched_sectors") == 0);
        }
    }
}

TEST_CASE("blk: disk=1 drives the second PCI function and leaves the first alone", "[kvm][guest][blk]") {
    Image first(kImageBytes);
    Image second(kImageBytes);
    const auto untouched = first.read_all();
    auto run = boot(blk_config("blk mode=write bs=8k qd=2 disk=1",
                               {DiskConfig{.path = first.path()}, DiskConfig{.path = second.path()}}));
    CHECK(run.report.exit_status == 0);
    CHECK_THAT(run.console, Catch::Contains("virtio-blk 00:02.0"));
    CHECK(first.read_all() == untouched);
    CHECK(sectors_off_pattern(second.read_all(), kImageBytes / 512) == 0);
}

TEST_CASE("blk: no disk, a disk number beyond the disks and bad options are one clear line each",
          "[kvm][guest][blk]") {
    auto none = boot(blk_config("blk", {}));
    CHECK(none.report.exit_status == 64);
    CHECK_THAT(none.console,
               Catch::Contains("blk: not measured: no virtio device 1af4:1042 number 0 on PCI bus 0"));

    Image image(kImageBytes);
    auto beyond = boot(blk_config("blk disk=1", {DiskConfig{.path = image.path()}}));
    CHECK(beyond.report.exit_status == 64);
    CHECK_THAT(beyond.console, Catch::Contains("number 1 on PCI bus 0 (1 found"));

    auto bad = boot(blk_config("blk mode=sideways", {DiskConfig{.path = image.path()}}));
    CHECK(bad.report.exit_status == 64);
    CHECK_THAT(bad.console, Catch::Contains("error: blk: mode must be read, write, randread or randwrite"));

    auto too_deep = boot(blk_config("blk qd=65", {DiskConfig{.path = image.path()}}));
    CHECK(too_deep.report.exit_status == 64);
    CHECK_THAT(too_deep.console, Catch::Contains("error: blk: qd must be 1..64"));
}
