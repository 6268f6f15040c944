// Configuration mechanism #1 as Linux's probe uses it: CONFIG_ADDRESS reads back, the host bridge answers at
// 00:00.0, everything else reads all ones, narrow accesses to 0xcf8 are not configuration cycles.
#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>

#include "devices/legacy/pci_host.hpp"
#include "devices/legacy/port_sink.hpp"

using namespace vmmlab;
using namespace vmmlab::devices;

namespace {
constexpr std::uint64_t kData = 4;
constexpr std::uint32_t kEnable = 0x80000000; // CONFIG_ADDRESS bit 31

std::uint32_t in(Device& device, std::uint64_t offset, std::size_t width) {
    std::byte bytes[4]{std::byte{0xee}, std::byte{0xee}, std::byte{0xee}, std::byte{0xee}};
    CHECK(device.read(offset, std::span(bytes, width)) == ExitAction::Resume);
    std::uint32_t value = 0;
    std::memcpy(&value, bytes, width);
    return value;
}

void out(Device& device, std::uint64_t offset, std::uint32_t value, std::size_t width) {
    std::byte bytes[4];
    std::memcpy(bytes, &value, sizeof bytes);
    CHECK(device.write(offset, std::span<const std::byte>(bytes, width)) == ExitAction::Resume);
}

// CONFIG_ADDRESS for bus/device/function/register with the enable bit.
std::uint32_t address(unsigned bus, unsigned device, unsigned function, unsigned reg) {
    return kEnable | bus << 16 | device << 11 | function << 8 | (reg & 0xfc);
}

std::uint32_t config_read(PciHost& bridge, std::uint32_t config_address, unsigned byte, std::size_t width) {
    out(bridge, 0, config_address, 4);
    return in(bridge, kData + byte, width);
}
} // namespace

TEST_CASE("pci: CONFIG_ADDRESS reads back as Linux's type 1 probe expects", "[pci]") {
    PciHost bridge;
    CHECK(in(bridge, 0, 4) == 0);
    out(bridge, 3, 0x01, 1); // the probe's outb(0x01, 0xcfb) first: not a configuration cycle
    CHECK(in(bridge, 0, 4) == 0);
    out(bridge, 0, 0x80000000, 4);
    CHECK(in(bridge, 0, 4) == 0x80000000);
    out(bridge, 0, 0xffffffff, 4);
    CHECK(in(bridge, 0, 4) == 0x80fffffc); // reserved bits 30:24 and 1:0 read 0
    // Byte reads of 0xcf8 and 0xcfa return all ones: not mechanism #2, whose probe wants zeros there.
    CHECK(in(bridge, 0, 1) == 0xff);
    CHECK(in(bridge, 2, 1) == 0xff);
}

TEST_CASE("pci: the host bridge at 00:00.0 and nothing else", "[pci]") {
    PciHost bridge;
    CHECK(config_read(bridge, address(0, 0, 0, 0), 0, 4) == 0x0d57'8086);
    CHECK(config_read(bridge, address(0, 0, 0, 0x08), 0, 4) == 0x0600'0000); // class 06/00/00, revision 0
    CHECK(config_read(bridge, address(0, 0, 0, 0x08), 2, 2) == 0x0600);      // PCI_CLASS_DEVICE, 16 bits
    CHECK(config_read(bridge, address(0, 0, 0, 0x0c), 2, 1) == 0x00);        // header type 0, one function
    CHECK(config_read(bridge, address(0, 0, 0, 0x10), 0, 4) == 0);           // no BAR
    CHECK(config_read(bridge, address(0, 0, 0, 0x3c), 1, 1) == 0);           // no interrupt pin
    // Any other function, device or bus, and a disabled CONFIG_ADDRESS: all ones.
    CHECK(config_read(bridge, address(0, 0, 1, 0), 0, 4) == 0xffffffff);
    CHECK(config_read(bridge, address(0, 1, 0, 0), 0, 2) == 0xffff);
    CHECK(config_read(bridge, address(1, 0, 0, 0), 0, 4) == 0xffffffff);
    CHECK(config_read(bridge, address(0, 0, 0, 0) & ~kEnable, 0, 4) == 0xffffffff);
}

TEST_CASE("pci: only the command register's enable bits are writable", "[pci]") {
    PciHost bridge;
    out(bridge, 0, address(0, 0, 0, 0x04), 4);
    out(bridge, kData, 0xffffffff, 4);                // command and status
    CHECK((in(bridge, kData, 4) & 0xffff) != 0xffff); // reserved command bits stay 0
    out(bridge, kData, 0, 2);
    CHECK(in(bridge, kData, 2) == 0);
    out(bridge, 0, address(0, 0, 0, 0), 4);
    out(bridge, kData, 0x12345678, 4); // vendor and device are read-only
    CHECK(in(bridge, kData, 4) == 0x0d57'8086);
    out(bridge, 0, address(0, 0, 0, 0x10), 4);
    out(bridge, kData, 0xffffffff, 4); // BAR sizing finds nothing
    CHECK(in(bridge, kData, 4) == 0);
}

TEST_CASE("port sink: reads its byte at every width, drops writes, counts both", "[pci]") {
    PortSink post("post-port");
    CHECK(in(post, 0, 1) == 0xff);
    CHECK(in(post, 0, 4) == 0xffffffff);
    out(post, 0, 0x42, 1);
    CHECK(post.accesses() == 3);
    PortSink zero("zero", 0x00);
    CHECK(in(zero, 0, 2) == 0);
    CHECK(post.name() == "post-port");
}
