#include <catch2/catch.hpp>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "devices/legacy/serial.hpp"

using namespace vmmlab;
using namespace vmmlab::devices;

namespace {
constexpr std::uint64_t kData = 0, kIer = 1, kIir = 2, kFcr = 2, kLcr = 3, kMcr = 4, kLsr = 5, kMsr = 6,
                        kScr = 7;

// Records every level the UART drives, so tests can check edges as well as the current state.
struct RecordingLine : InterruptLine {
    std::vector<bool> levels;
    void set_level(bool high) override { levels.push_back(high); }
    bool high() const { return !levels.empty() && levels.back(); }
};

std::vector<std::byte> bytes_of(std::string_view text) {
    std::vector<std::byte> out;
    for (char c : text)
        out.push_back(static_cast<std::byte>(c));
    return out;
}

// A UART with a recording sink and line, and byte-wide register helpers.
struct Fixture {
    RecordingLine line;
    std::string output;
    Uart16550 uart{"ttyS0",
                   [this](std::span<const std::byte> data) {
                       for (std::byte b : data)
                           output.push_back(static_cast<char>(b));
                   },
                   line};

    std::uint8_t in(std::uint64_t offset) {
        std::byte value{0};
        CHECK(uart.read(offset, std::span(&value, 1)) == ExitAction::Resume);
        return std::to_integer<std::uint8_t>(value);
    }
    void out(std::uint64_t offset, std::uint8_t value) {
        const std::byte byte{value};
        CHECK(uart.write(offset, std::span(&byte, 1)) == ExitAction::Resume);
    }
    std::size_t type(std::string_view text) { return uart.enqueue_input(bytes_of(text)); }
};
} // namespace

TEST_CASE("serial: bytes written to THR reach the sink", "[serial]") {
    Fixture f;
    for (char c : std::string_view("hi\n"))
        f.out(kData, static_cast<std::uint8_t>(c));
    CHECK(f.output == "hi\n");
    CHECK(f.line.levels.empty()); // no interrupt enabled, the line never moved
}

TEST_CASE("serial: registers after reset", "[serial]") {
    Fixture f;
    CHECK(f.in(kIer) == 0);
    CHECK(f.in(kIir) == 0x01);
    CHECK(f.in(kLcr) == 0);
    CHECK(f.in(kMcr) == 0);
    CHECK(f.in(kLsr) == 0x60); // THRE | TEMT, no data
    CHECK(f.in(kMsr) == 0xb0); // DCD | DSR | CTS, no deltas
    CHECK(f.in(kScr) == 0);
}

TEST_CASE("serial: LSR data ready follows the receive FIFO", "[serial]") {
    Fixture f;
    CHECK((f.in(kLsr)&0x01) == 0);
    CHECK(f.type("ab") == 2);
    CHECK(f.in(kLsr) == 0x61);
    CHECK(f.in(kData) == 'a');
    CHECK(f.in(kLsr) == 0x61);
    CHECK(f.in(kData) == 'b');
    CHECK(f.in(kLsr) == 0x60);
    CHECK(f.in(kData) == 'b'); // an empty RBR reads the last byte again
}

TEST_CASE("serial: DLAB switches offsets 0 and 1 to the divisor latch", "[serial]") {
    Fixture f;
    f.out(kIer, 0x05);
    f.out(kLcr, 0x83); // DLAB, 8 data bits
    CHECK(f.in(kData) == 12);
    CHECK(f.in(kIer) == 0);
    f.out(kData, 0x01); // 115200 baud
    f.out(kIer, 0x02);
    CHECK(f.in(kData) == 0x01);
    CHECK(f.in(kIer) == 0x02);
    CHECK(f.output.empty()); // writing DLL transmits nothing

    f.out(kLcr, 0x03);
    CHECK(f.in(kLcr) == 0x03);
    CHECK(f.in(kIer) == 0x05); // IER kept its value behind the latch
    f.out(kData, 'x');
    CHECK(f.output == "x");
    f.out(kLcr, 0x83);
    CHECK(f.in(kData) == 0x01);
    CHECK(f.in(kIer) == 0x02);
}

TEST_CASE("serial: IER keeps its low four bits", "[serial]") {
    Fixture f;
    f.out(kIer, 0xf0);
    CHECK(f.in(kIer) == 0x00);
    f.out(kIer, 0xff);
    CHECK(f.in(kIer) == 0x0f);
}

