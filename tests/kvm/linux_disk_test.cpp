// virtio-blk under the stock Debian kernel: virtio_pci and virtio_blk find every disk, the guest reads the
// bytes the test wrote into each image, its writes land byte-exact in the host's images with every engine,
// with and without O_DIRECT, a read-only disk refuses writes, and a flush the guest saw acknowledged
// survives kill -9 of the monitor.
//
// From the environment (tools/test exports them):
//   VMMLAB_TEST_KERNEL       Debian's vmlinuz (tools/debian-kernel --vmlinuz)
//   VMMLAB_TEST_DISK_INITRD  tools/mkinitramfs --boot-marker --modules debian --module virtio_pci
//                            --module virtio_blk --script tests/kvm/linux_disk_checks.sh
// A missing variable fails the test. The guest script (linux_disk_checks.sh) says what the guest does.
#include <catch2/catch.hpp>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/read_file.hpp"
#include "base/unique_fd.hpp"
#include "linux_run.hpp"
#include "sha256.hpp"

using namespace vmmlab;
using namespace vmmlab::test;

namespace {
constexpr auto kRunTimeout = std::chrono::seconds(240); // nested boots take 20-60 s; a wedged one must fail
constexpr std::size_t kImageBytes = 1 << 20;            // 2048 sectors
constexpr std::size_t kBlock = 4096;

// The guest's data, as linux_disk_checks.sh's `pattern TAG BYTES` makes it: lines "TAG NNNNNN\n" counting
// from 000000, cut to `bytes`.
std::vector<std::byte> guest_pattern(const std::string& tag, std::size_t bytes) {
    std::string text;
    for (int line = 0; text.size() < bytes; ++line)
        text += fmt::format("{} {:06d}\n", tag, line);
    text.resize(bytes);
    std::vector<std::byte> out(bytes);
    std::memcpy(out.data(), text.data(), bytes);
    return out;
}

std::string serial_of(std::size_t disk) {
    return fmt::format("vmmlab-disk{}", disk);
}

// Where the guest script's writes land on writable disk `disk`.
struct GuestWrite {
    std::size_t offset;
    std::vector<std::byte> bytes;
};
GuestWrite write_a(std::size_t disk) { // 4 x 4 KiB at block 16 + i, O_DIRECT, conv=fsync
    return {(16 + disk) * kBlock, guest_pattern(serial_of(disk) + "-a", 4 * kBlock)};
}
GuestWrite write_b(std::size_t disk) { // a 70001 + 13 i byte file at byte 300007 + 1000 i, then sync
    return {300007 + 1000 * disk, guest_pattern(serial_of(disk) + "-b", 70001 + 13 * disk)};
}
void overlay(std::vector<std::byte>& image, const GuestWrite& write) {
    REQUIRE(write.offset + write.bytes.size() <= image.size());
    std::copy(write.bytes.begin(), write.bytes.end(),
              image.begin() + static_cast<std::ptrdiff_t>(write.offset));
}

// A folder whose file system accepts O_DIRECT: the temporary folder, or (tmpfs before Linux 6.6 refuses it
// with EINVAL, as in tools/kvm-sandbox) the working directory.
std::filesystem::path direct_capable_directory() {
    for (const auto& folder : {std::filesystem::temp_directory_path(), std::filesystem::current_path()}) {
        const auto probe = folder / fmt::format("vmmlab-odirect-probe-{}", ::getpid());
        UniqueFd fd(::open(probe.c_str(), O_RDWR | O_CREAT | O_DIRECT | O_CLOEXEC, 0600));
        std::filesystem::remove(probe);
        if (fd.get() >= 0) return folder;
    }
    FAIL("no folder here accepts O_DIRECT (neither the temporary folder nor the working directory)");
    return {};
}

struct TestImages {
    std::filesystem::path folder;
    std::vector<std::filesystem::path> paths;
    std::vector<std::vector<std::byte>> written; // what the test put into each image

    // `count` images of kImageBytes random bytes each, different per image.
    explicit TestImages(std::size_t count) {
        std::string name = (direct_capable_directory() / "vmmlab-disk-test.XXXXXX").string();
        REQUIRE(::mkdtemp(name.data()) != nullptr);
        folder = name;
        const auto seed = std::random_device{}();
        INFO("random seed " << seed);
        std::mt19937_64 random(seed);
        for (std::size_t i = 0; i < count; ++i) {
            std::vector<std::byte> bytes(kImageBytes);
            for (std::size_t at = 0; at < bytes.size(); at += 8) {
                const std::uint64_t word = random();
                std::memcpy(bytes.data() + at, &word, 8);
            }
            paths.push_back(folder / fmt::format("disk{}.img", i));
            std::ofstream out(paths.back(), std::ios::binary);
            out.write(reinterpret_cast<const char*>(bytes.data()),
                      static_cast<std::streamsize>(bytes.size()));
            out.close();
            REQUIRE(out.good());
            written.push_back(std::move(bytes));
        }
    }
    ~TestImages() {
        std::error_code ignored;
        std::filesystem::remove_all(folder, ignored);
    }
    TestImages(const TestImages&) = delete;
    TestImages& operator=(const TestImages&) = delete;
};

// The image on the host equals `expected` byte for byte; a difference names its first offset.
void check_image(const std::filesystem::path& path, const std::vector<std::byte>& expected) {
    auto actual = read_binary_file(path.string());
    REQUIRE(actual.has_value());
    INFO(path.string());
    REQUIRE(actual->size() == expected.size());
    std::size_t first = 0;
    while (first < expected.size() && (*actual)[first] == expected[first])
        ++first;
    INFO("first difference at byte " << first << " (of " << expected.size() << ")");
    CHECK(first == expected.size());
}
} // namespace

