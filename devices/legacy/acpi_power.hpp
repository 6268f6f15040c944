// The registers a hardware-reduced ACPI platform powers off and reboots through (ACPI 6.5, 4.8.3.7 sleep
// control/status registers and 4.8.3.6 reset register), as the FADT of arch/x86/acpi.hpp describes them.
// Insert it into the PIO bus at x86::acpi::kSleepControlPort with size kRegisterCount:
//
//   offset 0  SLEEP_CONTROL_REG  write: bits 4:2 SLP_TYP, bit 5 SLP_EN; reads 0
//   offset 1  SLEEP_STATUS_REG   bit 7 WAK_STS; writing 1 to it clears it
//   offset 2  RESET_REG          writing the reset value reboots; reads 0
//
// What the guest can ask for:
//   - SLP_EN with SLP_TYP = the \_S5_ value: power off. The device asks `control` to stop the VM with
//     status 0 and reason "the guest powered off (ACPI S5)", and returns ExitAction::Stop.
//   - SLP_EN with any other SLP_TYP (sleep states S1-S4, which vmmlab does not offer in its DSDT): the
//     machine wakes at once: WAK_STS is set so the guest's "wait for wake" loop ends; ExitAction::Resume.
//   - the reset value on RESET_REG: reboot. vmmlab does not restart a guest: `control` stops the VM
//     with status 0 and reason "the guest rebooted (ACPI reset register)"; ExitAction::Reset, which the
//     vCPU loop treats as the end of the run as well. Other values written there are ignored.
// Writes without SLP_EN (Linux's wake preparation writes SLP_TYP of S0) change nothing.
//
// Access widths: each register is one byte; a wider access uses its first byte (reads fill the rest
// with 0). Thread-safe (any vCPU may write).
#pragma once

#include <atomic>
#include <cstdint>

#include "arch/x86/acpi.hpp"
#include "bus/device.hpp"
#include "cpu/run_control.hpp"

namespace vmmlab::devices {

class AcpiPower final : public Device {
public:
    static constexpr std::uint64_t kRegisterCount = 3;
    static constexpr std::uint64_t kSleepControl = 0, kSleepStatus = 1, kReset = 2; // offsets
    static constexpr std::uint8_t kSleepEnable = 0x20;                              // SLP_EN
    static constexpr std::uint8_t kSleepTypeMask = 0x1c;                            // SLP_TYP, bits 4:2
    static constexpr std::uint8_t kWakeStatus = 0x80;                               // WAK_STS

    explicit AcpiPower(RunControl& control, std::uint8_t s5_sleep_type = x86::acpi::kS5SleepType,
                       std::uint8_t reset_value = x86::acpi::kResetValue)
        : control_(control), s5_sleep_type_(s5_sleep_type), reset_value_(reset_value) {}

    std::string_view name() const override { return "acpi-power"; }
    ExitAction read(std::uint64_t offset, std::span<std::byte> data) override;
    ExitAction write(std::uint64_t offset, std::span<const std::byte> data) override;

private:
    RunControl& control_;
    const std::uint8_t s5_sleep_type_;
    const std::uint8_t reset_value_;
    std::atomic<bool> wake_status_{false};
};

} // namespace vmmlab::devices
