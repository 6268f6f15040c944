#include <algorithm>
#include <catch2/catch.hpp>
#include <cstring>
#include <initializer_list>
#include <map>
#include <string>
#include <vector>

#include "arch/x86/acpi.hpp"
#include "linux_test_support.hpp"

using namespace vmmlab;
using namespace vmmlab::x86::acpi;
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

std::string text(const std::vector<std::byte>& bytes, std::size_t offset, std::size_t length) {
    REQUIRE(offset + length <= bytes.size());
    return std::string(reinterpret_cast<const char*>(bytes.data() + offset), length);
}

unsigned byte_sum(const std::vector<std::byte>& bytes, std::size_t length) {
    unsigned sum = 0;
    for (std::size_t i = 0; i < length; ++i)
        sum += std::to_integer<unsigned>(bytes[i]);
    return sum & 0xff;
}

struct Gas {
    std::uint8_t space, bit_width, bit_offset, access_size;
    std::uint64_t address;
};
Gas gas(const std::vector<std::byte>& bytes, std::size_t offset) {
    return {field<std::uint8_t>(bytes, offset), field<std::uint8_t>(bytes, offset + 1),
            field<std::uint8_t>(bytes, offset + 2), field<std::uint8_t>(bytes, offset + 3),
            field<std::uint64_t>(bytes, offset + 4)};
}

// A table read the way an OS reads it: the header's length says how much to take; its checksum must hold.
std::vector<std::byte> read_table(const GuestMemory& memory, std::uint64_t address,
                                  std::string_view signature) {
    const auto header = read_bytes(memory, address, 36);
    CHECK(text(header, 0, 4) == signature);
    const auto length = field<std::uint32_t>(header, 4);
    REQUIRE(length >= 36);
    auto table = read_bytes(memory, address, length);
    CHECK(byte_sum(table, length) == 0);
    CHECK(text(table, 10, 6) == "VMMLAB");
    return table;
}

struct ParsedTables {
    std::vector<std::byte> rsdp, xsdt, fadt, madt, dsdt;
    std::uint64_t fadt_address = 0, madt_address = 0, dsdt_address = 0;
};

// RSDP -> XSDT -> (FADT -> DSDT, MADT), checking each step.
ParsedTables parse(const GuestMemory& memory, std::uint64_t rsdp_address) {
    ParsedTables parsed;
    parsed.rsdp = read_bytes(memory, rsdp_address, 36);
    CHECK(text(parsed.rsdp, 0, 8) == "RSD PTR ");
    CHECK(byte_sum(parsed.rsdp, 20) == 0); // ACPI 1.0 checksum
    CHECK(byte_sum(parsed.rsdp, 36) == 0); // extended checksum
    CHECK(field<std::uint8_t>(parsed.rsdp, 15) == 2);
    CHECK(field<std::uint32_t>(parsed.rsdp, 20) == 36);

    parsed.xsdt = read_table(memory, field<std::uint64_t>(parsed.rsdp, 24), "XSDT");
    REQUIRE(parsed.xsdt.size() == 36 + 2 * 8);
    for (std::size_t offset = 36; offset < parsed.xsdt.size(); offset += 8) {
        const auto address = field<std::uint64_t>(parsed.xsdt, offset);
        const auto signature = text(read_bytes(memory, address, 4), 0, 4);
        if (signature == "FACP") {
            parsed.fadt_address = address;
            parsed.fadt = read_table(memory, address, "FACP");
        } else if (signature == "APIC") {
            parsed.madt_address = address;
            parsed.madt = read_table(memory, address, "APIC");
        } else {
            FAIL("unexpected table " << signature << " in the XSDT");
        }
    }
    REQUIRE_FALSE(parsed.fadt.empty());
    REQUIRE_FALSE(parsed.madt.empty());
    parsed.dsdt_address = field<std::uint64_t>(parsed.fadt, 140); // X_DSDT
    CHECK(field<std::uint32_t>(parsed.fadt, 40) == parsed.dsdt_address);
    parsed.dsdt = read_table(memory, parsed.dsdt_address, "DSDT");
    return parsed;
}

struct MadtEntry {
    std::uint8_t type;
    std::vector<std::byte> bytes;
};
std::vector<MadtEntry> madt_entries(const std::vector<std::byte>& madt) {
    std::vector<MadtEntry> entries;
    std::size_t offset = 44;
    while (offset < madt.size()) {
        const auto length = field<std::uint8_t>(madt, offset + 1);
        REQUIRE(length >= 2);
        REQUIRE(offset + length <= madt.size());
        entries.push_back(
            {field<std::uint8_t>(madt, offset),
             std::vector<std::byte>(madt.begin() + static_cast<std::ptrdiff_t>(offset),
                                    madt.begin() + static_cast<std::ptrdiff_t>(offset + length))});
        offset += length;
    }
    CHECK(offset == madt.size());
    return entries;
}

} // namespace

