#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>

#include "devices/legacy/cmos_rtc.hpp"

using namespace vmmlab;
using namespace vmmlab::devices;
using namespace std::chrono;

namespace {
constexpr std::uint8_t kSec = 0x00, kMin = 0x02, kHour = 0x04, kWeekday = 0x06, kDay = 0x07, kMonth = 0x08,
                       kYear = 0x09, kA = 0x0a, kB = 0x0b, kC = 0x0c, kD = 0x0d, kCentury = 0x32;

// 2024-02-29 23:59:58 UTC, a Thursday.
const system_clock::time_point kLeapDay = system_clock::from_time_t(1709251198);

struct Fixture {
    system_clock::time_point now = kLeapDay;
    CmosRtc rtc{[this] { return now; }};

    std::uint8_t get(std::uint8_t index) {
        put_index(index);
        std::byte value{0};
        CHECK(rtc.read(1, std::span(&value, 1)) == ExitAction::Resume);
        return std::to_integer<std::uint8_t>(value);
    }
    void set(std::uint8_t index, std::uint8_t value) {
        put_index(index);
        const std::byte byte{value};
        CHECK(rtc.write(1, std::span(&byte, 1)) == ExitAction::Resume);
    }
    void put_index(std::uint8_t index) {
        const std::byte byte{index};
        CHECK(rtc.write(0, std::span(&byte, 1)) == ExitAction::Resume);
    }
};
} // namespace

TEST_CASE("cmos: BCD conversion", "[linux][cmos]") {
    CHECK(to_bcd(0) == 0x00);
    CHECK(to_bcd(9) == 0x09);
    CHECK(to_bcd(10) == 0x10);
    CHECK(to_bcd(59) == 0x59);
    CHECK(to_bcd(99) == 0x99);
    CHECK(to_bcd(2024) == 0x24); // modulo 100
    for (unsigned value = 0; value < 100; ++value)
        CHECK(from_bcd(to_bcd(value)) == value);
}

TEST_CASE("cmos: time and date in BCD, 24-hour mode, from the host clock", "[linux][cmos]") {
    Fixture f;
    CHECK(f.get(kSec) == 0x58);
    CHECK(f.get(kMin) == 0x59);
    CHECK(f.get(kHour) == 0x23);
    CHECK(f.get(kWeekday) == 0x05); // Thursday (Sunday = 1)
    CHECK(f.get(kDay) == 0x29);
    CHECK(f.get(kMonth) == 0x02);
    CHECK(f.get(kYear) == 0x24);
    CHECK(f.get(kCentury) == 0x20);

    // The registers follow the host clock at each read: two seconds later it is March 1st.
    f.now += seconds(2);
    CHECK(f.get(kSec) == 0x00);
    CHECK(f.get(kMin) == 0x00);
    CHECK(f.get(kHour) == 0x00);
    CHECK(f.get(kDay) == 0x01);
    CHECK(f.get(kMonth) == 0x03);
    CHECK(f.get(kWeekday) == 0x06);
}

TEST_CASE("cmos: binary and 12-hour modes as status B selects", "[linux][cmos]") {
    Fixture f;
    f.set(kB, 0x06); // binary, 24-hour
    CHECK(f.get(kSec) == 58);
    CHECK(f.get(kHour) == 23);
    CHECK(f.get(kYear) == 24);
    CHECK(f.get(kCentury) == 20);
    f.set(kB, 0x04); // binary, 12-hour: 11 PM
    CHECK(f.get(kHour) == (0x80 | 11));
    f.set(kB, 0x00); // BCD, 12-hour
    CHECK(f.get(kHour) == (0x80 | 0x11));
    f.now = system_clock::from_time_t(1709164800 + 30); // 00:00:30: 12 AM
    CHECK(f.get(kHour) == 0x12);
    f.now = system_clock::from_time_t(1709164800 + 12 * 3600); // noon: 12 PM
    CHECK(f.get(kHour) == (0x80 | 0x12));
}

