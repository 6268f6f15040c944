#include <catch2/catch.hpp>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "arch/x86/mptable.hpp"
#include "linux_test_support.hpp"

using namespace vmmlab;
using namespace vmmlab::x86::mptable;
using vmmlab::test::read_bytes;
using vmmlab::test::vector_memory;

namespace {
template <typename T>
T field(const std::vector<std::byte>& bytes, std::size_t offset) {
    REQUIRE(offset + sizeof(T) <= bytes.size());
    T value;
    std::memcpy(&value, bytes.data() + offset, sizeof value);
    return value;
}

unsigned byte_sum(const std::vector<std::byte>& bytes) {
    unsigned sum = 0;
    for (std::byte b : bytes)
        sum += std::to_integer<unsigned>(b);
    return sum & 0xff;
}

// Scans [start, start + length) on 16-byte boundaries for "_MP_" with a valid checksum, as Linux does.
std::optional<std::uint64_t> find_floating_pointer(const GuestMemory& memory, std::uint64_t start,
                                                   std::uint64_t length) {
    for (std::uint64_t at = start; at < start + length; at += 16) {
        const auto bytes = read_bytes(memory, at, 16);
        if (std::memcmp(bytes.data(), "_MP_", 4) == 0 && byte_sum(bytes) == 0) return at;
    }
    return std::nullopt;
}

struct IoInterrupt {
    std::uint8_t type, irq, ioapic, input;
};
} // namespace

TEST_CASE("mptable: the floating pointer and configuration table parse back", "[linux][mptable]") {
    const unsigned vcpus = GENERATE(1U, 4U, 64U);
    const auto memory = vector_memory({{0, 1ULL << 20}});
    MpTableConfig config;
    config.vcpus = vcpus;
    auto table = write_mp_table(memory, GuestAddress{kMpTableAddress}, kMpTableAreaSize, config);
    REQUIRE(table.has_value());

    const auto pointer_at = find_floating_pointer(memory, 0xf0000, 0x10000);
    REQUIRE(pointer_at.has_value());
    CHECK(*pointer_at == table->floating_pointer.value);
    const auto pointer = read_bytes(memory, *pointer_at, 16);
    CHECK(field<std::uint8_t>(pointer, 8) == 1);  // length: 16 bytes
    CHECK(field<std::uint8_t>(pointer, 9) == 4);  // MP spec 1.4
    CHECK(field<std::uint8_t>(pointer, 11) == 0); // a configuration table is present
    const auto config_at = field<std::uint32_t>(pointer, 4);
    CHECK(config_at == table->config_table.value);

    const auto header = read_bytes(memory, config_at, 44);
    CHECK(std::string(reinterpret_cast<const char*>(header.data()), 4) == "PCMP");
    const auto length = field<std::uint16_t>(header, 4);
    const auto bytes = read_bytes(memory, config_at, length);
    CHECK(byte_sum(bytes) == 0);
    CHECK(field<std::uint8_t>(bytes, 6) == 4);
    CHECK(field<std::uint32_t>(bytes, 36) == 0xfee00000);
    const auto count = field<std::uint16_t>(bytes, 34);
    CHECK(count == table->entry_count);

    std::map<std::uint8_t, unsigned> counts;
    std::vector<IoInterrupt> interrupts;
    std::size_t offset = 44;
    int last_type = -1;
    for (unsigned i = 0; i < count; ++i) {
        const auto type = field<std::uint8_t>(bytes, offset);
        CHECK(int{type} >= last_type); // entries sorted by type, as the spec requires
        last_type = type;
        ++counts[type];
        switch (type) {
        case 0: {
            const auto apic_id = field<std::uint8_t>(bytes, offset + 1);
            CHECK(apic_id == counts[0] - 1);
            const auto flags = field<std::uint8_t>(bytes, offset + 3);
            CHECK((flags & 1) == 1);                     // enabled
            CHECK(((flags & 2) != 0) == (apic_id == 0)); // vCPU 0 boots
            offset += 20;
            break;
        }
        case 1:
            CHECK(std::string(reinterpret_cast<const char*>(bytes.data() + offset + 2), 6) == "ISA   ");
            offset += 8;
            break;
        case 2:
            CHECK(field<std::uint8_t>(bytes, offset + 1) == vcpus); // the ID after the last vCPU
            CHECK(field<std::uint8_t>(bytes, offset + 3) == 1);
            CHECK(field<std::uint32_t>(bytes, offset + 4) == 0xfec00000);
            offset += 8;
            break;
        case 3: {
            IoInterrupt entry{};
            entry.type = field<std::uint8_t>(bytes, offset + 1);
            entry.irq = field<std::uint8_t>(bytes, offset + 5);
            entry.ioapic = field<std::uint8_t>(bytes, offset + 6);
            entry.input = field<std::uint8_t>(bytes, offset + 7);
            interrupts.push_back(entry);
            offset += 8;
            break;
        }
        case 4:
            offset += 8;
            break;
        default:
            FAIL("unexpected entry type " << int{type});
        }
    }
    CHECK(offset == length);
    CHECK(counts[0] == vcpus);
    CHECK(counts[1] == 1);
    CHECK(counts[2] == 1);
    CHECK(counts[4] == 2);
    // ExtINT on input 0, IRQ 0 on input 2, IRQ n on input n, no IRQ 2.
    REQUIRE(interrupts.size() == 16);
    CHECK(interrupts[0].type == 3);
    CHECK(interrupts[0].input == 0);
    CHECK(interrupts[1].type == 0);
    CHECK(interrupts[1].irq == 0);
    CHECK(interrupts[1].input == 2);
    for (std::size_t i = 2; i < interrupts.size(); ++i) {
        CHECK(interrupts[i].type == 0);
        CHECK(interrupts[i].irq != 2);
        CHECK(interrupts[i].input == interrupts[i].irq);
        CHECK(interrupts[i].ioapic == vcpus);
    }
}

TEST_CASE("mptable: bad configurations and areas are refused", "[linux][mptable]") {
    MpTableConfig config;
    config.vcpus = 0;
    CHECK_FALSE(build_mp_table(GuestAddress{kMpTableAddress}, config).has_value());
    config.vcpus = kMaxVcpus + 1;
    CHECK_FALSE(build_mp_table(GuestAddress{kMpTableAddress}, config).has_value());
    config.vcpus = 4;
    config.ioapic_id = 2; // a vCPU's APIC ID
    auto clash = build_mp_table(GuestAddress{kMpTableAddress}, config);
    REQUIRE_FALSE(clash.has_value());
    CHECK_THAT(clash.error(), Catch::Contains("IO-APIC ID 2"));
    config.ioapic_id = -1;
    CHECK_FALSE(build_mp_table(GuestAddress{kMpTableAddress + 8}, config).has_value());
    const auto memory = vector_memory({{0, 1ULL << 20}});
    CHECK_FALSE(write_mp_table(memory, GuestAddress{kMpTableAddress}, 32, config).has_value());
    CHECK_FALSE(write_mp_table(memory, GuestAddress{0x200000}, kMpTableAreaSize, config).has_value());
}