TEST_CASE("acpi: RSDP, XSDT, FADT, MADT and DSDT parse back with valid checksums", "[linux][acpi]") {
    const auto memory = vector_memory({{0, 1ULL << 20}});
    AcpiConfig config;
    config.vcpus = 4;
    auto tables = write_acpi_tables(memory, GuestAddress{kAcpiTablesAddress}, kAcpiTablesAreaSize, config);
    REQUIRE(tables.has_value());
    CHECK(tables->rsdp.value == kAcpiTablesAddress);
    const auto parsed = parse(memory, tables->rsdp.value);
    CHECK(parsed.fadt_address == tables->fadt.value);
    CHECK(parsed.madt_address == tables->madt.value);
    CHECK(parsed.dsdt_address == tables->dsdt.value);
    for (auto address : {tables->xsdt, tables->fadt, tables->madt, tables->dsdt})
        CHECK(address.value % 16 == 0);
    CHECK(tables->size <= kAcpiTablesAreaSize);
}

TEST_CASE("acpi: the FADT describes a hardware-reduced platform with sleep and reset ports",
          "[linux][acpi]") {
    const auto memory = vector_memory({{0, 1ULL << 20}});
    auto tables =
        write_acpi_tables(memory, GuestAddress{kAcpiTablesAddress}, kAcpiTablesAreaSize, AcpiConfig{});
    REQUIRE(tables.has_value());
    const auto fadt = parse(memory, tables->rsdp.value).fadt;
    REQUIRE(fadt.size() == 276);
    CHECK(field<std::uint8_t>(fadt, 8) == 6);   // revision
    CHECK(field<std::uint8_t>(fadt, 131) == 5); // minor version: ACPI 6.5
    CHECK(field<std::uint32_t>(fadt, 36) == 0); // no FACS
    const auto flags = field<std::uint32_t>(fadt, 112);
    CHECK((flags & kFadtHardwareReduced) != 0);
    CHECK((flags & kFadtResetRegSupported) != 0);
    // No fixed-hardware blocks on a hardware-reduced platform.
    for (std::size_t offset = 56; offset < 88; offset += 4)
        CHECK(field<std::uint32_t>(fadt, offset) == 0);

    const Gas reset = gas(fadt, 116);
    CHECK(reset.space == 1); // system I/O
    CHECK(reset.bit_width == 8);
    CHECK(reset.access_size == 1);
    CHECK(reset.address == kResetPort);
    CHECK(field<std::uint8_t>(fadt, 128) == kResetValue);
    const Gas sleep_control = gas(fadt, 244);
    CHECK(sleep_control.space == 1);
    CHECK(sleep_control.bit_width == 8);
    CHECK(sleep_control.address == kSleepControlPort);
    const Gas sleep_status = gas(fadt, 256);
    CHECK(sleep_status.space == 1);
    CHECK(sleep_status.address == kSleepStatusPort);

    CHECK(field<std::uint8_t>(fadt, 108) == 0x32); // CENTURY
    const auto boot_arch = field<std::uint16_t>(fadt, 109);
    CHECK((boot_arch & kBootArch8042) != 0);
    CHECK((boot_arch & kBootArchCmosRtcNotPresent) == 0);
    CHECK(text(fadt, 268, 6) == "VMMLAB");

    SECTION("without an i8042 or RTC the boot flags say so") {
        AcpiConfig bare;
        bare.i8042 = false;
        bare.cmos_rtc = false;
        auto image = build_acpi_tables(GuestAddress{kAcpiTablesAddress}, bare);
        REQUIRE(image.has_value());
        const auto offset = image->tables.fadt.value - kAcpiTablesAddress; // the DSDT before it is shorter
        const auto arch = field<std::uint16_t>(image->bytes, offset + 109);
        CHECK((arch & kBootArch8042) == 0);
        CHECK((arch & kBootArchCmosRtcNotPresent) != 0);
    }
}

