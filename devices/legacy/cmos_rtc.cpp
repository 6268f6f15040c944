#include "devices/legacy/cmos_rtc.hpp"

#include <algorithm>
#include <utility>

namespace vmmlab::devices {

namespace {
constexpr std::uint8_t kSeconds = 0x00, kMinutes = 0x02, kHours = 0x04, kWeekday = 0x06, kDayOfMonth = 0x07,
                       kMonth = 0x08, kYear = 0x09, kStatusA = 0x0a, kStatusB = 0x0b, kStatusC = 0x0c,
                       kStatusD = 0x0d, kCentury = 0x32;
constexpr std::uint8_t kIndexMask = 0x7f;
constexpr std::uint8_t kNmiDisable = 0x80;
constexpr std::uint8_t kUpdateInProgress = 0x80; // status A
constexpr std::uint8_t kSet = 0x80;              // status B
constexpr std::uint8_t kBinary = 0x04;           // status B: DM
constexpr std::uint8_t k24Hour = 0x02;           // status B
constexpr std::uint8_t kPm = 0x80;               // hours register in 12-hour mode
constexpr std::uint8_t kValidRamAndTime = 0x80;  // status D: VRT
constexpr std::uint8_t kInitialStatusA = 0x26;   // divider 010 (32.768 kHz), rate 0110 (1024 Hz)
constexpr std::uint8_t kInitialStatusB = k24Hour;

bool is_time_register(std::uint8_t index) {
    switch (index) {
    case kSeconds:
    case kMinutes:
    case kHours:
    case kWeekday:
    case kDayOfMonth:
    case kMonth:
    case kYear:
    case kCentury:
        return true;
    default:
        return false;
    }
}

std::tm broken_down(std::time_t time) {
    std::tm tm{};
    ::gmtime_r(&time, &tm);
    return tm;
}
} // namespace

std::uint8_t to_bcd(unsigned value) {
    value %= 100;
    return static_cast<std::uint8_t>(((value / 10) << 4) | (value % 10));
}

unsigned from_bcd(std::uint8_t bcd) {
    return (bcd >> 4) * 10U + (bcd & 0x0fU);
}

CmosRtc::CmosRtc(Clock clock) : clock_(std::move(clock)) {
    if (!clock_) clock_ = [] { return std::chrono::system_clock::now(); };
    ram_[kStatusA] = kInitialStatusA;
    ram_[kStatusB] = kInitialStatusB;
}

bool CmosRtc::nmi_disabled() const {
    std::lock_guard lock(mutex_);
    return nmi_disabled_;
}

std::int64_t CmosRtc::offset_seconds() const {
    std::lock_guard lock(mutex_);
    return offset_;
}

ExitAction CmosRtc::read(std::uint64_t offset, std::span<std::byte> data) {
    if (data.empty()) return ExitAction::Resume;
    std::ranges::fill(data, std::byte{0xff});
    if (offset != 1) return ExitAction::Resume; // the index register is write-only
    std::lock_guard lock(mutex_);
    data[0] = std::byte{read_register(index_)};
    return ExitAction::Resume;
}

ExitAction CmosRtc::write(std::uint64_t offset, std::span<const std::byte> data) {
    if (data.empty() || offset >= kRegisterCount) return ExitAction::Resume;
    const auto value = std::to_integer<std::uint8_t>(data[0]);
    std::lock_guard lock(mutex_);
    if (offset == 0) {
        index_ = value & kIndexMask;
        nmi_disabled_ = (value & kNmiDisable) != 0;
    } else {
        write_register(index_, value);
    }
    return ExitAction::Resume;
}

std::time_t CmosRtc::guest_now() const {
    if (frozen_) return *frozen_;
    return std::chrono::system_clock::to_time_t(clock_()) + static_cast<std::time_t>(offset_);
}

std::uint8_t CmosRtc::encode(unsigned value) const {
    return (ram_[kStatusB] & kBinary) != 0 ? static_cast<std::uint8_t>(value) : to_bcd(value);
}

unsigned CmosRtc::decode(std::uint8_t value) const {
    return (ram_[kStatusB] & kBinary) != 0 ? value : from_bcd(value);
}

std::uint8_t CmosRtc::read_register(std::uint8_t index) const {
    if (is_time_register(index)) {
        const std::tm now = broken_down(guest_now());
        const unsigned year = static_cast<unsigned>(now.tm_year + 1900);
        switch (index) {
        case kSeconds:
            return encode(static_cast<unsigned>(now.tm_sec));
        case kMinutes:
            return encode(static_cast<unsigned>(now.tm_min));
        case kHours: {
            const auto hour = static_cast<unsigned>(now.tm_hour);
            if ((ram_[kStatusB] & k24Hour) != 0) return encode(hour);
            const unsigned twelve = hour % 12 == 0 ? 12 : hour % 12;
            return static_cast<std::uint8_t>(encode(twelve) | (hour >= 12 ? kPm : 0));
        }
        case kWeekday:
            return encode(static_cast<unsigned>(now.tm_wday) + 1);
        case kDayOfMonth:
            return encode(static_cast<unsigned>(now.tm_mday));
        case kMonth:
            return encode(static_cast<unsigned>(now.tm_mon) + 1);
        case kYear:
            return encode(year % 100);
        default: // kCentury
            return encode(year / 100);
        }
    }
    switch (index) {
    case kStatusA:
        return static_cast<std::uint8_t>(ram_[kStatusA] & ~kUpdateInProgress);
    case kStatusC:
        return 0;
    case kStatusD:
        return kValidRamAndTime;
    default:
        return ram_[index];
    }
}

void CmosRtc::write_register(std::uint8_t index, std::uint8_t value) {
    if (is_time_register(index)) {
        set_time_field(index, value);
        return;
    }
    switch (index) {
    case kStatusA:
        ram_[kStatusA] = static_cast<std::uint8_t>(value & ~kUpdateInProgress);
        return;
    case kStatusB: {
        const bool was_set = (ram_[kStatusB] & kSet) != 0;
        const bool set = (value & kSet) != 0;
        if (set && !was_set) frozen_ = guest_now();
        ram_[kStatusB] = value;
        if (!set && was_set && frozen_) {
            offset_ = static_cast<std::int64_t>(*frozen_ - std::chrono::system_clock::to_time_t(clock_()));
            frozen_.reset();
        }
        return;
    }
    case kStatusC:
    case kStatusD:
        return; // read-only
    default:
        ram_[index] = value;
        return;
    }
}

void CmosRtc::set_time_field(std::uint8_t index, std::uint8_t value) {
    std::tm tm = broken_down(guest_now());
    const int field = static_cast<int>(decode(value));
    const int year = tm.tm_year + 1900;
    switch (index) {
    case kSeconds:
        tm.tm_sec = field;
        break;
    case kMinutes:
        tm.tm_min = field;
        break;
    case kHours:
        if ((ram_[kStatusB] & k24Hour) != 0) {
            tm.tm_hour = field;
        } else {
            const int hour = static_cast<int>(decode(static_cast<std::uint8_t>(value & ~kPm))) % 12;
            tm.tm_hour = hour + ((value & kPm) != 0 ? 12 : 0);
        }
        break;
    case kDayOfMonth:
        tm.tm_mday = field;
        break;
    case kMonth:
        tm.tm_mon = field - 1;
        break;
    case kYear:
        tm.tm_year = year / 100 * 100 + field - 1900;
        break;
    case kCentury:
        tm.tm_year = field * 100 + year % 100 - 1900;
        break;
    default: // kWeekday: follows from the date
        return;
    }
    const std::time_t updated = ::timegm(&tm);
    if (frozen_)
        frozen_ = updated;
    else
        offset_ = static_cast<std::int64_t>(updated - std::chrono::system_clock::to_time_t(clock_()));
}

} // namespace vmmlab::devices
