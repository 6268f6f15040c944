// The stock Debian kernel on a real /dev/kvm: boot to init with one and two vCPUs, RAM, time, the serial
// console in both directions, reboot and power-off, and kernels that cannot boot.
//
// The kernel and initramfs images come from the environment (tools/test exports them):
//   VMMLAB_TEST_KERNEL        Debian's vmlinuz (tools/debian-kernel --vmlinuz)
//   VMMLAB_TEST_INITRD        tools/mkinitramfs --boot-marker --script tests/kvm/linux_guest_checks.sh
//   VMMLAB_TEST_SHELL_INITRD  tools/mkinitramfs --boot-marker (an interactive shell on the console)
// A missing variable fails the test: a kvm run that did not boot Linux must not pass. Booting and reading
// the guest script's "vmmlab-check:" lines: linux_run.hpp.
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <unistd.h>

#include "base/read_file.hpp"
#include "base/unique_fd.hpp"
#include "config/vm_config.hpp"
#include "linux_run.hpp"
#include "vm/vm.hpp"

using namespace vmmlab;
using namespace vmmlab::test;

namespace {
constexpr auto kBootTimeout = std::chrono::seconds(120); // nested boots take 7-20 s; a wedged one must fail
constexpr std::uint64_t kMiB = 1ULL << 20;

// A guest clock reading (seconds since 1970) taken during the run agrees with the host's within a minute.
void check_clock(const LinuxRun& run, const std::string& key) {
    const double guest = check_number(run, key);
    INFO(key << " " << guest << ", host during the run " << run.host_start << " .. " << run.host_end);
    CHECK(guest >= run.host_start - 60);
    CHECK(guest <= run.host_end + 60);
}

// Writes `bytes` to a new file in a fresh temporary folder and returns its path.
std::filesystem::path temporary_file(const std::string& name, std::span<const std::byte> bytes) {
    char folder[] = "/tmp/vmmlab-linux-test.XXXXXX";
    REQUIRE(::mkdtemp(folder) != nullptr);
    const auto path = std::filesystem::path(folder) / name;
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    REQUIRE(out.good());
    return path;
}
} // namespace

TEST_CASE("Linux boots to init on 1 vCPU with 3.5 GiB of usable RAM and the host's time, then powers off",
          "[kvm][linux]") {
    constexpr std::uint64_t memory = 3584 * kMiB; // 3 GiB below the PCI hole, 512 MiB above 4 GiB
    auto run = boot_linux(linux_config("VMMLAB_TEST_INITRD", 1, memory), kBootTimeout);
    CHECK_THAT(run.console, Catch::Contains("vmmlab-init: reached"));
    CHECK(run.report.exit_status == 0);
    CHECK(run.report.stop_reason == "the guest powered off (ACPI S5)");
    CHECK(check_value(run, "powering-off").empty());
    // init wrote the boot marker through /dev/port: `vmmlab run --boot-time` shows it for Linux too.
    CHECK(run.report.init_marker_us > run.report.first_run_us);
    CHECK(run.report.end_us > run.report.init_marker_us);

    CHECK(check_number(run, "cpus") == 1);
    // e820 gave the kernel all of RAM but the first page and [0x9fc00, 1 MiB) (EBDA, ACPI, MP table).
    const double ram = check_number(run, "system-ram-bytes");
    CHECK(ram <= static_cast<double>(memory));
    CHECK(ram >= static_cast<double>(memory - kMiB));
    // MemTotal is that less what the kernel keeps for itself: its image, the struct pages (1.6% of RAM) and
    // early allocations, 5% for Debian's 6.1 at 3.5 GiB.
    const double memtotal = check_number(run, "memtotal-kib") * 1024;
    CHECK(memtotal <= ram);
    CHECK(memtotal >= 0.9 * static_cast<double>(memory));

    check_clock(run, "date-epoch"); // kvmclock's wall clock
    check_clock(run, "rtc-epoch");  // the CMOS RTC, read by the rtc_cmos driver
    CHECK(check_value(run, "clocksource") == "kvm-clock");
    CHECK(run.checks.contains("dmesg-end"));

    // The platform answered every probe: the DSDT's COM1, keyboard controller and RTC gave their drivers
    // interrupts, the PCI host bridge a config mechanism, and no port or MMIO access went unclaimed.
    CHECK_THAT(run.console, Catch::Contains("pnp: PnP ACPI: found 3 devices"));
    CHECK_THAT(run.console, Catch::Contains("rtc_cmos 00:02: registered as rtc0"));
    CHECK_THAT(run.console, Catch::Contains("serio: i8042 KBD port at 0x60,0x64"));
    CHECK_THAT(run.console, Catch::Contains("PCI: Using configuration type 1 for base access"));
    CHECK_THAT(run.console, !Catch::Contains("failed with error"));
    CHECK_THAT(run.console, !Catch::Contains("PCI: Fatal"));
    CHECK_THAT(run.console, !Catch::Contains("Kernel panic"));
    CHECK(run.report.unclaimed_pio == 0);
    CHECK(run.report.unclaimed_mmio == 0);
}