TEST_CASE("acpi: the DSDT holds the \\_S5_ package with the sleep type", "[linux][acpi]") {
    const auto memory = vector_memory({{0, 1ULL << 20}});
    AcpiConfig config;
    config.s5_sleep_type = 3;
    auto tables = write_acpi_tables(memory, GuestAddress{kAcpiTablesAddress}, kAcpiTablesAreaSize, config);
    REQUIRE(tables.has_value());
    const auto dsdt = parse(memory, tables->rsdp.value).dsdt;
    const std::vector<std::byte> whole(dsdt.begin() + 36, dsdt.end());
    auto expected = s5_package_aml(3);
    const auto devices = legacy_devices_aml(config);
    expected.insert(expected.end(), devices.begin(), devices.end());
    CHECK(whole == expected);
    const std::vector<std::byte> aml(whole.begin(), whole.begin() + 13);
    CHECK(aml == s5_package_aml(3));
    CHECK(text(aml, 1, 4) == "_S5_");
    CHECK(field<std::uint8_t>(aml, 0) == 0x08); // NameOp
    CHECK(field<std::uint8_t>(aml, 5) == 0x12); // PackageOp
    CHECK(field<std::uint8_t>(aml, 6) == 7);    // PkgLength covers itself to the end
    CHECK(field<std::uint8_t>(aml, 6) == aml.size() - 6);
    CHECK(field<std::uint8_t>(aml, 7) == 4);    // four elements
    CHECK(field<std::uint8_t>(aml, 8) == 0x0a); // BytePrefix
    CHECK(field<std::uint8_t>(aml, 9) == 3);    // SLP_TYPa
}

TEST_CASE("acpi: the MADT lists one enabled local APIC per vCPU, the IO-APIC and IRQ 0 -> GSI 2",
          "[linux][acpi]") {
    const unsigned vcpus = GENERATE(1U, 2U, 8U, 255U, 300U);
    const auto memory = vector_memory({{0, 1ULL << 20}});
    AcpiConfig config;
    config.vcpus = vcpus;
    auto tables = write_acpi_tables(memory, GuestAddress{kAcpiTablesAddress}, kAcpiTablesAreaSize, config);
    REQUIRE(tables.has_value());
    const auto madt = parse(memory, tables->rsdp.value).madt;
    CHECK(field<std::uint32_t>(madt, 36) == kLocalApicAddress);
    CHECK(field<std::uint32_t>(madt, 40) == kMadtPcatCompat);

    std::map<std::uint8_t, unsigned> counts;
    std::vector<std::uint32_t> apic_ids;
    for (const auto& entry : madt_entries(madt)) {
        ++counts[entry.type];
        switch (entry.type) {
        case 0: // processor local APIC
            REQUIRE(entry.bytes.size() == 8);
            CHECK(field<std::uint8_t>(entry.bytes, 2) == field<std::uint8_t>(entry.bytes, 3));
            CHECK(field<std::uint32_t>(entry.bytes, 4) == 1); // enabled
            apic_ids.push_back(field<std::uint8_t>(entry.bytes, 3));
            break;
        case 9: // processor local x2APIC
            REQUIRE(entry.bytes.size() == 16);
            CHECK(field<std::uint32_t>(entry.bytes, 8) == 1);
            apic_ids.push_back(field<std::uint32_t>(entry.bytes, 4));
            break;
        case 1: // IO-APIC
            REQUIRE(entry.bytes.size() == 12);
            CHECK(field<std::uint32_t>(entry.bytes, 4) == 0xfec00000);
            CHECK(field<std::uint32_t>(entry.bytes, 8) == 0); // GSI base
            break;
        case 2: // interrupt source override
            REQUIRE(entry.bytes.size() == 10);
            CHECK(field<std::uint8_t>(entry.bytes, 2) == 0);    // ISA
            CHECK(field<std::uint8_t>(entry.bytes, 3) == 0);    // IRQ 0
            CHECK(field<std::uint32_t>(entry.bytes, 4) == 2);   // GSI 2
            CHECK(field<std::uint16_t>(entry.bytes, 8) == 0x5); // active high, edge
            break;
        case 4: // local APIC NMI
            REQUIRE(entry.bytes.size() == 6);
            CHECK(field<std::uint8_t>(entry.bytes, 5) == 1); // LINT1
            break;
        default:
            FAIL("unexpected MADT entry type " << int{entry.type});
        }
    }
    CHECK(counts[0] + counts[9] == vcpus);
    CHECK(counts[9] == (vcpus > 255 ? vcpus - 255 : 0));
    CHECK(counts[1] == 1);
    CHECK(counts[2] == 1);
    REQUIRE(apic_ids.size() == vcpus);
    for (std::uint32_t i = 0; i < vcpus; ++i)
        CHECK(apic_ids[i] == i);
}