TEST_CASE("serial: THR-empty interrupt is raised on enable and cleared by reading IIR", "[serial]") {
    Fixture f;
    f.out(kIer, 0x02);
    CHECK(f.line.levels == std::vector<bool>{true});
    CHECK(f.in(kIir) == 0x02);
    CHECK(f.line.levels == std::vector<bool>{true, false});
    CHECK(f.in(kIir) == 0x01); // acknowledged

    SECTION("writing THR gives a fresh edge") {
        f.out(kData, 'a');
        CHECK(f.line.levels == std::vector<bool>{true, false, true});
        CHECK(f.in(kIir) == 0x02);
    }
    SECTION("re-enabling after a disable raises it again") {
        f.out(kIer, 0x00);
        f.out(kIer, 0x02);
        CHECK(f.line.high());
        CHECK(f.in(kIir) == 0x02);
    }
    SECTION("writing IER with the bit already set does not") {
        f.out(kIer, 0x03);
        CHECK_FALSE(f.line.high());
        CHECK(f.in(kIir) == 0x01);
    }
}

TEST_CASE("serial: writing THR clears a pending THR-empty interrupt before re-raising it", "[serial]") {
    Fixture f;
    f.out(kIer, 0x02); // pending, line high
    f.out(kData, 'a');
    CHECK(f.line.levels == std::vector<bool>{true, false, true});
    CHECK(f.output == "a");
}

TEST_CASE("serial: THR-empty with its enable bit off keeps the line low", "[serial]") {
    Fixture f;
    f.out(kData, 'a');
    f.out(kData, 'b');
    CHECK(f.line.levels.empty());
    CHECK(f.in(kIir) == 0x01);
}

TEST_CASE("serial: received data outranks THR empty", "[serial]") {
    Fixture f;
    f.out(kIer, 0x03);
    CHECK(f.in(kIir) == 0x02);
    f.out(kData, 'a'); // THR empty pending again
    CHECK(f.type("z") == 1);
    CHECK(f.line.high());
    CHECK(f.in(kIir) == 0x04); // receive data first; reading IIR leaves THR empty pending
    CHECK(f.in(kData) == 'z');
    CHECK(f.line.high());
    CHECK(f.in(kIir) == 0x02);
    CHECK_FALSE(f.line.high());
    CHECK(f.in(kIir) == 0x01);
}

TEST_CASE("serial: receive interrupt is cleared by draining the FIFO", "[serial]") {
    Fixture f;
    f.out(kIer, 0x01);
    CHECK(f.line.levels.empty());
    f.type("ab");
    CHECK(f.line.levels == std::vector<bool>{true});
    CHECK(f.in(kIir) == 0x04);
    CHECK(f.in(kIir) == 0x04); // reading IIR does not acknowledge received data
    f.in(kData);
    CHECK(f.line.high());
    f.in(kData);
    CHECK(f.line.levels == std::vector<bool>{true, false});
    CHECK(f.in(kIir) == 0x01);
}

TEST_CASE("serial: FIFO enable shows in IIR and splits timeout from trigger level", "[serial]") {
    Fixture f;
    f.out(kIer, 0x01);
    f.out(kFcr, 0x81); // enable, trigger level 8
    CHECK(f.in(kIir) == 0xc1);
    f.type("abc");
    CHECK(f.in(kIir) == 0xcc); // below the trigger: character timeout
    f.type("defgh");
    CHECK(f.in(kIir) == 0xc4); // 8 bytes: receive data available
    f.out(kFcr, 0x83);         // clear the receive FIFO
    CHECK(f.in(kLsr) == 0x60);
    CHECK(f.in(kIir) == 0xc1);
    CHECK_FALSE(f.line.high());

    f.type("q");
    f.out(kFcr, 0x00); // disabling the FIFO empties it too
    CHECK(f.in(kIir) == 0x01);
    CHECK(f.in(kLsr) == 0x60);
    f.type("r");
    CHECK(f.in(kIir) == 0x04);
}

TEST_CASE("serial: receive FIFO keeps order and reports overflow", "[serial]") {
    Fixture f;
    std::string input;
    for (std::size_t i = 0; i < Uart16550::kReceiveCapacity; ++i)
        input.push_back(static_cast<char>('0' + i % 64));
    CHECK(f.uart.input_space() == 0); // DTR and RTS low: the guest is not ready for input
    f.out(kMcr, 0x01);                // DTR alone: Linux's console set-up, before the port is opened
    CHECK(f.uart.input_space() == 0);
    f.out(kMcr, 0x02); // RTS alone
    CHECK(f.uart.input_space() == 0);
    f.out(kMcr, 0x03); // DTR and RTS: open and ready to receive
    CHECK(f.uart.input_space() == Uart16550::kReceiveCapacity);
    CHECK(f.type(input.substr(0, 10)) == 10);
    CHECK(f.uart.input_space() == Uart16550::kReceiveCapacity - 10);
    CHECK(f.type(input.substr(10) + "XYZ") == Uart16550::kReceiveCapacity - 10);
    CHECK(f.uart.input_space() == 0);

    CHECK(f.in(kLsr) == 0x63); // DR | OE | THRE | TEMT
    CHECK(f.in(kLsr) == 0x61); // OE cleared by the read
    std::string received;
    while ((f.in(kLsr)&0x01) != 0)
        received.push_back(static_cast<char>(f.in(kData)));
    CHECK(received == input); // the overflowing bytes were dropped, the stored ones kept their order
}