TEST_CASE("cmos: status registers", "[linux][cmos]") {
    Fixture f;
    CHECK(f.get(kA) == 0x26); // UIP clear, 32.768 kHz divider, 1024 Hz
    CHECK(f.get(kB) == 0x02); // 24-hour, BCD
    CHECK(f.get(kC) == 0x00);
    CHECK(f.get(kD) == 0x80); // VRT
    f.set(kA, 0xa6);          // UIP cannot be written
    CHECK(f.get(kA) == 0x26);
    f.set(kC, 0xff);
    f.set(kD, 0x00);
    CHECK(f.get(kC) == 0x00);
    CHECK(f.get(kD) == 0x80);
}

TEST_CASE("cmos: the index port keeps the NMI bit and reads as 0xff", "[linux][cmos]") {
    Fixture f;
    CHECK_FALSE(f.rtc.nmi_disabled());
    f.put_index(0x80 | kSec);
    CHECK(f.rtc.nmi_disabled());
    std::byte value{0};
    CHECK(f.rtc.read(1, std::span(&value, 1)) == ExitAction::Resume);
    CHECK(value == std::byte{0x58}); // index 0 with NMI off is still seconds
    CHECK(f.rtc.read(0, std::span(&value, 1)) == ExitAction::Resume);
    CHECK(value == std::byte{0xff});
    f.put_index(kSec);
    CHECK_FALSE(f.rtc.nmi_disabled());
}

TEST_CASE("cmos: the other 114 bytes are RAM", "[linux][cmos]") {
    Fixture f;
    for (unsigned index = 0x0e; index < 0x80; ++index) {
        if (index == kCentury) continue;
        CHECK(f.get(static_cast<std::uint8_t>(index)) == 0);
        f.set(static_cast<std::uint8_t>(index), static_cast<std::uint8_t>(index ^ 0x5a));
    }
    for (unsigned index = 0x0e; index < 0x80; ++index) {
        if (index == kCentury) continue;
        CHECK(f.get(static_cast<std::uint8_t>(index)) == (index ^ 0x5a));
    }
    f.set(0x01, 0x30); // alarm seconds: storage
    CHECK(f.get(0x01) == 0x30);
}

TEST_CASE("cmos: the guest sets its clock as an offset from the host's", "[linux][cmos]") {
    Fixture f;
    SECTION("one field at a time") {
        f.set(kYear, 0x25); // 2025-03-01 after the leap day ... 2025 has no Feb 29: normalised
        CHECK(f.get(kYear) == 0x25);
        CHECK(f.get(kMonth) == 0x03);
        CHECK(f.get(kDay) == 0x01);
        f.now += seconds(10); // the offset stays as the host clock moves
        CHECK(f.get(kYear) == 0x25);
        CHECK(f.get(kSec) == 0x08);
    }
    SECTION("with SET held while writing all fields") {
        f.set(kB, 0x82);
        f.now += seconds(30); // the guest's view stands still while SET is held
        CHECK(f.get(kSec) == 0x58);
        f.set(kSec, 0x00);
        f.set(kMin, 0x30);
        f.set(kHour, 0x12);
        f.set(kDay, 0x15);
        f.set(kMonth, 0x06);
        f.set(kYear, 0x99);
        f.set(kCentury, 0x19);
        f.set(kB, 0x02);
        CHECK(f.get(kSec) == 0x00);
        CHECK(f.get(kMin) == 0x30);
        CHECK(f.get(kHour) == 0x12);
        CHECK(f.get(kDay) == 0x15);
        CHECK(f.get(kMonth) == 0x06);
        CHECK(f.get(kYear) == 0x99);
        CHECK(f.get(kCentury) == 0x19);
        CHECK(f.get(kWeekday) == 0x03); // 1999-06-15 was a Tuesday
        f.now += seconds(5);
        CHECK(f.get(kSec) == 0x05);
        CHECK(f.rtc.offset_seconds() == 929449800 - (1709251198 + 30));
    }
}

TEST_CASE("cmos: wide accesses use the first byte, reads fill the rest with 0xff", "[linux][cmos]") {
    Fixture f;
    f.put_index(kSec);
    std::array<std::byte, 2> wide{};
    CHECK(f.rtc.read(1, wide) == ExitAction::Resume);
    CHECK(wide[0] == std::byte{0x58});
    CHECK(wide[1] == std::byte{0xff});
}
