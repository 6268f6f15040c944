#include <catch2/catch.hpp>
#include <cstring>
#include <vector>

#include "cpu/exit.hpp"
#include "kvm/kvm_uapi.hpp"

using namespace vmmlab;

namespace {
// A kvm_run area as the kernel maps it: the struct, then room for PIO data.
struct FakeRunArea {
    std::vector<std::byte> bytes = std::vector<std::byte>(4096);
    kvm_run& run() { return *reinterpret_cast<kvm_run*>(bytes.data()); }
    void io(std::uint8_t direction, std::uint16_t port, std::uint8_t size, std::uint32_t count,
            std::uint64_t offset) {
        run().exit_reason = KVM_EXIT_IO;
        run().io.direction = direction;
        run().io.port = port;
        run().io.size = size;
        run().io.count = count;
        run().io.data_offset = offset;
    }
};
} // namespace

TEST_CASE("an OUT exit decodes to port, size, count and the written bytes", "[exit]") {
    FakeRunArea area;
    area.io(KVM_EXIT_IO_OUT, 0x3f8, 2, 1, 1024);
    const std::uint16_t value = 0xbeef;
    std::memcpy(area.bytes.data() + 1024, &value, sizeof value);

    auto exit = decode(area.bytes);
    REQUIRE(std::holds_alternative<IoOut>(exit));
    const auto& out = std::get<IoOut>(exit);
    CHECK(out.port == PioAddress{0x3f8});
    CHECK(out.size == 2);
    CHECK(out.count == 1);
    REQUIRE(out.data.size() == 2);
    CHECK(out.data.data() == area.bytes.data() + 1024);
    CHECK(describe(exit) == "io-out port 0x3f8 size 2 count 1");
}

TEST_CASE("an IN exit hands out a writable span inside the run area", "[exit]") {
    FakeRunArea area;
    area.io(KVM_EXIT_IO_IN, 0x60, 1, 4, 2048); // INSB with rep count 4
    auto exit = decode(area.bytes);
    REQUIRE(std::holds_alternative<IoIn>(exit));
    auto& in = std::get<IoIn>(exit);
    REQUIRE(in.data.size() == 4);
    in.data[3] = std::byte{0x5a};
    CHECK(area.bytes[2048 + 3] == std::byte{0x5a});
}

TEST_CASE("I/O data outside the run area is reported as malformed, not read", "[exit]") {
    FakeRunArea area;
    SECTION("offset past the end") {
        area.io(KVM_EXIT_IO_OUT, 0x80, 1, 1, 4096);
    }
    SECTION("last byte past the end") {
        area.io(KVM_EXIT_IO_OUT, 0x80, 4, 2, 4090);
    }
    SECTION("length overflowing 32 bits") {
        area.io(KVM_EXIT_IO_OUT, 0x80, 4, 0xffffffffU, 64);
    }
    SECTION("an access size no instruction makes") {
        area.io(KVM_EXIT_IO_OUT, 0x80, 3, 1, 1024);
    }
    SECTION("a zero count") {
        area.io(KVM_EXIT_IO_IN, 0x80, 1, 0, 1024);
    }
    SECTION("an unknown direction") {
        area.io(7, 0x80, 1, 1, 1024);
    }
    auto exit = decode(area.bytes);
    REQUIRE(std::holds_alternative<Unknown>(exit));
    CHECK(std::get<Unknown>(exit).reason == KVM_EXIT_IO);
    CHECK(std::get<Unknown>(exit).malformed);
}

TEST_CASE("MMIO exits decode to address and a span of the access length", "[exit]") {
    FakeRunArea area;
    area.run().exit_reason = KVM_EXIT_MMIO;
    area.run().mmio.phys_addr = 0xfeb00010;
    area.run().mmio.len = 4;
    area.run().mmio.is_write = 1;
    auto write = decode(area.bytes);
    REQUIRE(std::holds_alternative<MmioWrite>(write));
    CHECK(std::get<MmioWrite>(write).address == MmioAddress{0xfeb00010});
    CHECK(std::get<MmioWrite>(write).data.size() == 4);

    area.run().mmio.is_write = 0;
    area.run().mmio.len = 8;
    auto read = decode(area.bytes);
    REQUIRE(std::holds_alternative<MmioRead>(read));
    CHECK(std::get<MmioRead>(read).data.size() == 8);

    area.run().mmio.len = 9;
    auto bad = decode(area.bytes);
    REQUIRE(std::holds_alternative<Unknown>(bad));
    CHECK(std::get<Unknown>(bad).malformed);
}

TEST_CASE("simple exits carry their fields", "[exit]") {
    FakeRunArea area;
    area.run().exit_reason = KVM_EXIT_HLT;
    CHECK(std::holds_alternative<Hlt>(decode(area.bytes)));

    area.run().exit_reason = KVM_EXIT_SYSTEM_EVENT;
    area.run().system_event.type = KVM_SYSTEM_EVENT_RESET;
    auto event = decode(area.bytes);
    REQUIRE(std::holds_alternative<SystemEvent>(event));
    CHECK(std::get<SystemEvent>(event).type == KVM_SYSTEM_EVENT_RESET);

    area.run().exit_reason = KVM_EXIT_FAIL_ENTRY;
    area.run().fail_entry.hardware_entry_failure_reason = 0x21;
    area.run().fail_entry.cpu = 3;
    CHECK(describe(decode(area.bytes)) == "fail-entry hardware reason 0x21 cpu 3");

    area.run().exit_reason = 9999;
    auto unknown = decode(area.bytes);
    REQUIRE(std::holds_alternative<Unknown>(unknown));
    CHECK_FALSE(std::get<Unknown>(unknown).malformed);
    CHECK(describe(unknown) == "unknown (reason 9999)");
}

TEST_CASE("a run area smaller than kvm_run is rejected", "[exit]") {
    std::vector<std::byte> tiny(16);
    auto exit = decode(tiny);
    REQUIRE(std::holds_alternative<Unknown>(exit));
    CHECK(std::get<Unknown>(exit).malformed);
}
