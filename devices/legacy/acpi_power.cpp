#include "devices/legacy/acpi_power.hpp"

#include <algorithm>

#include <fmt/format.h>

namespace vmmlab::devices {

ExitAction AcpiPower::read(std::uint64_t offset, std::span<std::byte> data) {
    std::ranges::fill(data, std::byte{0});
    if (!data.empty() && offset == kSleepStatus && wake_status_.load(std::memory_order_acquire))
        data[0] = std::byte{kWakeStatus};
    return ExitAction::Resume;
}

ExitAction AcpiPower::write(std::uint64_t offset, std::span<const std::byte> data) {
    if (data.empty()) return ExitAction::Resume;
    const auto value = std::to_integer<std::uint8_t>(data[0]);
    switch (offset) {
    case kSleepControl: {
        if ((value & kSleepEnable) == 0) return ExitAction::Resume;
        const unsigned sleep_type = (value & kSleepTypeMask) >> 2;
        if (sleep_type == s5_sleep_type_) {
            control_.request_stop(0, "the guest powered off (ACPI S5)");
            return ExitAction::Stop;
        }
        // A sleep state vmmlab does not implement: wake up at once.
        wake_status_.store(true, std::memory_order_release);
        return ExitAction::Resume;
    }
    case kSleepStatus:
        if ((value & kWakeStatus) != 0) wake_status_.store(false, std::memory_order_release);
        return ExitAction::Resume;
    case kReset:
        if (value != reset_value_) return ExitAction::Resume;
        control_.request_stop(0, "the guest rebooted (ACPI reset register)");
        return ExitAction::Reset;
    default:
        return ExitAction::Resume;
    }
}

} // namespace vmmlab::devices
