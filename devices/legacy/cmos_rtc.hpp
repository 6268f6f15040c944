// The PC's CMOS RTC (Motorola MC146818 as in every chipset): an index port and a data port over 128 bytes,
// the first 14 of which are the clock. The time registers show the host's clock (UTC) at the moment of
// the read, plus whatever offset the guest set; nothing ticks inside the device.
//
// Insert it into the PIO bus at kIndexPort (0x70) with size kRegisterCount (2):
//   offset 0 (0x70) write: bit 7 disables NMI (kept, see nmi_disabled()), bits 6:0 select the register;
//                   read: 0xff (the index register is write-only on the chipset)
//   offset 1 (0x71) read/write the selected register
//
// Registers:
//   0x00 seconds  0x02 minutes  0x04 hours  0x06 day of week (1 = Sunday)  0x07 day of month
//   0x08 month    0x09 year of century      0x32 century (FADT CENTURY points here)
//       BCD unless status B's DM bit (2) is set; hours in 24-hour form when B's bit 1 is set, else 1-12
//       with bit 7 = PM. Writing one of them moves the guest's clock (an offset from the host's clock):
//       at once, or when status B's SET bit (7) is cleared again if it was set while writing. The day of
//       week always follows from the date: writes to 0x06 are ignored. Out-of-range values (minute 61,
//       month 13) carry over into the next field as timegm() normalises them.
//   0x01 0x03 0x05 alarm seconds/minutes/hours: plain storage (no alarm fires)
//   0x0a status A: UIP (bit 7) always reads 0, so a guest never waits for an update; bits 6:0 as written,
//        0x26 initially (32.768 kHz time base, 1024 Hz rate)
//   0x0b status B: as written, 0x02 initially (24-hour, BCD, no interrupts). While SET (bit 7) is set the
//        clock the guest reads stands still
//   0x0c status C: reads 0 (no interrupt flags: the device raises no interrupts); writes ignored
//   0x0d status D: reads 0x80 (VRT: the battery is good); writes ignored
//   every other index: CMOS RAM, 0 initially, reads back what was written
//
// Access widths: one byte; a wider access uses the first byte, reads fill the rest with 0xff. Thread-safe.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <ctime>
#include <functional>
#include <mutex>
#include <optional>

#include "bus/device.hpp"

namespace vmmlab::devices {

// Binary <-> packed BCD for 0..99 (to_bcd takes value % 100); from_bcd of a non-BCD nibble is not checked.
std::uint8_t to_bcd(unsigned value);
unsigned from_bcd(std::uint8_t bcd);

class CmosRtc final : public Device {
public:
    static constexpr std::uint16_t kIndexPort = 0x70;
    static constexpr std::uint64_t kRegisterCount = 2;
    static constexpr std::size_t kRamSize = 128;
    using Clock = std::function<std::chrono::system_clock::time_point()>;

    // `clock` is the host clock to show (tests pass a fixed one); empty means system_clock::now.
    explicit CmosRtc(Clock clock = {});

    std::string_view name() const override { return "cmos-rtc"; }
    ExitAction read(std::uint64_t offset, std::span<std::byte> data) override;
    ExitAction write(std::uint64_t offset, std::span<const std::byte> data) override;

    bool nmi_disabled() const;
    // Seconds the guest's clock is ahead of the host's (negative: behind); 0 until the guest sets it.
    std::int64_t offset_seconds() const;

private:
    std::uint8_t read_register(std::uint8_t index) const;
    void write_register(std::uint8_t index, std::uint8_t value);
    std::time_t guest_now() const;
    std::uint8_t encode(unsigned value) const;
    unsigned decode(std::uint8_t value) const;
    void set_time_field(std::uint8_t index, std::uint8_t value);

    mutable std::mutex mutex_;
    Clock clock_;
    std::array<std::uint8_t, kRamSize> ram_{};
    std::uint8_t index_ = 0;
    bool nmi_disabled_ = false;
    std::int64_t offset_ = 0;
    std::optional<std::time_t> frozen_; // the guest's time while status B's SET bit is set
};

} // namespace vmmlab::devices
