// The virtio I/O-path knobs on a real /dev/kvm: Debian's Linux reads a virtio-blk disk (the md5 of every
// byte, and a direct-I/O dd) with queue kicks by MMIO exit or by ioeventfd, interrupts by KVM_SIGNAL_MSI
// or irqfd, and the device's work on the vCPU thread or its own I/O thread; the exit statistics show
// where the kicks went (the notify region is its own exit site, "virtio-blk0-notify").
//
// From the environment (tools/test exports them):
//   VMMLAB_TEST_KERNEL     Debian's vmlinuz (tools/debian-kernel --vmlinuz)
//   VMMLAB_TEST_IO_INITRD  tools/mkinitramfs --modules debian --module virtio_pci --module virtio_blk
//                          --script tests/kvm/io_path_check.sh
// A missing variable fails the test.
#include <array>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>

#include <unistd.h>

#include "config/vm_config.hpp"
#include "vm/vm.hpp"

using namespace vmmlab;

namespace {
constexpr auto kBootTimeout = std::chrono::seconds(150);
constexpr std::size_t kImageBytes = 8u << 20;
constexpr unsigned kDdBlocks = 512;

std::string required_env(const char* name) {
    const char* value = std::getenv(name);
    INFO(name << " is not set: run tools/test, which builds the images and exports it (see the comment at "
                 "the top of tests/kvm/io_path_test.cpp)");
    REQUIRE(value != nullptr);
    REQUIRE(*value != '\0');
    return value;
}

// An image of pseudo-random bytes in a fresh temporary folder, and its md5 (by the host's md5sum).
struct Image {
    std::filesystem::path path;
    std::string md5;
};

Image make_image() {
    char folder[] = "/tmp/vmmlab-io-path.XXXXXX";
    REQUIRE(::mkdtemp(folder) != nullptr);
    Image image{std::filesystem::path(folder) / "disk.raw", {}};
    std::mt19937_64 random(20261201);
    std::vector<std::uint64_t> words(kImageBytes / 8);
    for (auto& word : words)
        word = random();
    std::ofstream out(image.path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(words.data()), static_cast<std::streamsize>(kImageBytes));
    out.close();
    REQUIRE(out.good());
    const std::string command = "md5sum " + image.path.string();
    FILE* pipe = ::popen(command.c_str(), "r");
    REQUIRE(pipe != nullptr);
    std::array<char, 128> line{};
    const bool got = std::fgets(line.data(), line.size(), pipe) != nullptr;
    ::pclose(pipe);
    REQUIRE(got);
    image.md5 = std::string(line.data()).substr(0, 32);
    REQUIRE(image.md5.size() == 32);
    return image;
}

struct IoRun {
    RunReport report;
    std::string console;
    std::map<std::string, std::string> checks;
    std::uint64_t notify_writes = 0; // MMIO write exits to the notify region that reached userspace
    std::uint64_t bar_writes = 0;    // MMIO write exits to the rest of BAR0 (common config, MSI-X table)
};

IoRun boot_with_disk(const Image& image, IoNotify notify, IoIrq irq, bool io_thread) {
    VmConfig config;
    config.cpus = 1;
    config.memory = 256ULL << 20;
    config.cpu_model = x86::CpuModel::HostPassthrough;
    config.kernel = required_env("VMMLAB_TEST_KERNEL");
    config.initrd = required_env("VMMLAB_TEST_IO_INITRD");
    config.kernel_cmdline += " vmmlab_io.count=" + std::to_string(kDdBlocks);
    config.disks.push_back({.path = image.path.string(), .readonly = true});
    config.io_notify = notify;
    config.io_irq = irq;
    config.io_thread = io_thread;
    REQUIRE(validate(config, false).has_value());

    IoRun run;
    ConsoleOptions console;
    console.output = [&run](std::span<const std::byte> bytes) {
        run.console.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    };
    TraceOptions trace;
    trace.counters = true;
    Vm vm(config, {}, std::move(console), std::move(trace));
    run.report = vm.run(kBootTimeout);
    std::printf("--- guest console (%s)\n%s\n--- %s, status %d\n", describe(config).c_str(),
                run.console.c_str(), run.report.stop_reason.c_str(), run.report.exit_status);
    std::istringstream lines(run.console);
    for (std::string line; std::getline(lines, line);) {
        while (!line.empty() && line.back() == '\r')
            line.pop_back();
        constexpr std::string_view prefix = "vmmlab-check: ";
        if (!line.starts_with(prefix)) continue;
        line.erase(0, prefix.size());
        const auto space = line.find(' ');
        run.checks[line.substr(0, space)] = space == std::string::npos ? "" : line.substr(space + 1);
    }
    REQUIRE(run.report.sites != nullptr);
    REQUIRE(run.report.exit_stats.has_value());
    bool found_notify = false, found_bar = false;
    for (std::size_t id = 0; id < run.report.sites->size(); ++id) {
        const auto& site = run.report.sites->site(static_cast<SiteId>(id));
        const auto writes = run.report.exit_stats->by_site(static_cast<SiteId>(id), true).count();
        if (site.name == "virtio-blk0-notify") {
            found_notify = true;
            run.notify_writes = writes;
        } else if (site.name == "virtio-blk0") {
            found_bar = true;
            run.bar_writes = writes;
        }
    }
    CHECK(found_notify);
    CHECK(found_bar);
    std::printf("io-path %s/%s/%s: notify write exits %llu, other BAR0 write exits %llu, dd of %u x 4 KiB "
                "direct: %s s, MSI-X interrupts %s\n",
                to_string(notify).c_str(), to_string(irq).c_str(), io_thread ? "on" : "off",
                static_cast<unsigned long long>(run.notify_writes),
                static_cast<unsigned long long>(run.bar_writes), kDdBlocks, run.checks["dd-seconds"].c_str(),
                run.checks["virtio-msi-interrupts"].c_str());
    return run;
}

void check_disk_read(const IoRun& run, const Image& image) {
    CHECK(run.report.exit_status == 0);
    CHECK(run.checks.count("vda") == 0); // "vda missing"
    REQUIRE(run.checks.count("vda-md5") == 1);
    CHECK(run.checks.at("vda-bytes") == std::to_string(kImageBytes));
    CHECK(run.checks.at("vda-md5") == image.md5);
    CHECK(run.checks.at("dd-blocks") == std::to_string(kDdBlocks));
    REQUIRE(run.checks.count("virtio-msi-interrupts") == 1);
    CHECK(std::stoull(run.checks.at("virtio-msi-interrupts")) >= kDdBlocks); // one per direct read at least
}
} // namespace

