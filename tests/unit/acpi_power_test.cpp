#include <catch2/catch.hpp>
#include <cstdint>

#include "devices/legacy/acpi_power.hpp"

using namespace vmmlab;
using namespace vmmlab::devices;

namespace {
struct Fixture {
    RunControl control;
    AcpiPower power{control};

    std::uint8_t in(std::uint64_t offset) {
        std::byte value{0xee};
        CHECK(power.read(offset, std::span(&value, 1)) == ExitAction::Resume);
        return std::to_integer<std::uint8_t>(value);
    }
    ExitAction out(std::uint64_t offset, std::uint8_t value) {
        const std::byte byte{value};
        return power.write(offset, std::span(&byte, 1));
    }
};
} // namespace

TEST_CASE("acpi power: SLP_EN with the S5 sleep type powers off with status 0", "[linux][acpi-power]") {
    Fixture f;
    // What Linux's acpi_hw_extended_sleep writes: clear WAK_STS, then (5 << 2) | SLP_EN.
    CHECK(f.out(AcpiPower::kSleepStatus, 0x80) == ExitAction::Resume);
    CHECK_FALSE(f.control.stopping());
    CHECK(f.out(AcpiPower::kSleepControl, (5 << 2) | 0x20) == ExitAction::Stop);
    CHECK(f.control.stopping());
    CHECK(f.control.status() == 0);
    CHECK(f.control.reason() == "the guest powered off (ACPI S5)");
}

TEST_CASE("acpi power: writes without SLP_EN change nothing", "[linux][acpi-power]") {
    Fixture f;
    CHECK(f.out(AcpiPower::kSleepControl, 5 << 2) == ExitAction::Resume); // S5 type, no SLP_EN
    CHECK(f.out(AcpiPower::kSleepControl, 0) == ExitAction::Resume);      // S0 wake preparation
    CHECK_FALSE(f.control.stopping());
    CHECK(f.in(AcpiPower::kSleepControl) == 0);
    CHECK(f.in(AcpiPower::kSleepStatus) == 0);
}

TEST_CASE("acpi power: another sleep state wakes at once through WAK_STS", "[linux][acpi-power]") {
    Fixture f;
    CHECK(f.out(AcpiPower::kSleepControl, (3 << 2) | 0x20) == ExitAction::Resume); // S3
    CHECK_FALSE(f.control.stopping());
    CHECK(f.in(AcpiPower::kSleepStatus) == 0x80);
    CHECK(f.out(AcpiPower::kSleepStatus, 0x01) == ExitAction::Resume); // other bits: no effect
    CHECK(f.in(AcpiPower::kSleepStatus) == 0x80);
    CHECK(f.out(AcpiPower::kSleepStatus, 0x80) == ExitAction::Resume); // write 1 to clear
    CHECK(f.in(AcpiPower::kSleepStatus) == 0);
}

TEST_CASE("acpi power: the reset value on RESET_REG reboots with status 0", "[linux][acpi-power]") {
    Fixture f;
    CHECK(f.out(AcpiPower::kReset, 0x02) == ExitAction::Resume); // not the reset value
    CHECK_FALSE(f.control.stopping());
    CHECK(f.out(AcpiPower::kReset, x86::acpi::kResetValue) == ExitAction::Reset);
    CHECK(f.control.stopping());
    CHECK(f.control.status() == 0);
    CHECK(f.control.reason() == "the guest rebooted (ACPI reset register)");
    CHECK(f.in(AcpiPower::kReset) == 0);
}

TEST_CASE("acpi power: a configured sleep type and reset value are honoured, wide reads fill zeros",
          "[linux][acpi-power]") {
    RunControl control;
    AcpiPower power(control, 7, 0x0e);
    const std::byte s7{(7 << 2) | 0x20};
    CHECK(power.write(AcpiPower::kSleepControl, std::span(&s7, 1)) == ExitAction::Stop);
    RunControl other;
    AcpiPower power2(other, 7, 0x0e);
    const std::byte reset{0x0e};
    CHECK(power2.write(AcpiPower::kReset, std::span(&reset, 1)) == ExitAction::Reset);
    std::array<std::byte, 4> wide{};
    wide.fill(std::byte{0xff});
    CHECK(power2.read(AcpiPower::kSleepStatus, wide) == ExitAction::Resume);
    CHECK(wide == std::array<std::byte, 4>{});
}