TEST_CASE("acpi: bad configurations and areas are refused", "[linux][acpi]") {
    AcpiConfig config;
    config.vcpus = 0;
    CHECK_FALSE(build_acpi_tables(GuestAddress{kAcpiTablesAddress}, config).has_value());
    config.vcpus = kMaxVcpus + 1;
    CHECK_FALSE(build_acpi_tables(GuestAddress{kAcpiTablesAddress}, config).has_value());
    config.vcpus = 1;
    config.s5_sleep_type = 8;
    CHECK_FALSE(build_acpi_tables(GuestAddress{kAcpiTablesAddress}, config).has_value());
    config.s5_sleep_type = 5;
    CHECK_FALSE(build_acpi_tables(GuestAddress{kAcpiTablesAddress + 4}, config).has_value());

    const auto memory = vector_memory({{0, 1ULL << 20}});
    auto small = write_acpi_tables(memory, GuestAddress{kAcpiTablesAddress}, 64, config);
    REQUIRE_FALSE(small.has_value());
    CHECK_THAT(small.error(), Catch::Contains("the area at 0xe0000 has 0x40"));
    auto outside = write_acpi_tables(memory, GuestAddress{0x200000}, kAcpiTablesAreaSize, config);
    REQUIRE_FALSE(outside.has_value());
    CHECK_THAT(outside.error(), Catch::Contains("outside RAM"));
}

TEST_CASE("acpi: checksum_byte makes a buffer sum to zero", "[linux][acpi]") {
    std::vector<std::byte> bytes{std::byte{0x10}, std::byte{0xf5}, std::byte{0}, std::byte{0x42}};
    bytes[2] = std::byte{checksum_byte(bytes)};
    CHECK(byte_sum(bytes, bytes.size()) == 0);
    CHECK(checksum_byte(std::vector<std::byte>(3, std::byte{0})) == 0);
}

namespace {
std::vector<std::byte> bytes_of(std::initializer_list<std::uint8_t> values) {
    std::vector<std::byte> bytes;
    for (auto value : values)
        bytes.push_back(std::byte{value});
    return bytes;
}

bool contains(const std::vector<std::byte>& haystack, const std::vector<std::byte>& needle) {
    return std::search(haystack.begin(), haystack.end(), needle.begin(), needle.end()) != haystack.end();
}
} // namespace

TEST_CASE("acpi: the DSDT names COM1, the keyboard controller and the RTC with their ports and IRQs",
          "[linux][acpi]") {
    const auto aml = legacy_devices_aml(AcpiConfig{});
    // Scope (\_SB_) with a two-byte PkgLength that covers everything after the ScopeOp.
    REQUIRE(aml.size() > 70);
    CHECK(field<std::uint8_t>(aml, 0) == 0x10);
    const auto lead = field<std::uint8_t>(aml, 1);
    REQUIRE((lead >> 6) == 1);
    CHECK(((lead & 0x0fU) | (field<std::uint8_t>(aml, 2) << 4U)) == aml.size() - 1);
    CHECK(text(aml, 3, 5) == "\\_SB_");

    // Device (COM1): EISAID ("PNP0501"), IO (Decode16, 0x3f8, 0x3f8, 1, 8), IRQNoFlags () {4}.
    CHECK(contains(aml, bytes_of({0x5b, 0x82})));
    CHECK(contains(aml,
                   bytes_of({'C', 'O', 'M', '1', 0x08, '_', 'H', 'I', 'D', 0x0c, 0x41, 0xd0, 0x05, 0x01})));
    CHECK(contains(aml,
                   bytes_of({0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08, 0x22, 0x10, 0x00, 0x79, 0x00})));
    // Device (PS2K): EISAID ("PNP0303"), ports 0x60 and 0x64, IRQ 1.
    CHECK(contains(aml,
                   bytes_of({'P', 'S', '2', 'K', 0x08, '_', 'H', 'I', 'D', 0x0c, 0x41, 0xd0, 0x03, 0x03})));
    CHECK(contains(aml, bytes_of({0x47, 0x01, 0x60, 0x00, 0x60, 0x00, 0x01, 0x01, 0x47, 0x01, 0x64, 0x00,
                                  0x64, 0x00, 0x01, 0x01, 0x22, 0x02, 0x00})));
    // Device (RTC_): EISAID ("PNP0B00"), ports 0x70-0x71, IRQ 8.
    CHECK(contains(aml,
                   bytes_of({'R', 'T', 'C', '_', 0x08, '_', 'H', 'I', 'D', 0x0c, 0x41, 0xd0, 0x0b, 0x00})));
    CHECK(contains(aml, bytes_of({0x47, 0x01, 0x70, 0x00, 0x70, 0x00, 0x01, 0x02, 0x22, 0x00, 0x01})));

    // Devices the platform lacks are left out; with none, so is the scope.
    AcpiConfig bare;
    bare.i8042 = false;
    bare.cmos_rtc = false;
    const auto serial_only = legacy_devices_aml(bare);
    CHECK(contains(serial_only, bytes_of({'C', 'O', 'M', '1'})));
    CHECK_FALSE(contains(serial_only, bytes_of({'P', 'S', '2', 'K'})));
    bare.serial = false;
    CHECK(contains(legacy_devices_aml(bare), bytes_of({'P', 'C', 'I', '0'}))); // the root bridge stays
    bare.pci_root_bridge = false;
    CHECK(legacy_devices_aml(bare).empty());
    bare.pci_root_bridge = true;
    bare.serial = true;
    bare.serial_irq = 16;
    CHECK(build_acpi_tables(GuestAddress{kAcpiTablesAddress}, bare).error() ==
          "ACPI: serial IRQ 16 is not an ISA IRQ (0-15)");
}

