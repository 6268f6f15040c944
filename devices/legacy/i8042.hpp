// An i8042 keyboard controller with a PS/2 keyboard that answers commands and no mouse, enough for
// Linux's i8042 and atkbd drivers to probe without errors or timeouts, and for the reset line a guest
// pulses to reboot (command 0xfe on port 0x64, Linux's "reboot=k" path and its fallback after ACPI).
//
// The ports are not contiguous (0x61-0x63 belong to others), so the controller hands out two Device
// objects: insert data_port() at kDataPort (0x60) and command_port() at kCommandPort (0x64), each 1 port.
//
//   0x60 read   the output buffer: the oldest queued byte (a controller reply, a keyboard reply, or
//               a byte for the aux port); when empty, the last byte read again
//   0x60 write  the data of a pending controller command, else a byte to the keyboard
//   0x64 read   status: OBF (bit 0) while bytes are queued, IBF (bit 1) never (commands complete at
//               once), SYS (bit 2) = the command byte's SYS flag, A2 (bit 3) = last write was a command,
//               INH (bit 4) = 1 (not inhibited), AUXDATA (bit 5) when the head byte is from the aux port
//   0x64 write  a controller command:
//     0x20 read command byte       0x60 write command byte      0x21-0x3f / 0x61-0x7f RAM (read 0 / dropped)
//     0xa7 / 0xa8 disable / enable aux      0xa9 aux interface test -> 0x00
//     0xaa self test -> 0x55                0xab keyboard interface test -> 0x00
//     0xad / 0xae disable / enable keyboard 0xc0 read input port -> 0x00
//     0xd0 read output port                 0xd1 write output port (bit 0 clear = reset)
//     0xd2 / 0xd3 next byte appears as if from the keyboard / the aux port (loopback)
//     0xd4 next byte goes to the aux device: none is attached, so it answers 0xfe (resend)
//     0xf0-0xff pulse output lines for bits 3:0 clear: bit 0 clear (0xfe, 0xf0...) pulses reset
//     anything else: ignored
//
// Keyboard (scan code set 2, translated to set 1 while the command byte's XLATE bit is set): every
// command is acknowledged with 0xfa; 0xff (reset) adds 0xaa (self test passed), 0xf2 (identify) adds
// 0xab 0x83 (0xab 0x41 translated), 0xee (echo) answers 0xee alone; 0xed, 0xf3 and 0xf0 take one
// argument byte, also acknowledged (0xf0 0x00 then reports set 2). No key is ever pressed.
//
// Interrupts: IRQ 1 while a keyboard or controller byte heads the queue and the command byte enables it
// (bit 0); IRQ 12 while an aux byte heads it and bit 1 enables it. Reading a byte and finding another
// behind it drops the line and raises it again: each byte is a fresh edge, as ISA IRQs are edge-triggered.
// The queue holds kQueueCapacity bytes; bytes that do not fit are dropped.
//
// Reset: `control` is asked to stop the VM with status 0 and reason "the guest rebooted (i8042 reset
// line)", and the write returns ExitAction::Reset. Thread-safe: a mutex serialises every access; the
// interrupt lines are driven with it held and must not call back into the controller.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <mutex>

#include "bus/device.hpp"
#include "bus/interrupt_line.hpp"
#include "cpu/run_control.hpp"

namespace vmmlab::devices {

class I8042 {
public:
    static constexpr std::uint16_t kDataPort = 0x60;
    static constexpr std::uint16_t kCommandPort = 0x64;
    static constexpr std::uint8_t kKeyboardIrq = 1;
    static constexpr std::uint8_t kAuxIrq = 12;
    static constexpr std::size_t kQueueCapacity = 16;
    // Command byte after power-on as a BIOS leaves it: keyboard interrupt on, SYS, XLATE; aux interrupt off.
    static constexpr std::uint8_t kInitialCommandByte = 0x45;

    I8042(RunControl& control, InterruptLine& keyboard_irq, InterruptLine& aux_irq);
    I8042(const I8042&) = delete;
    I8042& operator=(const I8042&) = delete;

    Device& data_port() { return data_port_; }
    Device& command_port() { return command_port_; }

    std::uint8_t command_byte() const;

private:
    enum class Source : std::uint8_t { Controller, Keyboard, Aux };
    struct Queued {
        std::uint8_t value;
        Source source;
    };
    class Port final : public Device {
    public:
        Port(I8042& owner, bool command) : owner_(owner), command_(command) {}
        std::string_view name() const override { return command_ ? "i8042-command" : "i8042-data"; }
        ExitAction read(std::uint64_t offset, std::span<std::byte> data) override;
        ExitAction write(std::uint64_t offset, std::span<const std::byte> data) override;

    private:
        I8042& owner_;
        bool command_;
    };

    std::uint8_t read_data();
    std::uint8_t read_status() const;
    ExitAction write_data(std::uint8_t value);
    ExitAction write_command(std::uint8_t command);
    void keyboard_receive(std::uint8_t value);
    void push(std::uint8_t value, Source source);
    void update_interrupts(bool fresh_edge);
    ExitAction pulse_reset();

    mutable std::mutex mutex_;
    RunControl& control_;
    InterruptLine& keyboard_irq_;
    InterruptLine& aux_irq_;
    Port data_port_{*this, false};
    Port command_port_{*this, true};

    std::array<Queued, kQueueCapacity> queue_{};
    std::size_t head_ = 0, count_ = 0;
    std::uint8_t command_byte_ = kInitialCommandByte;
    std::uint8_t output_port_ = 0x03;   // bit 0: reset line not asserted, bit 1: A20 on
    std::uint8_t pending_command_ = 0;  // a controller command waiting for its data byte; 0 = none
    std::uint8_t keyboard_pending_ = 0; // a keyboard command waiting for its argument; 0 = none
    std::uint8_t last_read_ = 0;
    bool last_write_was_command_ = false;
    bool keyboard_line_ = false, aux_line_ = false;
};

} // namespace vmmlab::devices