TEST_CASE("serial: overrun raises the line status interrupt until LSR is read", "[serial]") {
    Fixture f;
    f.out(kIer, 0x05);
    f.type(std::string(Uart16550::kReceiveCapacity + 1, 'x'));
    CHECK(f.in(kIir) == 0x06);
    CHECK(f.in(kLsr) == 0x63);
    CHECK(f.in(kIir) == 0x04);
}

TEST_CASE("serial: input arriving in pieces wraps around the FIFO in order", "[serial]") {
    Fixture f;
    std::string received;
    for (int round = 0; round < 10; ++round) {
        std::string chunk;
        for (int i = 0; i < 37; ++i)
            chunk.push_back(static_cast<char>('a' + (round * 37 + i) % 26));
        REQUIRE(f.type(chunk) == chunk.size());
        for (std::size_t i = 0; i < chunk.size(); ++i)
            received.push_back(static_cast<char>(f.in(kData)));
        CHECK(received.substr(received.size() - chunk.size()) == chunk);
    }
    CHECK((f.in(kLsr)&0x03) == 0);
}

TEST_CASE("serial: loopback sends THR to the receiver and MCR to MSR", "[serial]") {
    Fixture f;
    f.out(kMcr, 0x10);
    CHECK(f.in(kMsr) == 0x0b); // CTS, DSR and DCD dropped: only their deltas show
    CHECK(f.in(kMsr) == 0x00);
    f.out(kData, 0x5a);
    CHECK(f.output.empty());
    CHECK(f.in(kLsr) == 0x61);
    CHECK(f.in(kData) == 0x5a);

    f.out(kMcr, 0x1a); // loopback, RTS, OUT2: the probe Linux's 8250 driver does
    CHECK((f.in(kMsr)&0xf0) == 0x90);
    f.out(kMcr, 0x1f); // DTR, RTS, OUT1, OUT2
    CHECK(f.in(kMsr) == 0xf2);
    f.out(kMcr, 0x1b); // OUT1 falls: trailing edge of RI
    CHECK(f.in(kMsr) == 0xb4);

    CHECK(f.type("ignored") == 0); // the serial input is disconnected in loopback
    CHECK(f.uart.input_space() == 0);

    f.out(kMcr, 0x00);
    CHECK(f.in(kMcr) == 0x00);
    f.out(kData, 'o');
    CHECK(f.output == "o");
    CHECK(f.type("k") == 1);
}

TEST_CASE("serial: modem status interrupt on delta, cleared by reading MSR", "[serial]") {
    Fixture f;
    f.out(kIer, 0x08);
    f.out(kMcr, 0x10);
    CHECK(f.line.high());
    CHECK(f.in(kIir) == 0x00);
    f.in(kMsr);
    CHECK_FALSE(f.line.high());
    CHECK(f.in(kIir) == 0x01);
}

TEST_CASE("serial: the scratch register keeps what was written", "[serial]") {
    Fixture f;
    for (unsigned value : {0x00u, 0x5au, 0xa5u, 0xffu}) {
        f.out(kScr, static_cast<std::uint8_t>(value));
        CHECK(f.in(kScr) == value);
    }
}

TEST_CASE("serial: wide and out-of-range accesses", "[serial]") {
    Fixture f;
    f.out(kScr, 0x42);
    std::array<std::byte, 4> wide{};
    f.uart.read(kScr, wide);
    CHECK(wide == std::array{std::byte{0x42}, std::byte{0xff}, std::byte{0xff}, std::byte{0xff}});

    const std::array<std::byte, 2> word{std::byte{'A'}, std::byte{'B'}};
    f.uart.write(kData, word);
    CHECK(f.output == "A");

    f.uart.read(8, wide);
    CHECK(wide == std::array{std::byte{0xff}, std::byte{0xff}, std::byte{0xff}, std::byte{0xff}});
    CHECK(f.uart.write(100, word) == ExitAction::Resume);
    CHECK(f.uart.read(0, {}) == ExitAction::Resume);
    CHECK(f.uart.write(0, {}) == ExitAction::Resume);
    CHECK(f.output == "A");
    CHECK(f.uart.name() == "ttyS0");
}

