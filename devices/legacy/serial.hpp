// A 16550A UART as a pure state machine: eight byte registers, a receive FIFO, and two injected
// dependencies (where transmitted bytes go, and the interrupt line it drives). No threads, no timers, no
// file descriptors; the monitor wires it to stdout/stdin and to IRQ 4.
//
// Register map (offset from the base port; DLAB is LCR bit 7):
//   0  read: RBR (receive buffer)          write: THR (transmit holding)     DLAB=1: DLL (divisor low)
//   1  read/write: IER (low 4 bits)                                          DLAB=1: DLM (divisor high)
//   2  read: IIR (interrupt identification) write: FCR (FIFO control)
//   3  LCR (line control)        4  MCR (modem control, low 5 bits)
//   5  LSR (line status, read-only)   6  MSR (modem status, read-only)   7  SCR (scratch)
//
// How it differs from the chip, on purpose:
// - Transmission is instantaneous: THR is handed to the sink at once, so LSR.THRE and LSR.TEMT always
//   read 1 and writing THR drops, then re-raises, the THR-empty interrupt (a fresh edge).
// - The receive buffer is kReceiveCapacity bytes deep whether or not FCR enables the FIFO (deeper than
//   the chip's 16), so a polling guest does not lose typed-ahead input. A byte arriving when it is full
//   is dropped and sets LSR.OE.
// - With the FIFO enabled, data below the FCR trigger level is reported at once as a character timeout
//   (IIR 0xc); at or above the trigger level as receive data available (IIR 0x4). There is no timer.
// - MCR.OUT2 does not gate the interrupt output (as in QEMU and kvmtool): the line follows IIR.
// - Outside loopback the modem inputs read DCD, DSR and CTS asserted, RI not (MSR 0xb0).
// - Parity, framing and break errors never happen; LSR bit 7 (FIFO error) is always 0.
//
// Access widths: the registers are one byte wide. A wider access touches only the register at
// `offset`, with the first byte; a wider read fills the remaining bytes with 0xff, a wider write ignores
// them. Offsets 8 and above read as 0xff and ignore writes. Nothing a guest does makes it throw.
//
// Threads: every member function may be called from any thread (vCPU threads access registers, a
// reader thread calls enqueue_input); a mutex inside serialises them. The sink and the interrupt line
// are called with that mutex held, so they see bytes and levels in order and must not call back into
// the device.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <span>
#include <string>
#include <string_view>

#include "bus/device.hpp"
#include "bus/interrupt_line.hpp"

namespace vmmlab::devices {

class Uart16550 final : public Device {
public:
    static constexpr std::uint64_t kRegisterCount = 8; // the size to insert it into the PIO bus with
    static constexpr std::size_t kReceiveCapacity = 64;
    static constexpr std::uint16_t kDefaultDivisor = 12; // 9600 baud from the 1.8432 MHz clock

    // Receives each transmitted byte (a span of one byte per THR write). Not called in loopback mode.
    using OutputSink = std::function<void(std::span<const std::byte>)>;

    Uart16550(std::string name, OutputSink sink, InterruptLine& interrupt);

    std::string_view name() const override { return name_; }
    ExitAction read(std::uint64_t offset, std::span<std::byte> data) override;
    ExitAction write(std::uint64_t offset, std::span<const std::byte> data) override;

    // Bytes from the outside world (the host's stdin) into the receive FIFO. Returns how many were
    // stored; the rest were dropped: on overflow (which sets LSR.OE), or all of them while the guest
    // has the UART in loopback mode (its serial input is then disconnected, as on the chip).
    std::size_t enqueue_input(std::span<const std::byte> bytes);
    // How many bytes the host side should send now: the free space of the receive FIFO while the guest
    // holds both DTR and RTS (MCR bits 0 and 1) up, 0 otherwise or in loopback. Both lines up is how a
    // driver says "port open, ready to receive": Linux raises them after the FIFO reset of opening the
    // port (uart_port_startup), while its console set-up raises DTR alone long before; input sent earlier
    // would be thrown away by that reset. Linux drops RTS again to throttle (CRTSCTS) and on the last
    // close. A reader that checks first holds input back instead of losing it; enqueue_input itself
    // stores whatever fits.
    std::size_t input_space() const;

private:
    std::uint8_t read_register(std::uint64_t offset);
    void write_register(std::uint64_t offset, std::uint8_t value);
    void transmit(std::uint8_t value);
    void receive(std::uint8_t value);
    void write_interrupt_enable(std::uint8_t value);
    void write_fifo_control(std::uint8_t value);
    void write_modem_control(std::uint8_t value);
    void clear_receive_fifo();
    bool loopback() const;
    bool divisor_latch() const;
    std::uint8_t line_status() const;
    std::uint8_t modem_lines() const;
    std::uint8_t interrupt_identification() const;
    void update_interrupt();

    mutable std::mutex mutex_;
    const std::string name_;
    const OutputSink sink_;
    InterruptLine& interrupt_;

    std::uint8_t interrupt_enable_ = 0;
    std::uint8_t line_control_ = 0;
    std::uint8_t modem_control_ = 0;
    std::uint8_t scratch_ = 0;
    std::uint8_t line_errors_ = 0;  // LSR bits 1-4, cleared by reading LSR
    std::uint8_t modem_deltas_ = 0; // MSR bits 0-3, cleared by reading MSR
    std::uint16_t divisor_ = kDefaultDivisor;
    bool fifo_enabled_ = false;
    std::size_t trigger_level_ = 1;
    bool thr_empty_pending_ = false; // the THR-empty interrupt condition (IIR 0x2)
    bool line_high_ = false;         // the level last given to interrupt_
    std::uint8_t last_received_ = 0; // what RBR reads when the FIFO is empty

    std::array<std::uint8_t, kReceiveCapacity> receive_fifo_{};
    std::size_t receive_head_ = 0;
    std::size_t receive_count_ = 0;
};

// Splits a byte stream (the UART's output) into lines for a consumer such as the `@result` parser.
// A line ends at "\n", "\r" or "\r\n" (one end, also when the "\r" and "\n" arrive in separate calls);
// the end is not part of the text. A line longer than `max_line` bytes is delivered in pieces of
// max_line bytes, each but the last with complete == false. Bytes are passed through unchanged, NULs
// included. Not thread-safe: feed it from one thread (the UART sink already is serialised).
class SerialLineTap {
public:
    struct Line {
        std::string_view text;
        bool complete;           // false: cut at max_line, the rest of the line follows
        bool continues_previous; // true: this piece continues an earlier incomplete one
    };
    using LineHandler = std::function<void(const Line&)>;

    static constexpr std::size_t kDefaultMaxLine = 4096;

    explicit SerialLineTap(LineHandler on_line, std::size_t max_line = kDefaultMaxLine);

    void feed(std::span<const std::byte> bytes);
    // Delivers a pending partial line (no end seen yet) as complete, e.g. when the guest has stopped.
    void flush();

private:
    void deliver(bool complete);

    LineHandler on_line_;
    std::size_t max_line_;
    std::string pending_;
    bool after_carriage_return_ = false;
    bool continuing_ = false;
};

} // namespace vmmlab::devices