TEST_CASE("acpi: the DSDT's PCI root bridge declares bus 0, the 0xCF8 ports and the BAR window", "[acpi]") {
    AcpiConfig config;
    const auto aml = legacy_devices_aml(config);
    CHECK(contains(aml, bytes_of({'P', 'C', 'I', '0'})));
    // _HID PNP0A08 and _CID PNP0A03 as compressed EISA IDs (41 D0 0A 08 / 41 D0 0A 03).
    CHECK(contains(aml, bytes_of({'_', 'H', 'I', 'D', 0x0c, 0x41, 0xd0, 0x0a, 0x08})));
    CHECK(contains(aml, bytes_of({'_', 'C', 'I', 'D', 0x0c, 0x41, 0xd0, 0x0a, 0x03})));
    // Bus numbers 0-0, length 1.
    CHECK(contains(aml, bytes_of({0x88, 0x0d, 0x00, 0x02, 0x0c, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0})));
    CHECK(contains(aml, bytes_of({0x47, 0x01, 0xf8, 0x0c, 0xf8, 0x0c, 0x01, 0x08})));
    // Memory window 0xE0000000-0xEFFFFFFF, length 256 MiB.
    CHECK(contains(aml, bytes_of({0x87, 0x17, 0x00, 0x00, 0x0c, 0x01, 0, 0, 0, 0,    0x00, 0x00, 0x00,
                                  0xe0, 0xff, 0xff, 0xff, 0xef, 0,    0, 0, 0, 0x00, 0x00, 0x00, 0x10})));
    config.pci_mmio_base = 0xc0000000;
    CHECK(contains(legacy_devices_aml(config), bytes_of({0x00, 0x00, 0x00, 0xc0, 0xff, 0xff, 0xff, 0xcf})));
}

TEST_CASE("acpi: the PCI root bridge's _PRT routes INTA of slots 1-8 to GSIs 16-23", "[acpi]") {
    AcpiConfig config;
    const auto aml = legacy_devices_aml(config);
    // Name (_PRT, Package (8) { Package (4) { 0x0001FFFF, Zero, Zero, 16 }, ... }).
    CHECK(contains(aml, bytes_of({0x08, '_', 'P', 'R', 'T', 0x12})));
    for (std::uint8_t slot = 1; slot <= 8; ++slot)
        CHECK(contains(aml, bytes_of({0x12, 0x0e, 0x04, 0x0c, 0xff, 0xff, slot, 0x00, 0x00, 0x00, 0x0c,
                                      static_cast<std::uint8_t>(15 + slot), 0x00, 0x00, 0x00})));
    CHECK_FALSE(contains(aml, bytes_of({0x0c, 0xff, 0xff, 0x09, 0x00})));
    REQUIRE(build_acpi_tables(GuestAddress{kAcpiTablesAddress}, config));

    config.pci_intx_slots = 0;
    CHECK_FALSE(contains(legacy_devices_aml(config), bytes_of({'_', 'P', 'R', 'T'})));
    config.pci_intx_slots = 9;
    CHECK(build_acpi_tables(GuestAddress{kAcpiTablesAddress}, config).error() ==
          "ACPI: INTx of 9 PCI slots from GSI 16 does not fit the IO-APIC's 24 pins");
}