TEST_CASE("serial: any sequence of guest accesses is answered", "[serial]") {
    Fixture f;
    std::uint32_t state = 12345;
    for (int i = 0; i < 20000; ++i) {
        state = state * 1103515245u + 12345u;
        const auto offset = static_cast<std::uint64_t>((state >> 8) % 10);
        const auto value = static_cast<std::uint8_t>(state >> 16);
        if ((state & 1) != 0)
            f.out(offset, value);
        else
            f.in(offset);
        if (i % 7 == 0) f.type("in");
    }
    // The line level always matches IIR.
    const bool pending = (f.in(kIir)&0x01) == 0;
    CHECK(f.line.high() == pending);
}

TEST_CASE("line tap: splits lines on \\n, \\r\\n and \\r", "[serial]") {
    std::vector<std::string> lines;
    SerialLineTap tap([&](const SerialLineTap::Line& line) {
        CHECK(line.complete);
        CHECK_FALSE(line.continues_previous);
        lines.emplace_back(line.text);
    });
    tap.feed(bytes_of("@result ok 1\r\nsecond\nthi"));
    CHECK(lines == std::vector<std::string>{"@result ok 1", "second"});
    tap.feed(bytes_of("rd\r"));
    tap.feed(bytes_of("\nfourth\r\rsixth\n\n"));
    CHECK(lines == std::vector<std::string>{"@result ok 1", "second", "third", "fourth", "", "sixth", ""});
    tap.feed(bytes_of("partial"));
    CHECK(lines.size() == 7);
    tap.flush();
    CHECK(lines.back() == "partial");
    tap.flush();
    CHECK(lines.size() == 8);
}

TEST_CASE("line tap: overlong lines come in pieces", "[serial]") {
    std::vector<SerialLineTap::Line> pieces;
    std::vector<std::string> texts;
    SerialLineTap tap(
        [&](const SerialLineTap::Line& line) {
            pieces.push_back(line);
            texts.emplace_back(line.text);
        },
        4);

    SECTION("longer than the limit") {
        tap.feed(bytes_of("abcdefghij\r\nxy\n"));
        CHECK(texts == std::vector<std::string>{"abcd", "efgh", "ij", "xy"});
        REQUIRE(pieces.size() == 4);
        CHECK_FALSE(pieces[0].complete);
        CHECK_FALSE(pieces[0].continues_previous);
        CHECK_FALSE(pieces[1].complete);
        CHECK(pieces[1].continues_previous);
        CHECK(pieces[2].complete);
        CHECK(pieces[2].continues_previous);
        CHECK(pieces[3].complete);
        CHECK_FALSE(pieces[3].continues_previous);
    }
    SECTION("exactly the limit is one line") {
        tap.feed(bytes_of("abcd\n"));
        CHECK(texts == std::vector<std::string>{"abcd"});
        CHECK(pieces[0].complete);
    }
    SECTION("a multiple of the limit ends with an empty closing piece") {
        tap.feed(bytes_of("abcdefgh"));
        CHECK(texts == std::vector<std::string>{"abcd"});
        tap.feed(bytes_of("\n"));
        CHECK(texts == std::vector<std::string>{"abcd", "efgh"});
        CHECK(pieces.back().complete);
        CHECK(pieces.back().continues_previous);
    }
    SECTION("the default limit is 4096") {
        std::vector<std::string> long_lines;
        SerialLineTap wide([&](const SerialLineTap::Line& line) { long_lines.emplace_back(line.text); });
        wide.feed(bytes_of(std::string(5000, 'z') + "\n"));
        REQUIRE(long_lines.size() == 2);
        CHECK(long_lines[0].size() == 4096);
        CHECK(long_lines[1].size() == 904);
    }
}

TEST_CASE("line tap: fed by the UART sink", "[serial]") {
    RecordingLine line;
    std::vector<std::string> results;
    SerialLineTap tap([&](const SerialLineTap::Line& piece) {
        if (piece.complete && !piece.continues_previous && piece.text.starts_with("@result "))
            results.emplace_back(piece.text.substr(8));
    });
    Uart16550 uart(
        "ttyS0", [&](std::span<const std::byte> data) { tap.feed(data); }, line);
    for (char c : std::string_view("boot\r\n@result pass 42\r\n@resu"))
        uart.write(0, std::array{static_cast<std::byte>(c)});
    CHECK(results == std::vector<std::string>{"pass 42"});
}
