#include "devices/legacy/i8042.hpp"

#include <algorithm>
#include <utility>

namespace vmmlab::devices {

namespace {
// Status register bits.
constexpr std::uint8_t kStatusOutputFull = 0x01;
constexpr std::uint8_t kStatusSystem = 0x04;
constexpr std::uint8_t kStatusCommand = 0x08;
constexpr std::uint8_t kStatusNotInhibited = 0x10;
constexpr std::uint8_t kStatusAuxData = 0x20;

// Command byte bits.
constexpr std::uint8_t kCtrKeyboardInterrupt = 0x01;
constexpr std::uint8_t kCtrAuxInterrupt = 0x02;
constexpr std::uint8_t kCtrSystem = 0x04;
constexpr std::uint8_t kCtrKeyboardDisabled = 0x10;
constexpr std::uint8_t kCtrAuxDisabled = 0x20;
constexpr std::uint8_t kCtrTranslate = 0x40;

// Controller commands.
constexpr std::uint8_t kReadCommandByte = 0x20;
constexpr std::uint8_t kWriteCommandByte = 0x60;
constexpr std::uint8_t kDisableAux = 0xa7;
constexpr std::uint8_t kEnableAux = 0xa8;
constexpr std::uint8_t kTestAux = 0xa9;
constexpr std::uint8_t kSelfTest = 0xaa;
constexpr std::uint8_t kTestKeyboard = 0xab;
constexpr std::uint8_t kDisableKeyboard = 0xad;
constexpr std::uint8_t kEnableKeyboard = 0xae;
constexpr std::uint8_t kReadInputPort = 0xc0;
constexpr std::uint8_t kReadOutputPort = 0xd0;
constexpr std::uint8_t kWriteOutputPort = 0xd1;
constexpr std::uint8_t kWriteKeyboardOutput = 0xd2;
constexpr std::uint8_t kWriteAuxOutput = 0xd3;
constexpr std::uint8_t kWriteAux = 0xd4;
constexpr std::uint8_t kPulseFirst = 0xf0;

constexpr std::uint8_t kSelfTestPassed = 0x55;
constexpr std::uint8_t kInterfaceOk = 0x00;

// Keyboard commands and replies.
constexpr std::uint8_t kKbdSetLeds = 0xed;
constexpr std::uint8_t kKbdEcho = 0xee;
constexpr std::uint8_t kKbdScanCodeSet = 0xf0;
constexpr std::uint8_t kKbdIdentify = 0xf2;
constexpr std::uint8_t kKbdTypematic = 0xf3;
constexpr std::uint8_t kKbdReset = 0xff;
constexpr std::uint8_t kAck = 0xfa;
constexpr std::uint8_t kResend = 0xfe;
constexpr std::uint8_t kBatPassed = 0xaa;

std::uint8_t first_byte(std::span<const std::byte> data) {
    return std::to_integer<std::uint8_t>(data[0]);
}
} // namespace

I8042::I8042(RunControl& control, InterruptLine& keyboard_irq, InterruptLine& aux_irq)
    : control_(control), keyboard_irq_(keyboard_irq), aux_irq_(aux_irq) {
}

std::uint8_t I8042::command_byte() const {
    std::lock_guard lock(mutex_);
    return command_byte_;
}

ExitAction I8042::Port::read(std::uint64_t, std::span<std::byte> data) {
    if (data.empty()) return ExitAction::Resume;
    std::ranges::fill(data, std::byte{0});
    std::lock_guard lock(owner_.mutex_);
    data[0] = std::byte{command_ ? owner_.read_status() : owner_.read_data()};
    return ExitAction::Resume;
}

ExitAction I8042::Port::write(std::uint64_t, std::span<const std::byte> data) {
    if (data.empty()) return ExitAction::Resume;
    std::lock_guard lock(owner_.mutex_);
    return command_ ? owner_.write_command(first_byte(data)) : owner_.write_data(first_byte(data));
}

std::uint8_t I8042::read_data() {
    if (count_ == 0) return last_read_;
    last_read_ = queue_[head_].value;
    head_ = (head_ + 1) % kQueueCapacity;
    --count_;
    update_interrupts(true);
    return last_read_;
}

std::uint8_t I8042::read_status() const {
    std::uint8_t status = kStatusNotInhibited;
    if (count_ > 0) {
        status |= kStatusOutputFull;
        if (queue_[head_].source == Source::Aux) status |= kStatusAuxData;
    }
    if ((command_byte_ & kCtrSystem) != 0) status |= kStatusSystem;
    if (last_write_was_command_) status |= kStatusCommand;
    return status;
}

ExitAction I8042::write_data(std::uint8_t value) {
    last_write_was_command_ = false;
    const std::uint8_t command = std::exchange(pending_command_, 0);
    switch (command) {
    case 0:
        keyboard_receive(value);
        break;
    case kWriteCommandByte:
        command_byte_ = value;
        update_interrupts(false);
        break;
    case kWriteOutputPort:
        output_port_ = value;
        if ((value & 0x01) == 0) return pulse_reset();
        break;
    case kWriteKeyboardOutput:
        push(value, Source::Keyboard);
        break;
    case kWriteAuxOutput:
        push(value, Source::Aux);
        break;
    case kWriteAux:
        push(kResend, Source::Aux); // no mouse attached
        break;
    default: // 0x61-0x7f: controller RAM, not kept
        break;
    }
    return ExitAction::Resume;
}

ExitAction I8042::write_command(std::uint8_t command) {
    last_write_was_command_ = true;
    pending_command_ = 0;
    if (command >= kPulseFirst) {
        // Bits 3:0 clear pulse output port bits 3:0 low for 6 us; bit 0 is the CPU's reset line.
        if ((command & 0x01) == 0) return pulse_reset();
        return ExitAction::Resume;
    }
    switch (command) {
    case kReadCommandByte:
        push(command_byte_, Source::Controller);
        break;
    case kDisableAux:
        command_byte_ |= kCtrAuxDisabled;
        break;
    case kEnableAux:
        command_byte_ = static_cast<std::uint8_t>(command_byte_ & ~kCtrAuxDisabled);
        break;
    case kTestAux:
    case kTestKeyboard:
        push(kInterfaceOk, Source::Controller);
        break;
    case kSelfTest:
        command_byte_ |= kCtrSystem;
        push(kSelfTestPassed, Source::Controller);
        break;
    case kDisableKeyboard:
        command_byte_ |= kCtrKeyboardDisabled;
        break;
    case kEnableKeyboard:
        command_byte_ = static_cast<std::uint8_t>(command_byte_ & ~kCtrKeyboardDisabled);
        break;
    case kReadInputPort:
        push(0x00, Source::Controller);
        break;
    case kReadOutputPort:
        push(output_port_, Source::Controller);
        break;
    case kWriteOutputPort:
    case kWriteKeyboardOutput:
    case kWriteAuxOutput:
    case kWriteAux:
        pending_command_ = command;
        break;
    default:
        if (command > kReadCommandByte && command < 0x40) { // read controller RAM byte
            push(0x00, Source::Controller);
        } else if (command >= kWriteCommandByte && command < 0x80) { // write command byte or RAM
            pending_command_ = command;
        }
        break; // anything else: ignored
    }
    return ExitAction::Resume;
}

void I8042::keyboard_receive(std::uint8_t value) {
    if (const std::uint8_t command = std::exchange(keyboard_pending_, 0); command != 0) {
        push(kAck, Source::Keyboard); // the argument of 0xed / 0xf3 / 0xf0
        if (command == kKbdScanCodeSet && value == 0)
            push((command_byte_ & kCtrTranslate) != 0 ? 0x41 : 0x02, Source::Keyboard);
        return;
    }
    switch (value) {
    case kKbdEcho:
        push(kKbdEcho, Source::Keyboard);
        return;
    case kKbdReset:
        push(kAck, Source::Keyboard);
        push(kBatPassed, Source::Keyboard);
        return;
    case kKbdIdentify:
        push(kAck, Source::Keyboard);
        push(0xab, Source::Keyboard);
        push((command_byte_ & kCtrTranslate) != 0 ? 0x41 : 0x83, Source::Keyboard);
        return;
    case kKbdSetLeds:
    case kKbdTypematic:
    case kKbdScanCodeSet:
        keyboard_pending_ = value;
        push(kAck, Source::Keyboard);
        return;
    default: // enable, disable, set defaults, and the rest: acknowledged
        push(kAck, Source::Keyboard);
        return;
    }
}

void I8042::push(std::uint8_t value, Source source) {
    if (count_ == kQueueCapacity) return;
    queue_[(head_ + count_) % kQueueCapacity] = Queued{value, source};
    ++count_;
    update_interrupts(false);
}

void I8042::update_interrupts(bool fresh_edge) {
    bool keyboard = false, aux = false;
    if (count_ > 0) {
        const bool from_aux = queue_[head_].source == Source::Aux;
        keyboard = !from_aux && (command_byte_ & kCtrKeyboardInterrupt) != 0;
        aux = from_aux && (command_byte_ & kCtrAuxInterrupt) != 0;
    }
    // After a byte was taken, a line that stays asserted for the next byte must show a new edge.
    if (fresh_edge && keyboard_line_) {
        keyboard_line_ = false;
        keyboard_irq_.set_level(false);
    }
    if (fresh_edge && aux_line_) {
        aux_line_ = false;
        aux_irq_.set_level(false);
    }
    if (keyboard != keyboard_line_) {
        keyboard_line_ = keyboard;
        keyboard_irq_.set_level(keyboard);
    }
    if (aux != aux_line_) {
        aux_line_ = aux;
        aux_irq_.set_level(aux);
    }
}

ExitAction I8042::pulse_reset() {
    control_.request_stop(0, "the guest rebooted (i8042 reset line)");
    return ExitAction::Reset;
}

} // namespace vmmlab::devices
