// Feeds a UART's receive side from a file descriptor (the terminal, a pipe, a file) on its own thread.
//
// Flow control: bytes are read from the descriptor only as fast as the guest drains the receive FIFO
// (Uart16550::input_space), so typed-ahead or piped input waits in the descriptor instead of being
// dropped. While the FIFO is full the thread re-checks every couple of milliseconds.
//
// The escape sequence, when enabled (for a terminal in raw mode, where Ctrl-C reaches the guest): Ctrl-A
// then 'x' calls on_quit and stops reading; Ctrl-A Ctrl-A sends one Ctrl-A; Ctrl-A followed by anything
// else sends both bytes. End of file or a read error ends the thread quietly (the guest simply gets no
// more input); neither stops the VM.
#pragma once

#include <atomic>
#include <functional>
#include <thread>

#include "base/unique_fd.hpp"
#include "devices/legacy/serial.hpp"

namespace vmmlab::devices {

class SerialInputPump {
public:
    struct Options {
        bool escape = false;           // Ctrl-A x quits
        std::function<void()> on_quit; // called on the pump's thread after Ctrl-A x
    };

    // Starts the thread. `fd` is not owned and must stay open until the pump is destroyed.
    SerialInputPump(Uart16550& uart, int fd, Options options);
    ~SerialInputPump(); // stops and joins the thread
    SerialInputPump(const SerialInputPump&) = delete;
    SerialInputPump& operator=(const SerialInputPump&) = delete;

    // True once the thread has stopped reading (end of file, an error, or Ctrl-A x).
    bool finished() const { return finished_.load(); }
    std::uint64_t bytes_delivered() const { return delivered_.load(); }

    static constexpr char kEscape = 0x01; // Ctrl-A

private:
    void loop();
    // Delivers bytes, waiting for FIFO space; false when asked to stop meanwhile.
    bool deliver(std::span<const std::byte> bytes);
    bool stop_requested(int timeout_ms);

    Uart16550& uart_;
    int fd_;
    Options options_;
    UniqueFd stop_event_;
    std::atomic<bool> finished_{false};
    std::atomic<std::uint64_t> delivered_{0};
    std::thread thread_;
};

} // namespace vmmlab::devices