TEST_CASE("Linux reads the test's bytes from six disks (sync, threads, io_uring, each with and without "
          "O_DIRECT), its writes land byte-exact, and a read-only disk refuses writes",
          "[kvm][linux][linux-disk]") {
    struct Disk {
        virtio::IoEngineKind engine;
        bool direct;
        bool readonly;
    };
    using enum virtio::IoEngineKind;
    const std::vector<Disk> disks = {{Sync, false, false},   {Sync, true, false},     {Threads, false, false},
                                     {Threads, true, false}, {IoUring, false, false}, {IoUring, true, false},
                                     {IoUring, true, true}};
    TestImages images(disks.size());
    auto config = linux_config("VMMLAB_TEST_DISK_INITRD", 1, 256ULL << 20);
    for (std::size_t i = 0; i < disks.size(); ++i)
        config.disks.push_back({.path = images.paths[i].string(),
                                .readonly = disks[i].readonly,
                                .direct = disks[i].direct,
                                .engine = disks[i].engine});

    const auto run = boot_linux(config, kRunTimeout);
    CHECK(run.report.exit_status == 0);
    CHECK(run.report.stop_reason == "the guest powered off (ACPI S5)");
    CHECK_THAT(run.console, Catch::Contains("vmmlab-init: modules: ") && Catch::Contains("virtio_blk"));
    CHECK_THAT(run.console, !Catch::Contains("insmod virtio"));
    REQUIRE(check_value(run, "disk-checks-done").empty());
    CHECK(check_value(run, "disks") == std::to_string(disks.size()));
    CHECK(run.report.unclaimed_mmio == 0);

    std::set<std::string> devices;
    for (std::size_t i = 0; i < disks.size(); ++i) {
        const std::string serial = serial_of(i);
        INFO(serial << ": engine " << static_cast<int>(disks[i].engine)
                    << (disks[i].direct ? ", O_DIRECT" : "") << (disks[i].readonly ? ", read-only" : ""));
        devices.insert(check_value(run, "dev." + serial));
        CHECK(check_value(run, "bytes." + serial) == std::to_string(kImageBytes));
        // What the guest read first is what the test wrote.
        CHECK(check_value(run, "read-sha256." + serial) == sha256_hex(images.written[i]));

        std::vector<std::byte> expected = images.written[i];
        if (disks[i].readonly) {
            CHECK(check_value(run, "ro." + serial) == "1");
            CHECK(check_value(run, "ro-write." + serial) != "0"); // dd failed
        } else {
            CHECK(check_value(run, "ro." + serial) == "0");
            CHECK(check_value(run, "write-a." + serial) == "0");
            CHECK(check_value(run, "write-b." + serial) == "0");
            overlay(expected, write_a(i));
            overlay(expected, write_b(i));
        }
        // The guest read its writes back from the device (page cache dropped), and the host's image holds
        // exactly the test's bytes with the guest's where it wrote (the read-only image: unchanged).
        CHECK(check_value(run, "final-sha256." + serial) == sha256_hex(expected));
        check_image(images.paths[i], expected);
    }
    CHECK(devices.size() == disks.size()); // one /dev/vdX per disk
}

TEST_CASE("a guest write whose flush was acknowledged is in the image after kill -9 of vmmlab run "
          "(sync, threads and io_uring with O_DIRECT, tuned I/O path)",
          "[kvm][linux][linux-disk]") {
    const std::vector<std::string> engines = {"engine=sync", "engine=threads", "engine=uring,direct=on"};
    TestImages images(engines.size());
    auto arguments = vmmlab_run_linux("VMMLAB_TEST_DISK_INITRD", "vmmlab_check.mode=durability", kRunTimeout);
    // The tuned I/O path (the first test runs the untuned one): the writes and the flush complete on the
    // devices' I/O threads, kicked by ioeventfd, and interrupt through irqfd.
    for (const char* flag : {"--io-notify", "ioeventfd", "--io-irq", "irqfd", "--io-thread", "on"})
        arguments.push_back(flag);
    for (std::size_t i = 0; i < engines.size(); ++i) {
        arguments.push_back("--disk");
        arguments.push_back(fmt::format("path={},{}", images.paths[i].string(), engines[i]));
    }

    auto [child, console_pipe] = spawn_with_console(arguments);

    // The console until the guest says its writes were flushed; then kill -9 at once.
    std::string console;
    bool written = false;
    const auto deadline = std::chrono::steady_clock::now() + kRunTimeout;
    while (!written && std::chrono::steady_clock::now() < deadline) {
        pollfd poll_fd{console_pipe.get(), POLLIN, 0};
        if (::poll(&poll_fd, 1, 1000) <= 0) continue;
        char buffer[4096];
        const ssize_t got = ::read(console_pipe.get(), buffer, sizeof buffer);
        if (got <= 0) break; // vmmlab ended before the marker
        console.append(buffer, static_cast<std::size_t>(got));
        written = console.find("vmmlab-check: durable-written") != std::string::npos;
    }
    ::kill(child, SIGKILL);
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    std::printf("--- guest console (vmmlab run, killed)\n%s\n---\n", console.c_str());
    std::fflush(stdout);

    REQUIRE(written);
    CHECK(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == SIGKILL); // killed, not ended: nothing ran after the marker
    const auto checks = parse_checks(console);
    for (std::size_t i = 0; i < engines.size(); ++i) {
        INFO(engines[i]);
        CHECK(check_value(checks, "durable-write." + serial_of(i)) == "0");
        std::vector<std::byte> expected = images.written[i];
        overlay(expected, write_a(i));
        check_image(images.paths[i], expected);
    }
}
