#include <catch2/catch.hpp>
#include <cstdint>
#include <vector>

#include "devices/legacy/i8042.hpp"

using namespace vmmlab;
using namespace vmmlab::devices;

namespace {
struct RecordingLine : InterruptLine {
    std::vector<bool> levels;
    void set_level(bool high) override { levels.push_back(high); }
    bool high() const { return !levels.empty() && levels.back(); }
};

constexpr std::uint8_t kObf = 0x01, kSys = 0x04, kCmd = 0x08, kInh = 0x10, kAuxData = 0x20;

struct Fixture {
    RunControl control;
    RecordingLine keyboard, aux;
    I8042 controller{control, keyboard, aux};

    std::uint8_t status() { return in(controller.command_port()); }
    std::uint8_t data() { return in(controller.data_port()); }
    ExitAction command(std::uint8_t value) { return out(controller.command_port(), value); }
    ExitAction send(std::uint8_t value) { return out(controller.data_port(), value); }
    // Everything queued, in order.
    std::vector<std::uint8_t> drain() {
        std::vector<std::uint8_t> bytes;
        while ((status() & kObf) != 0 && bytes.size() < 64)
            bytes.push_back(data());
        return bytes;
    }

    static std::uint8_t in(Device& port) {
        std::byte value{0xee};
        CHECK(port.read(0, std::span(&value, 1)) == ExitAction::Resume);
        return std::to_integer<std::uint8_t>(value);
    }
    static ExitAction out(Device& port, std::uint8_t value) {
        const std::byte byte{value};
        return port.write(0, std::span(&byte, 1));
    }
};
using Bytes = std::vector<std::uint8_t>;
} // namespace

TEST_CASE("i8042: status register at power-on and after a command", "[linux][i8042]") {
    Fixture f;
    CHECK(f.status() == (kInh | kSys));
    CHECK(f.command(0xad) == ExitAction::Resume); // disable keyboard: nothing to read
    CHECK(f.status() == (kInh | kSys | kCmd));
    CHECK(f.send(0xf4) == ExitAction::Resume); // a data write clears A2
    CHECK((f.status() & kCmd) == 0);
    CHECK(f.controller.data_port().name() == "i8042-data");
    CHECK(f.controller.command_port().name() == "i8042-command");
}

TEST_CASE("i8042: Linux's probe sequence gets the answers it checks for", "[linux][i8042]") {
    Fixture f;
    CHECK(f.drain().empty()); // i8042_flush
    f.command(0xaa);          // controller self test
    CHECK(f.status() == (kInh | kSys | kCmd | kObf));
    CHECK(f.drain() == Bytes{0x55});
    f.command(0x20); // read the command byte
    CHECK(f.drain() == Bytes{I8042::kInitialCommandByte});
    f.command(0x60); // write it
    f.send(0x47);
    CHECK(f.controller.command_byte() == 0x47);
    f.command(0x20);
    CHECK(f.drain() == Bytes{0x47});
    f.command(0xab); // keyboard interface test
    f.command(0xa9); // aux interface test
    CHECK(f.drain() == Bytes{0x00, 0x00});

    // AUX loopback: the byte comes back marked as aux data.
    f.command(0xd3);
    f.send(0x5a);
    CHECK((f.status() & kAuxData) != 0);
    CHECK(f.drain() == Bytes{0x5a});
    // Aux disable / enable flip the command byte's bit 5.
    f.command(0xa7);
    CHECK((f.controller.command_byte() & 0x20) != 0);
    f.command(0xa8);
    CHECK((f.controller.command_byte() & 0x20) == 0);
    // No mouse: bytes sent to the aux device are answered with resend.
    f.command(0xd4);
    f.send(0xf2);
    CHECK((f.status() & kAuxData) != 0);
    CHECK(f.drain() == Bytes{0xfe});
}

TEST_CASE("i8042: the keyboard acknowledges commands and identifies itself", "[linux][i8042]") {
    Fixture f;
    f.send(0xf2); // identify, with translation (XLATE is set at power-on)
    CHECK(f.drain() == Bytes{0xfa, 0xab, 0x41});
    f.command(0x60);
    f.send(0x05); // XLATE off
    f.send(0xf2);
    CHECK(f.drain() == Bytes{0xfa, 0xab, 0x83});
    f.send(0xff); // reset: ack, then self test passed
    CHECK(f.drain() == Bytes{0xfa, 0xaa});
    f.send(0xed); // set LEDs: ack, argument, ack
    CHECK(f.drain() == Bytes{0xfa});
    f.send(0x07);
    CHECK(f.drain() == Bytes{0xfa});
    f.send(0xf0); // get scan code set
    f.send(0x00);
    CHECK(f.drain() == Bytes{0xfa, 0xfa, 0x02});
    f.send(0xee);
    CHECK(f.drain() == Bytes{0xee});
    f.send(0xf5);
    f.send(0xf4);
    CHECK(f.drain() == Bytes{0xfa, 0xfa});
    CHECK(f.data() == 0xfa); // an empty buffer reads the last byte again
}

TEST_CASE("i8042: IRQ 1 rises per byte and follows the command byte", "[linux][i8042]") {
    Fixture f;
    f.send(0xf2); // three bytes queued; the keyboard interrupt is enabled at power-on
    CHECK(f.keyboard.levels == std::vector<bool>{true});
    CHECK(f.data() == 0xfa);
    CHECK(f.keyboard.levels == std::vector<bool>{true, false, true}); // a fresh edge for the next byte
    f.data();
    f.data();
    CHECK(f.keyboard.levels == std::vector<bool>{true, false, true, false, true, false});
    CHECK(f.aux.levels.empty());

    f.command(0x60);
    f.send(0x44); // interrupts off
    f.send(0xf4);
    CHECK_FALSE(f.keyboard.high());
    f.command(0x60);
    f.send(0x47); // both on: the queued byte raises IRQ 1 now
    CHECK(f.keyboard.high());
    f.data();
    CHECK_FALSE(f.keyboard.high());

    f.command(0xd3); // aux byte: IRQ 12
    f.send(0xa5);
    CHECK(f.aux.high());
    CHECK_FALSE(f.keyboard.high());
    CHECK(f.data() == 0xa5);
    CHECK_FALSE(f.aux.high());
}

TEST_CASE("i8042: the queue drops bytes beyond its capacity", "[linux][i8042]") {
    Fixture f;
    for (std::size_t i = 0; i < I8042::kQueueCapacity + 4; ++i)
        f.send(0xf4);
    CHECK(f.drain().size() == I8042::kQueueCapacity);
}

TEST_CASE("i8042: pulsing the reset line reboots", "[linux][i8042]") {
    SECTION("command 0xfe") {
        Fixture f;
        CHECK(f.command(0xff) == ExitAction::Resume); // pulses nothing
        CHECK_FALSE(f.control.stopping());
        CHECK(f.command(0xfe) == ExitAction::Reset);
        CHECK(f.control.stopping());
        CHECK(f.control.status() == 0);
        CHECK(f.control.reason() == "the guest rebooted (i8042 reset line)");
    }
    SECTION("writing the output port with bit 0 clear") {
        Fixture f;
        f.command(0xd0);
        CHECK(f.drain() == Bytes{0x03});
        f.command(0xd1);
        CHECK(f.send(0x03) == ExitAction::Resume); // A20 on, no reset
        CHECK_FALSE(f.control.stopping());
        f.command(0xd1);
        CHECK(f.send(0x02) == ExitAction::Reset);
        CHECK(f.control.stopping());
    }
}