TEST_CASE("I/O path: untuned (exit, userspace, off): Linux reads the disk; kicks exit to userspace",
          "[kvm][linux][iopath]") {
    const Image image = make_image();
    const auto run = boot_with_disk(image, IoNotify::Exit, IoIrq::Userspace, false);
    check_disk_read(run, image);
    CHECK(run.notify_writes >= kDdBlocks); // every direct read kicked the queue through an MMIO exit
    std::filesystem::remove_all(image.path.parent_path());
}

TEST_CASE("I/O path: tuned (ioeventfd, irqfd, on): Linux reads the disk; no kick reaches userspace",
          "[kvm][linux][iopath]") {
    const Image image = make_image();
    const auto run = boot_with_disk(image, IoNotify::Ioeventfd, IoIrq::Irqfd, true);
    check_disk_read(run, image);
    CHECK(run.notify_writes == 0); // KVM signalled the ioeventfd instead
    CHECK(run.bar_writes > 0);     // the driver's set-up still exits (the site is counted)
    std::filesystem::remove_all(image.path.parent_path());
}

TEST_CASE("I/O path: mixed (exit, irqfd, on): kicks exit and wake the I/O thread; irqfd interrupts",
          "[kvm][linux][iopath]") {
    const Image image = make_image();
    const auto run = boot_with_disk(image, IoNotify::Exit, IoIrq::Irqfd, true);
    check_disk_read(run, image);
    CHECK(run.notify_writes >= kDdBlocks);
    std::filesystem::remove_all(image.path.parent_path());
}
