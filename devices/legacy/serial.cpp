#include "devices/legacy/serial.hpp"

#include <algorithm>
#include <utility>

namespace vmmlab::devices {

namespace {
// Register offsets.
constexpr std::uint64_t kData = 0;            // RBR / THR, DLL with DLAB
constexpr std::uint64_t kInterruptEnable = 1; // IER, DLM with DLAB
constexpr std::uint64_t kInterruptId = 2;     // IIR on read, FCR on write
constexpr std::uint64_t kLineControl = 3;
constexpr std::uint64_t kModemControl = 4;
constexpr std::uint64_t kLineStatus = 5;
constexpr std::uint64_t kModemStatus = 6;
constexpr std::uint64_t kScratch = 7;

// IER bits.
constexpr std::uint8_t kIerReceivedData = 0x01;
constexpr std::uint8_t kIerThrEmpty = 0x02;
constexpr std::uint8_t kIerLineStatus = 0x04;
constexpr std::uint8_t kIerModemStatus = 0x08;
constexpr std::uint8_t kIerMask = 0x0f;

// IIR values (bits 0-3) and the FIFO-enabled bits.
constexpr std::uint8_t kIirNone = 0x01;
constexpr std::uint8_t kIirModemStatus = 0x00;
constexpr std::uint8_t kIirThrEmpty = 0x02;
constexpr std::uint8_t kIirReceivedData = 0x04;
constexpr std::uint8_t kIirLineStatus = 0x06;
constexpr std::uint8_t kIirCharacterTimeout = 0x0c;
constexpr std::uint8_t kIirFifoEnabled = 0xc0;

// FCR bits.
constexpr std::uint8_t kFcrEnable = 0x01;
constexpr std::uint8_t kFcrClearReceive = 0x02;
constexpr std::array<std::size_t, 4> kTriggerLevels{1, 4, 8, 14}; // by FCR bits 7-6

// LCR, MCR bits.
constexpr std::uint8_t kLcrDivisorLatch = 0x80;
constexpr std::uint8_t kMcrDtr = 0x01;
constexpr std::uint8_t kMcrRts = 0x02;
constexpr std::uint8_t kMcrOut1 = 0x04;
constexpr std::uint8_t kMcrOut2 = 0x08;
constexpr std::uint8_t kMcrLoopback = 0x10;
constexpr std::uint8_t kMcrMask = 0x1f;

// LSR bits.
constexpr std::uint8_t kLsrDataReady = 0x01;
constexpr std::uint8_t kLsrOverrun = 0x02;
constexpr std::uint8_t kLsrThrEmpty = 0x20;
constexpr std::uint8_t kLsrTransmitterEmpty = 0x40;

// MSR bits: deltas in 0-3, line states in 4-7.
constexpr std::uint8_t kMsrDeltaCts = 0x01;
constexpr std::uint8_t kMsrDeltaDsr = 0x02;
constexpr std::uint8_t kMsrTrailingEdgeRi = 0x04;
constexpr std::uint8_t kMsrDeltaDcd = 0x08;
constexpr std::uint8_t kMsrCts = 0x10;
constexpr std::uint8_t kMsrDsr = 0x20;
constexpr std::uint8_t kMsrRi = 0x40;
constexpr std::uint8_t kMsrDcd = 0x80;
constexpr std::uint8_t kMsrNoModem = kMsrDcd | kMsrDsr | kMsrCts;

constexpr std::byte kFloating{0xff};
} // namespace

Uart16550::Uart16550(std::string name, OutputSink sink, InterruptLine& interrupt)
    : name_(std::move(name)), sink_(std::move(sink)), interrupt_(interrupt) {
}

ExitAction Uart16550::read(std::uint64_t offset, std::span<std::byte> data) {
    if (data.empty()) return ExitAction::Resume;
    std::ranges::fill(data, kFloating);
    if (offset >= kRegisterCount) return ExitAction::Resume;
    std::lock_guard lock(mutex_);
    data[0] = std::byte{read_register(offset)};
    return ExitAction::Resume;
}

ExitAction Uart16550::write(std::uint64_t offset, std::span<const std::byte> data) {
    if (data.empty() || offset >= kRegisterCount) return ExitAction::Resume;
    std::lock_guard lock(mutex_);
    write_register(offset, std::to_integer<std::uint8_t>(data[0]));
    return ExitAction::Resume;
}

std::size_t Uart16550::enqueue_input(std::span<const std::byte> bytes) {
    std::lock_guard lock(mutex_);
    if (loopback() || bytes.empty()) return 0;
    const std::size_t stored = std::min(bytes.size(), kReceiveCapacity - receive_count_);
    for (std::byte value : bytes.first(stored))
        receive(std::to_integer<std::uint8_t>(value));
    if (stored < bytes.size()) line_errors_ |= kLsrOverrun;
    update_interrupt();
    return stored;
}

std::size_t Uart16550::input_space() const {
    std::lock_guard lock(mutex_);
    const bool ready = (modem_control_ & (kMcrDtr | kMcrRts)) == (kMcrDtr | kMcrRts) && !loopback();
    return ready ? kReceiveCapacity - receive_count_ : 0;
}

std::uint8_t Uart16550::read_register(std::uint64_t offset) {
    switch (offset) {
    case kData: {
        if (divisor_latch()) return static_cast<std::uint8_t>(divisor_ & 0xff);
        if (receive_count_ > 0) {
            last_received_ = receive_fifo_[receive_head_];
            receive_head_ = (receive_head_ + 1) % kReceiveCapacity;
            --receive_count_;
            update_interrupt();
        }
        return last_received_;
    }
    case kInterruptEnable:
        return divisor_latch() ? static_cast<std::uint8_t>(divisor_ >> 8) : interrupt_enable_;
    case kInterruptId: {
        const std::uint8_t id = interrupt_identification();
        // Reading IIR while it reports THR empty acknowledges that interrupt (and only that one).
        if (id == kIirThrEmpty) {
            thr_empty_pending_ = false;
            update_interrupt();
        }
        return static_cast<std::uint8_t>(id | (fifo_enabled_ ? kIirFifoEnabled : 0));
    }
    case kLineControl:
        return line_control_;
    case kModemControl:
        return modem_control_;
    case kLineStatus: {
        const std::uint8_t status = line_status();
        line_errors_ = 0;
        update_interrupt();
        return status;
    }
    case kModemStatus: {
        const std::uint8_t status = modem_lines() | modem_deltas_;
        modem_deltas_ = 0;
        update_interrupt();
        return status;
    }
    case kScratch:
        return scratch_;
    default:
        return 0xff;
    }
}

void Uart16550::write_register(std::uint64_t offset, std::uint8_t value) {
    switch (offset) {
    case kData:
        if (divisor_latch())
            divisor_ = static_cast<std::uint16_t>((divisor_ & 0xff00) | value);
        else
            transmit(value);
        break;
    case kInterruptEnable:
        if (divisor_latch())
            divisor_ = static_cast<std::uint16_t>((divisor_ & 0x00ff) | (value << 8));
        else
            write_interrupt_enable(value);
        break;
    case kInterruptId:
        write_fifo_control(value);
        break;
    case kLineControl:
        line_control_ = value;
        break;
    case kModemControl:
        write_modem_control(value);
        break;
    case kScratch:
        scratch_ = value;
        break;
    default: // LSR and MSR are read-only (their factory-test writes are not emulated)
        break;
    }
}

void Uart16550::transmit(std::uint8_t value) {
    // Writing THR clears the THR-empty interrupt; the byte leaves at once and THR is empty again,
    // which raises it anew: the line sees a falling and a rising edge, as with a real (fast) UART.
    thr_empty_pending_ = false;
    update_interrupt();
    if (loopback()) {
        if (receive_count_ < kReceiveCapacity)
            receive(value);
        else
            line_errors_ |= kLsrOverrun;
    } else if (sink_) {
        const std::byte byte{value};
        sink_(std::span<const std::byte>(&byte, 1));
    }
    thr_empty_pending_ = true;
    update_interrupt();
}

void Uart16550::receive(std::uint8_t value) {
    receive_fifo_[(receive_head_ + receive_count_) % kReceiveCapacity] = value;
    ++receive_count_;
}

void Uart16550::write_interrupt_enable(std::uint8_t value) {
    const bool thr_was_enabled = (interrupt_enable_ & kIerThrEmpty) != 0;
    interrupt_enable_ = value & kIerMask;
    // Enabling the THR-empty interrupt while THR is empty (always, here) raises it at once; Linux's
    // 8250 driver relies on this to start transmission.
    if (!thr_was_enabled && (interrupt_enable_ & kIerThrEmpty) != 0) thr_empty_pending_ = true;
    update_interrupt();
}

void Uart16550::write_fifo_control(std::uint8_t value) {
    const bool enable = (value & kFcrEnable) != 0;
    // Toggling the enable bit empties the FIFOs; the other bits only take effect with it set.
    if (enable != fifo_enabled_) clear_receive_fifo();
    fifo_enabled_ = enable;
    if (enable) {
        if ((value & kFcrClearReceive) != 0) clear_receive_fifo();
        trigger_level_ = kTriggerLevels[value >> 6];
    }
    update_interrupt();
}

void Uart16550::write_modem_control(std::uint8_t value) {
    const std::uint8_t before = modem_lines();
    modem_control_ = value & kMcrMask;
    const std::uint8_t after = modem_lines();
    const std::uint8_t changed = before ^ after;
    if ((changed & kMsrCts) != 0) modem_deltas_ |= kMsrDeltaCts;
    if ((changed & kMsrDsr) != 0) modem_deltas_ |= kMsrDeltaDsr;
    if ((changed & kMsrDcd) != 0) modem_deltas_ |= kMsrDeltaDcd;
    if ((before & kMsrRi) != 0 && (after & kMsrRi) == 0) modem_deltas_ |= kMsrTrailingEdgeRi;
    update_interrupt();
}

void Uart16550::clear_receive_fifo() {
    receive_head_ = 0;
    receive_count_ = 0;
}

bool Uart16550::loopback() const {
    return (modem_control_ & kMcrLoopback) != 0;
}

bool Uart16550::divisor_latch() const {
    return (line_control_ & kLcrDivisorLatch) != 0;
}

std::uint8_t Uart16550::line_status() const {
    std::uint8_t status = kLsrThrEmpty | kLsrTransmitterEmpty | line_errors_;
    if (receive_count_ > 0) status |= kLsrDataReady;
    return status;
}

std::uint8_t Uart16550::modem_lines() const {
    if (!loopback()) return kMsrNoModem;
    // In loopback the modem control outputs feed the modem status inputs.
    std::uint8_t lines = 0;
    if ((modem_control_ & kMcrRts) != 0) lines |= kMsrCts;
    if ((modem_control_ & kMcrDtr) != 0) lines |= kMsrDsr;
    if ((modem_control_ & kMcrOut1) != 0) lines |= kMsrRi;
    if ((modem_control_ & kMcrOut2) != 0) lines |= kMsrDcd;
    return lines;
}

// The highest-priority pending and enabled interrupt: line status, then received data (or character
// timeout), then THR empty, then modem status.
std::uint8_t Uart16550::interrupt_identification() const {
    if ((interrupt_enable_ & kIerLineStatus) != 0 && line_errors_ != 0) return kIirLineStatus;
    if ((interrupt_enable_ & kIerReceivedData) != 0 && receive_count_ > 0)
        return fifo_enabled_ && receive_count_ < trigger_level_ ? kIirCharacterTimeout : kIirReceivedData;
    if ((interrupt_enable_ & kIerThrEmpty) != 0 && thr_empty_pending_) return kIirThrEmpty;
    if ((interrupt_enable_ & kIerModemStatus) != 0 && modem_deltas_ != 0) return kIirModemStatus;
    return kIirNone;
}

void Uart16550::update_interrupt() {
    const bool high = interrupt_identification() != kIirNone;
    if (high == line_high_) return;
    line_high_ = high;
    interrupt_.set_level(high);
}

SerialLineTap::SerialLineTap(LineHandler on_line, std::size_t max_line)
    : on_line_(std::move(on_line)), max_line_(std::max<std::size_t>(max_line, 1)) {
    pending_.reserve(max_line_);
}

void SerialLineTap::feed(std::span<const std::byte> bytes) {
    for (std::byte byte : bytes) {
        const char c = static_cast<char>(std::to_integer<unsigned char>(byte));
        const bool was_after_carriage_return = std::exchange(after_carriage_return_, false);
        if (c == '\n' && was_after_carriage_return) continue; // the second half of "\r\n"
        if (c == '\n' || c == '\r') {
            after_carriage_return_ = c == '\r';
            deliver(true);
            continue;
        }
        if (pending_.size() == max_line_) deliver(false);
        pending_.push_back(c);
    }
}

void SerialLineTap::flush() {
    after_carriage_return_ = false;
    if (!pending_.empty() || continuing_) deliver(true);
}

void SerialLineTap::deliver(bool complete) {
    const Line line{pending_, complete, continuing_};
    continuing_ = !complete;
    if (on_line_) on_line_(line);
    pending_.clear();
}

} // namespace vmmlab::devices
