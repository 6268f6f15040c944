#include <catch2/catch.hpp>
#include <vector>

#include "bus/bus.hpp"
#include "cpu/exit_handler.hpp"
#include "kvm/kvm_uapi.hpp"

using namespace vmmlab;

namespace {
// Records every access; reads answer the low byte of the offset.
struct RecordingDevice final : Device {
    std::string label;
    std::vector<std::pair<std::uint64_t, std::size_t>> writes;
    explicit RecordingDevice(std::string name) : label(std::move(name)) {}
    std::string_view name() const override { return label; }
    ExitAction read(std::uint64_t offset, std::span<std::byte> data) override {
        for (auto& byte : data)
            byte = std::byte(offset & 0xff);
        return ExitAction::Resume;
    }
    ExitAction write(std::uint64_t offset, std::span<const std::byte> data) override {
        writes.emplace_back(offset, data.size());
        return ExitAction::Resume;
    }
};
} // namespace

TEST_CASE("bus ranges may touch but never overlap or wrap", "[bus]") {
    PioBus bus;
    RecordingDevice a("uart"), b("exit"), c("other");
    REQUIRE(bus.insert(PioAddress{0x3f8}, 8, a));
    REQUIRE(bus.insert(PioAddress{0x400}, 4, b)); // starts right after a's last byte (0x3ff)
    CHECK(bus.insert(PioAddress{0x3ff}, 1, c).error() == "other: range 0x3ff+0x1 overlaps uart");
    CHECK(bus.insert(PioAddress{0x3f0}, 9, c).error() == "other: range 0x3f0+0x9 overlaps uart");
    CHECK(bus.insert(PioAddress{0x403}, 2, c).error() == "other: range 0x403+0x2 overlaps exit");
    CHECK(bus.insert(PioAddress{0xfffe}, 3, c).error() == "other: range 0xfffe+0x3 is empty or wraps");
    CHECK_FALSE(bus.insert(PioAddress{0x500}, 0, c));
    CHECK(bus.insert(PioAddress{0xfffe}, 2, c)); // up to the last port is fine
    CHECK(bus.ranges().size() == 3);
}

TEST_CASE("a lookup needs every byte of the access inside one range", "[bus]") {
    MmioBus bus;
    RecordingDevice device("bench");
    REQUIRE(bus.insert(MmioAddress{0xd0000000}, 0x1000, device));
    auto hit = bus.find(MmioAddress{0xd0000ffc}, 4);
    REQUIRE(hit);
    CHECK(hit->device == &device);
    CHECK(hit->offset == 0xffc);
    CHECK_FALSE(bus.find(MmioAddress{0xd0000ffd}, 4)); // last byte outside
    CHECK_FALSE(bus.find(MmioAddress{0xcfffffff}, 2)); // first byte outside
    CHECK_FALSE(bus.find(MmioAddress{0xd0001000}, 1));
    CHECK_FALSE(bus.find(MmioAddress{0xd0000000}, 0));
    CHECK_FALSE(bus.find(MmioAddress{~0ULL}, 8));
}

TEST_CASE("unclaimed accesses are answered with all ones, dropped and counted", "[bus]") {
    PioBus pio;
    MmioBus mmio;
    RecordingDevice device("dev");
    REQUIRE(pio.insert(PioAddress{0x60}, 1, device));
    UnclaimedAccesses unclaimed;
    ExitContext context{pio, mmio, unclaimed, 0};

    std::array<std::byte, 4> data{};
    CHECK(handle_exit(IoIn{PioAddress{0x80}, 4, 1, data}, context) == ExitAction::Resume);
    CHECK(data ==
          std::array<std::byte, 4>{std::byte{0xff}, std::byte{0xff}, std::byte{0xff}, std::byte{0xff}});
    CHECK(handle_exit(MmioWrite{MmioAddress{0x1000}, data}, context) == ExitAction::Resume);
    CHECK(unclaimed.pio == 1);
    CHECK(unclaimed.mmio == 1);

    // A 2-byte access at a 1-byte device does not reach it: its last byte is unclaimed.
    CHECK(handle_exit(IoOut{PioAddress{0x60}, 2, 1, std::span(data).first(2)}, context) ==
          ExitAction::Resume);
    CHECK(device.writes.empty());
    CHECK(unclaimed.pio == 2);
}

TEST_CASE("string I/O reaches the device once per element", "[bus]") {
    PioBus pio;
    MmioBus mmio;
    RecordingDevice device("dev");
    REQUIRE(pio.insert(PioAddress{0x3f8}, 8, device));
    UnclaimedAccesses unclaimed;
    ExitContext context{pio, mmio, unclaimed, 0};
    std::array<std::byte, 3> data{};
    CHECK(handle_exit(IoOut{PioAddress{0x3f8}, 1, 3, data}, context) == ExitAction::Resume);
    CHECK(device.writes.size() == 3);
}

TEST_CASE("exits the monitor cannot continue from are fatal, resets and shutdowns end the VM", "[bus]") {
    PioBus pio;
    MmioBus mmio;
    UnclaimedAccesses unclaimed;
    ExitContext context{pio, mmio, unclaimed, 0};
    CHECK(handle_exit(FailEntry{0x21, 0}, context) == ExitAction::Fatal);
    CHECK(handle_exit(InternalError{1}, context) == ExitAction::Fatal);
    CHECK(handle_exit(Unknown{99}, context) == ExitAction::Fatal);
    CHECK(handle_exit(Shutdown{}, context) == ExitAction::Reset);
    CHECK(handle_exit(SystemEvent{KVM_SYSTEM_EVENT_SHUTDOWN}, context) == ExitAction::Stop);
    CHECK(handle_exit(SystemEvent{KVM_SYSTEM_EVENT_RESET}, context) == ExitAction::Reset);
}
