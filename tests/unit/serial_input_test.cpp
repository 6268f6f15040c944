// The serial input pump: bytes from a pipe reach the guest's receive FIFO in order and complete, even
// when far more arrive than the FIFO holds; the Ctrl-A escape; end of file.
#include <catch2/catch.hpp>
#include <chrono>
#include <string>
#include <thread>

#include <unistd.h>

#include "base/unique_fd.hpp"
#include "devices/legacy/serial_input.hpp"

using namespace vmmlab;
using namespace vmmlab::devices;

namespace {
struct NoLine : InterruptLine {
    void set_level(bool) override {}
};

struct Pipe {
    UniqueFd read_end, write_end;
    Pipe() {
        int fds[2];
        REQUIRE(::pipe(fds) == 0);
        read_end.reset(fds[0]);
        write_end.reset(fds[1]);
    }
    void send(std::string_view text) {
        REQUIRE(::write(write_end.get(), text.data(), text.size()) == static_cast<ssize_t>(text.size()));
    }
};

struct Guest {
    NoLine line;
    Uart16550 uart{"ttyS0", [](std::span<const std::byte>) {}, line};
    Guest() { set_dtr(true); }
    void set_dtr(bool on) {
        const std::byte mcr{static_cast<unsigned char>(on ? 0x03 : 0x02)};
        uart.write(4, std::span(&mcr, 1));
    }

    // Reads what the UART received the way a polling driver does (LSR.DR, then RBR) until `count` bytes
    // or a deadline: bounds the test if bytes are lost, and the caller checks what arrived.
    std::string receive(std::size_t count) {
        std::string got;
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        while (got.size() < count && std::chrono::steady_clock::now() < deadline) {
            std::byte value{0};
            uart.read(5, std::span(&value, 1));
            if ((std::to_integer<unsigned>(value) & 1) == 0) {
                std::this_thread::sleep_for(std::chrono::microseconds(200));
                continue;
            }
            uart.read(0, std::span(&value, 1));
            got.push_back(static_cast<char>(value));
        }
        return got;
    }
};

bool wait_until(const SerialInputPump& pump) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!pump.finished() && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return pump.finished();
}
} // namespace

TEST_CASE("serial input: piped bytes all arrive in order, 10x more than the FIFO holds", "[serial]") {
    Guest guest;
    Pipe pipe;
    SerialInputPump pump(guest.uart, pipe.read_end.get(), {});
    std::string sent;
    for (int i = 0; sent.size() < 10 * Uart16550::kReceiveCapacity; ++i)
        sent += "line " + std::to_string(i) + "\n";
    pipe.send(sent);
    CHECK(guest.receive(sent.size()) == sent);
    CHECK(pump.bytes_delivered() == sent.size());
    CHECK_FALSE(pump.finished());
}

TEST_CASE("serial input: held back until the guest raises DTR and RTS", "[serial]") {
    Guest guest;
    guest.set_dtr(false);
    Pipe pipe;
    SerialInputPump pump(guest.uart, pipe.read_end.get(), {});
    pipe.send("early");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    CHECK(pump.bytes_delivered() == 0);
    guest.set_dtr(true); // the guest's driver opens the port
    CHECK(guest.receive(5) == "early");
}

TEST_CASE("serial input: end of file ends the pump, not the guest's input so far", "[serial]") {
    Guest guest;
    Pipe pipe;
    SerialInputPump pump(guest.uart, pipe.read_end.get(), {});
    pipe.send("ls\r");
    pipe.write_end.reset();
    CHECK(wait_until(pump));
    CHECK(guest.receive(3) == "ls\r");
}

TEST_CASE("serial input: Ctrl-A x quits, Ctrl-A Ctrl-A sends one Ctrl-A", "[serial]") {
    Guest guest;
    Pipe pipe;
    int quits = 0;
    SerialInputPump pump(guest.uart, pipe.read_end.get(), {.escape = true, .on_quit = [&quits] { ++quits; }});
    pipe.send("a\x01\x01"
              "b\x01"
              "c");
    CHECK(guest.receive(5) == "a\x01"
                              "b\x01"
                              "c");
    CHECK_FALSE(pump.finished());
    pipe.send("d\x01xnot delivered");
    CHECK(wait_until(pump));
    CHECK(quits == 1);
    CHECK(guest.receive(1) == "d");
    CHECK(pump.bytes_delivered() == 6);
}

TEST_CASE("serial input: without the escape option Ctrl-A x is ordinary input", "[serial]") {
    Guest guest;
    Pipe pipe;
    SerialInputPump pump(guest.uart, pipe.read_end.get(), {});
    pipe.send("\x01x");
    CHECK(guest.receive(2) == "\x01x");
    CHECK_FALSE(pump.finished());
}