TEST_CASE("Linux starts a second vCPU through INIT/SIPI and reboots through the ACPI reset register",
          "[kvm][linux]") {
    auto run = boot_linux(linux_config("VMMLAB_TEST_INITRD", 2, 512 * kMiB, "vmmlab_check.end=reboot"),
                          kBootTimeout);
    CHECK_THAT(run.console, Catch::Contains("vmmlab-init: reached"));
    CHECK(check_number(run, "cpus") == 2);
    CHECK(check_value(run, "rebooting").empty());
    CHECK(run.report.exit_status == 0);
    CHECK(run.report.stop_reason == "the guest rebooted (ACPI reset register)");
    REQUIRE(run.report.exit_counts.size() == 2);
}

TEST_CASE("a line written to the serial console before the shell starts runs in it, and without reboot= "
          "the BIOS reset vector resets through the i8042",
          "[kvm][linux]") {
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    UniqueFd read_end(fds[0]), write_end(fds[1]);
    // Written before the VM starts: the UART must hold it until Linux has opened the port (DTR and RTS up),
    // past the FIFO reset of opening it. The shell expands $((6 * 7)): "typed-42" appears only if the line
    // ran, not from the tty's echo.
    const std::string typed = "echo vmmlab-typed-$((6 * 7))\nreboot -f\n";
    REQUIRE(::write(write_end.get(), typed.data(), typed.size()) == static_cast<ssize_t>(typed.size()));
    write_end = UniqueFd{};

    auto config = linux_config("VMMLAB_TEST_SHELL_INITRD", 1, 256 * kMiB);
    config.kernel_cmdline = "console=ttyS0 panic=-1"; // Linux 6.1 then tries EFI, then the BIOS
    auto run = boot_linux(config, kBootTimeout, read_end.get());
    CHECK_THAT(run.console, Catch::Contains("vmmlab-init: starting a shell"));
    CHECK_THAT(run.console, Catch::Contains("vmmlab-typed-42"));
    CHECK(run.report.exit_status == 0);
    CHECK(run.report.stop_reason == "the guest rebooted (i8042 reset line)");
}

TEST_CASE("a kernel panic ends the run with status 70 and says so, though panic=-1 reboots", "[kvm][linux]") {
    auto config = linux_config("VMMLAB_TEST_SHELL_INITRD", 1, 256 * kMiB, "rdinit=/no/such/init");
    auto run = boot_linux(config, kBootTimeout);
    CHECK(run.report.exit_status == 70);
    CHECK_THAT(run.report.stop_reason,
               Catch::StartsWith("the guest kernel panicked (\"") &&
                   Catch::Contains("Kernel panic - not syncing: VFS: Unable to mount root fs") &&
                   Catch::EndsWith("then: the guest rebooted (ACPI reset register)"));
}

TEST_CASE("a truncated, a garbage and a missing kernel are one clear line and nothing runs", "[kvm][linux]") {
    auto kernel = read_binary_file(required_env("VMMLAB_TEST_KERNEL"));
    REQUIRE(kernel.has_value());
    auto config = linux_config("VMMLAB_TEST_INITRD", 1, 256 * kMiB);

    auto error_of = [](const VmConfig& bad) {
        try {
            Vm vm(bad, {});
        } catch (const GuestImageError& error) {
            const std::string message = error.what();
            CHECK(message.find('\n') == std::string::npos);
            return message;
        }
        FAIL("the VM was created from kernel " << bad.kernel);
        return std::string{};
    };

    const std::span<const std::byte> half(kernel->data(), kernel->size() / 2);
    config.kernel = temporary_file("truncated-vmlinuz", half).string();
    auto message = error_of(config);
    CHECK_THAT(message, Catch::StartsWith("kernel " + config.kernel + ": truncated bzImage"));

    std::vector<std::byte> garbage(1 << 20);
    for (std::size_t i = 0; i < garbage.size(); ++i)
        garbage[i] = static_cast<std::byte>((i * 2654435761U) >> 13);
    config.kernel = temporary_file("garbage-vmlinuz", garbage).string();
    message = error_of(config);
    CHECK_THAT(message, Catch::StartsWith("kernel " + config.kernel + ": not a bzImage"));

    config.kernel = "/nonexistent/vmlinuz";
    CHECK(error_of(config) == "kernel /nonexistent/vmlinuz: No such file or directory");
    config.kernel = required_env("VMMLAB_TEST_KERNEL");
    config.initrd = "/nonexistent/initrd.img";
    CHECK(error_of(config) == "initrd /nonexistent/initrd.img: No such file or directory");
}
