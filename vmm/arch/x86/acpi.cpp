#include "arch/x86/acpi.hpp"

#include <algorithm>
#include <array>
#include <cstring>
#include <initializer_list>
#include <string_view>
#include <utility>

#include <fmt/format.h>

namespace vmmlab::x86::acpi {

namespace {

constexpr std::string_view kOemId = "VMMLAB";   // 6 bytes
constexpr std::string_view kCreatorId = "VMML"; // 4 bytes
constexpr std::uint32_t kOemRevision = 1;
constexpr std::uint32_t kCreatorRevision = 1;
constexpr std::size_t kRsdpSize = 36;
constexpr std::size_t kChecksumOffset = 9;

// Generic Address Structure (ACPI 6.5, 5.2.3.2): a byte-wide register in system I/O space.
constexpr std::uint8_t kSpaceSystemIo = 1;
constexpr std::uint8_t kAccessByte = 1;

// MADT entry types (ACPI 6.5, 5.2.12).
constexpr std::uint8_t kMadtLocalApic = 0;
constexpr std::uint8_t kMadtIoApic = 1;
constexpr std::uint8_t kMadtInterruptOverride = 2;
constexpr std::uint8_t kMadtLocalApicNmi = 4;
constexpr std::uint8_t kMadtLocalX2apic = 9;
constexpr std::uint16_t kMpsActiveHighEdge = 0x0005; // MPS INTI flags: polarity 01 (high), trigger 01 (edge)

// Appends little-endian fields to a byte vector; tables are written at their final offsets.
class Writer {
public:
    explicit Writer(std::vector<std::byte>& out) : out_(out) {}
    std::size_t offset() const { return out_.size(); }
    void align(std::size_t alignment) { out_.resize((out_.size() + alignment - 1) / alignment * alignment); }
    template <typename T>
    void put(T value) {
        const auto at = out_.size();
        out_.resize(at + sizeof value);
        std::memcpy(out_.data() + at, &value, sizeof value);
    }
    void u8(std::uint64_t value) { put(static_cast<std::uint8_t>(value)); }
    void u16(std::uint64_t value) { put(static_cast<std::uint16_t>(value)); }
    void u32(std::uint64_t value) { put(static_cast<std::uint32_t>(value)); }
    void u64(std::uint64_t value) { put(value); }
    // Exactly `width` bytes of `text`, padded with spaces (OEM IDs) or zeros.
    void text(std::string_view text, std::size_t width, char pad = ' ') {
        for (std::size_t i = 0; i < width; ++i)
            u8(static_cast<unsigned char>(i < text.size() ? text[i] : pad));
    }
    void bytes(std::span<const std::byte> data) { out_.insert(out_.end(), data.begin(), data.end()); }
    void zeros(std::size_t count) { out_.resize(out_.size() + count); }
    void patch_u32(std::size_t at, std::uint32_t value) {
        std::memcpy(out_.data() + at, &value, sizeof value);
    }
    void patch_u8(std::size_t at, std::uint8_t value) { out_[at] = std::byte{value}; }
    std::span<const std::byte> span(std::size_t from, std::size_t length) const {
        return std::span<const std::byte>(out_).subspan(from, length);
    }

    // Generic Address Structure for a byte-wide I/O port.
    void io_register(std::uint16_t port) {
        u8(kSpaceSystemIo);
        u8(8); // register bit width
        u8(0); // bit offset
        u8(kAccessByte);
        u64(port);
    }

private:
    std::vector<std::byte>& out_;
};

// Starts a system description table: header with length and checksum to be filled by end_table.
std::size_t begin_table(Writer& w, std::string_view signature, std::uint8_t revision,
                        std::string_view table_id) {
    w.align(16);
    const std::size_t start = w.offset();
    w.text(signature, 4);
    w.u32(0); // length, patched
    w.u8(revision);
    w.u8(0); // checksum, patched
    w.text(kOemId, 6);
    w.text(table_id, 8);
    w.u32(kOemRevision);
    w.text(kCreatorId, 4);
    w.u32(kCreatorRevision);
    return start;
}

void end_table(Writer& w, std::size_t start) {
    const std::size_t length = w.offset() - start;
    w.patch_u32(start + 4, static_cast<std::uint32_t>(length));
    w.patch_u8(start + kChecksumOffset, checksum_byte(w.span(start, length)));
}

void write_madt(Writer& w, const AcpiConfig& config) {
    w.u32(kLocalApicAddress);
    w.u32(config.pcat_compat ? kMadtPcatCompat : 0);
    for (unsigned vcpu = 0; vcpu < config.vcpus; ++vcpu) {
        if (vcpu < 0xff) { // xAPIC IDs stop at 0xfe (0xff is the broadcast ID)
            w.u8(kMadtLocalApic);
            w.u8(8);
            w.u8(vcpu); // ACPI processor UID
            w.u8(vcpu); // APIC ID
            w.u32(1);   // enabled
        } else {
            w.u8(kMadtLocalX2apic);
            w.u8(16);
            w.u16(0);
            w.u32(vcpu); // x2APIC ID
            w.u32(1);    // enabled
            w.u32(vcpu); // ACPI processor UID
        }
    }
    w.u8(kMadtIoApic);
    w.u8(12);
    w.u8(config.ioapic_id);
    w.u8(0);
    w.u32(config.ioapic_address);
    w.u32(config.ioapic_gsi_base);
    // ISA IRQ 0 (the PIT) arrives on IO-APIC input 2, as on every PC since the MP spec.
    w.u8(kMadtInterruptOverride);
    w.u8(10);
    w.u8(0); // bus: ISA
    w.u8(0); // source: IRQ 0
    w.u32(config.ioapic_gsi_base + 2);
    w.u16(kMpsActiveHighEdge);
    // NMI arrives on LINT1 of every processor.
    w.u8(kMadtLocalApicNmi);
    w.u8(6);
    w.u8(0xff); // all processors
    w.u16(kMpsActiveHighEdge);
    w.u8(1); // LINT1
}

void write_fadt(Writer& w, const AcpiConfig& config, std::uint64_t dsdt) {
    w.u32(0);                      // 36 FIRMWARE_CTRL: no FACS on a hardware-reduced platform
    w.u32(dsdt);                   // 40 DSDT
    w.u8(0);                       // 44 reserved
    w.u8(0);                       // 45 Preferred_PM_Profile: unspecified
    w.u16(config.sci_interrupt);   // 46 SCI_INT
    w.zeros(96 - 48);              // 48 SMI_CMD .. 95 CST_CNT: no fixed hardware
    w.zeros(108 - 96);             // 96 P_LVL2_LAT .. 107 MON_ALRM
    w.u8(config.century_register); // 108 CENTURY
    w.u16(kBootArchLegacyDevices | kBootArchVgaNotPresent | (config.i8042 ? kBootArch8042 : 0) |
          (config.cmos_rtc ? 0 : kBootArchCmosRtcNotPresent)); // 109 IAPC_BOOT_ARCH
    w.u8(0);                                                   // 111 reserved
    w.u32(kFadtWbinvd | kFadtPowerButton | kFadtSleepButton | kFadtResetRegSupported |
          kFadtHardwareReduced);              // 112 Flags
    w.io_register(config.reset_port);         // 116 RESET_REG
    w.u8(config.reset_value);                 // 128 RESET_VALUE
    w.u16(0);                                 // 129 ARM_BOOT_ARCH
    w.u8(5);                                  // 131 FADT minor version: ACPI 6.5
    w.u64(0);                                 // 132 X_FIRMWARE_CTRL
    w.u64(dsdt);                              // 140 X_DSDT
    w.zeros(244 - 148);                       // 148 X_PM1a_EVT_BLK .. X_GPE1_BLK: none
    w.io_register(config.sleep_control_port); // 244 SLEEP_CONTROL_REG
    w.io_register(config.sleep_status_port);  // 256 SLEEP_STATUS_REG
    w.text("VMMLAB", 8, '\0');                // 268 Hypervisor Vendor Identity
}

} // namespace

std::uint8_t checksum_byte(std::span<const std::byte> bytes) {
    unsigned sum = 0;
    for (std::byte byte : bytes)
        sum += std::to_integer<unsigned>(byte);
    return static_cast<std::uint8_t>(0x100 - (sum & 0xff));
}

std::vector<std::byte> s5_package_aml(std::uint8_t sleep_type) {
    constexpr std::uint8_t kNameOp = 0x08, kPackageOp = 0x12, kBytePrefix = 0x0a, kZeroOp = 0x00;
    const std::array<std::uint8_t, 13> aml{kNameOp,    '_',     'S',    '5',         '_',
                                           kPackageOp, 0x07,    0x04,   kBytePrefix, sleep_type,
                                           kZeroOp,    kZeroOp, kZeroOp};
    std::vector<std::byte> bytes(aml.size());
    std::memcpy(bytes.data(), aml.data(), aml.size());
    return bytes;
}

namespace {
// AML encoding helpers (ACPI 6.5, 20.2).
constexpr std::uint8_t kAmlNameOp = 0x08, kAmlScopeOp = 0x10, kAmlBufferOp = 0x11, kAmlBytePrefix = 0x0a,
                       kAmlDwordPrefix = 0x0c, kAmlExtOpPrefix = 0x5b, kAmlDeviceOp = 0x82, kAmlOneOp = 0x01,
                       kAmlRootChar = 0x5c, kAmlZeroOp = 0x00, kAmlPackageOp = 0x12;
// Small resource descriptors (ACPI 6.5, 6.4.2): tag byte = type << 3 | length.
constexpr std::uint8_t kIoDescriptor = 0x47;  // I/O port, 7 bytes follow
constexpr std::uint8_t kIrqDescriptor = 0x22; // IRQ mask without flags (edge, active high), 2 bytes follow
constexpr std::uint8_t kEndTag = 0x79;        // end tag, 1 byte (checksum) follows

void append(std::vector<std::byte>& out, std::initializer_list<std::uint8_t> bytes) {
    for (auto byte : bytes)
        out.push_back(std::byte{byte});
}
void append(std::vector<std::byte>& out, std::span<const std::byte> bytes) {
    out.insert(out.end(), bytes.begin(), bytes.end());
}
void append_name(std::vector<std::byte>& out, std::string_view name_seg) {
    for (char c : name_seg)
        out.push_back(static_cast<std::byte>(c));
}

// PkgLength (20.2.4) followed by `body`: the length counts its own bytes and the body.
void append_package(std::vector<std::byte>& out, std::span<const std::byte> body) {
    const std::size_t size = body.size();
    if (size + 1 < 0x40) {
        append(out, {static_cast<std::uint8_t>(size + 1)});
    } else if (size + 2 < 0x1000) {
        const std::size_t total = size + 2;
        append(out, {static_cast<std::uint8_t>(0x40 | (total & 0xf)), static_cast<std::uint8_t>(total >> 4)});
    } else {
        const std::size_t total = size + 3; // < 1 MiB: the DSDT is far smaller
        append(out, {static_cast<std::uint8_t>(0x80 | (total & 0xf)), static_cast<std::uint8_t>(total >> 4),
                     static_cast<std::uint8_t>(total >> 12)});
    }
    append(out, body);
}

// The compressed EISA ID of "PNPxxxx" (ASL's EISAID()): three letters of 5 bits, then four hex digits.
std::uint32_t eisa_id(std::string_view id) {
    const auto letter = [&](std::size_t i) { return static_cast<std::uint32_t>(id[i] - 0x40) & 0x1f; };
    const auto digit = [&](std::size_t i) {
        const char c = id[i];
        return static_cast<std::uint32_t>(c <= '9' ? c - '0' : c - 'A' + 10);
    };
    const std::uint32_t vendor = letter(0) << 10 | letter(1) << 5 | letter(2);
    const std::uint32_t product = digit(3) << 12 | digit(4) << 8 | digit(5) << 4 | digit(6);
    // Stored big-endian: vendor high byte, vendor low byte, product high byte, product low byte.
    return (vendor >> 8) | (vendor & 0xff) << 8 | (product >> 8) << 16 | (product & 0xff) << 24;
}

// Ends a Device(): `body` (its name and objects) gets Name(_CRS, Buffer(){resources}), then the whole is
// wrapped in the DeviceOp package.
std::vector<std::byte> device_with_resources(std::vector<std::byte> body,
                                             const std::vector<std::byte>& resources) {
    std::vector<std::byte> buffer;
    append(buffer, {kAmlBytePrefix, static_cast<std::uint8_t>(resources.size())});
    append(buffer, resources);
    append(body, {kAmlNameOp});
    append_name(body, "_CRS");
    append(body, {kAmlBufferOp});
    append_package(body, buffer);

    std::vector<std::byte> out;
    append(out, {kAmlExtOpPrefix, kAmlDeviceOp});
    append_package(out, body);
    return out;
}

struct LegacyDevice {
    std::string_view name;                                     // four characters
    std::string_view hid;                                      // PNP ID
    std::vector<std::pair<std::uint16_t, std::uint8_t>> ports; // (first port, count)
    std::uint8_t irq;
};

std::vector<std::byte> device_aml(const LegacyDevice& device) {
    std::vector<std::byte> body;
    append_name(body, device.name);
    append(body, {kAmlNameOp});
    append_name(body, "_HID");
    const std::uint32_t id = eisa_id(device.hid);
    append(body, {kAmlDwordPrefix, static_cast<std::uint8_t>(id), static_cast<std::uint8_t>(id >> 8),
                  static_cast<std::uint8_t>(id >> 16), static_cast<std::uint8_t>(id >> 24)});
    append(body, {kAmlNameOp});
    append_name(body, "_UID");
    append(body, {kAmlOneOp});

    std::vector<std::byte> resources;
    for (const auto& [port, count] : device.ports) {
        const auto low = static_cast<std::uint8_t>(port), high = static_cast<std::uint8_t>(port >> 8);
        // Decode16, minimum = maximum = port, alignment 1, length.
        append(resources, {kIoDescriptor, 0x01, low, high, low, high, 0x01, count});
    }
    const auto mask = static_cast<std::uint16_t>(1U << device.irq);
    append(resources,
           {kIrqDescriptor, static_cast<std::uint8_t>(mask), static_cast<std::uint8_t>(mask >> 8)});
    append(resources, {kEndTag, 0x00}); // checksum 0: "treated as if it had succeeded"

    return device_with_resources(std::move(body), resources);
}
void append_u16(std::vector<std::byte>& out, std::uint32_t value) {
    append(out, {static_cast<std::uint8_t>(value), static_cast<std::uint8_t>(value >> 8)});
}
void append_u32(std::vector<std::byte>& out, std::uint32_t value) {
    append_u16(out, value);
    append_u16(out, value >> 16);
}

// Device (PCI0): _HID PNP0A08, _CID PNP0A03, _UID 0, _BBN 0, and a _CRS of the bus range 0-0 (a word
// bus-number descriptor, producer), the 0xCF8-0xCFF configuration ports (consumed), and the memory
// window (a dword memory descriptor, producer, fixed, read-write, non-cacheable).
std::vector<std::byte> pci_root_bridge_aml(const AcpiConfig& config) {
    std::vector<std::byte> body;
    append_name(body, "PCI0");
    auto name_dword = [&](std::string_view name, std::uint32_t value) {
        append(body, {kAmlNameOp});
        append_name(body, name);
        append(body, {kAmlDwordPrefix});
        append_u32(body, value);
    };
    name_dword("_HID", eisa_id("PNP0A08"));
    name_dword("_CID", eisa_id("PNP0A03"));
    name_dword("_UID", 0);
    name_dword("_BBN", 0);
    // _PRT: INTA# of slot s (1..pci_intx_slots, function any) goes straight to GSI pci_intx_gsi_base + s - 1
    // (source Zero: a GSI, no link device). Linux then treats it as level-triggered, active low.
    if (config.pci_intx_slots > 0) {
        std::vector<std::byte> entries;
        append(entries, {static_cast<std::uint8_t>(config.pci_intx_slots)});
        for (unsigned slot = 1; slot <= config.pci_intx_slots; ++slot) {
            std::vector<std::byte> entry;
            append(entry, {4, kAmlDwordPrefix});
            append_u32(entry, slot << 16 | 0xffff);
            append(entry, {kAmlZeroOp, kAmlZeroOp, kAmlDwordPrefix}); // pin INTA, source Zero
            append_u32(entry, config.pci_intx_gsi_base + slot - 1);
            append(entries, {kAmlPackageOp});
            append_package(entries, entry);
        }
        append(body, {kAmlNameOp});
        append_name(body, "_PRT");
        append(body, {kAmlPackageOp});
        append_package(body, entries);
    }

    std::vector<std::byte> resources;
    // Word Address Space Descriptor (6.4.3.5.3): type 0x88, length 13; resource type 2 (bus numbers),
    // general flags MinFixed|MaxFixed (producer), granularity, min, max, translation, length.
    append(resources, {0x88, 0x0d, 0x00, 0x02, 0x0c, 0x00});
    append_u16(resources, 0);
    append_u16(resources, 0);
    append_u16(resources, 0);
    append_u16(resources, 0);
    append_u16(resources, 1);
    append(resources, {kIoDescriptor, 0x01, 0xf8, 0x0c, 0xf8, 0x0c, 0x01, 0x08});
    // DWord Address Space Descriptor (6.4.3.5.2): type 0x87, length 23; resource type 0 (memory),
    // MinFixed|MaxFixed, type-specific: read-write, non-cacheable.
    append(resources, {0x87, 0x17, 0x00, 0x00, 0x0c, 0x01});
    append_u32(resources, 0);
    append_u32(resources, config.pci_mmio_base);
    append_u32(resources, config.pci_mmio_base + config.pci_mmio_size - 1);
    append_u32(resources, 0);
    append_u32(resources, config.pci_mmio_size);
    append(resources, {kEndTag, 0x00});

    return device_with_resources(std::move(body), resources);
}
} // namespace

std::vector<std::byte> legacy_devices_aml(const AcpiConfig& config) {
    std::vector<LegacyDevice> devices;
    if (config.serial) devices.push_back({"COM1", "PNP0501", {{config.serial_port, 8}}, config.serial_irq});
    if (config.i8042) devices.push_back({"PS2K", "PNP0303", {{0x60, 1}, {0x64, 1}}, 1});
    if (config.cmos_rtc) devices.push_back({"RTC_", "PNP0B00", {{0x70, 2}}, 8});
    if (devices.empty() && !config.pci_root_bridge) return {};

    std::vector<std::byte> scope;
    append(scope, {kAmlRootChar});
    append_name(scope, "_SB_");
    for (const auto& device : devices)
        append(scope, device_aml(device));
    if (config.pci_root_bridge) append(scope, pci_root_bridge_aml(config));
    std::vector<std::byte> out;
    append(out, {kAmlScopeOp});
    append_package(out, scope);
    return out;
}

std::expected<AcpiImage, std::string> build_acpi_tables(GuestAddress base, const AcpiConfig& config) {
    if (base.value % 16 != 0)
        return std::unexpected(fmt::format("ACPI: base {:#x} is not 16-byte aligned", base.value));
    if (base.value >= 0xffff0000)
        return std::unexpected(fmt::format("ACPI: base {:#x} leaves no room below 4 GiB", base.value));
    if (config.vcpus == 0 || config.vcpus > kMaxVcpus)
        return std::unexpected(
            fmt::format("ACPI: {} vCPUs; the MADT takes 1 to {}", config.vcpus, kMaxVcpus));
    if (config.s5_sleep_type > 7)
        return std::unexpected(
            fmt::format("ACPI: S5 sleep type {} does not fit SLP_TYP (0-7)", config.s5_sleep_type));
    if (config.serial && config.serial_irq > 15)
        return std::unexpected(
            fmt::format("ACPI: serial IRQ {} is not an ISA IRQ (0-15)", config.serial_irq));
    if (config.pci_intx_slots > 31 ||
        (config.pci_intx_slots > 0 && config.pci_intx_gsi_base + config.pci_intx_slots > kIoApicPins))
        return std::unexpected(
            fmt::format("ACPI: INTx of {} PCI slots from GSI {} does not fit the IO-APIC's {} pins",
                        config.pci_intx_slots, config.pci_intx_gsi_base, kIoApicPins));

    AcpiImage image;
    Writer w(image.bytes);
    const auto at = [&](std::size_t offset) { return GuestAddress{base.value + offset}; };

    // RSDP, revision 2; the XSDT address is patched once known.
    w.text("RSD PTR ", 8);
    w.u8(0); // checksum over the first 20 bytes, patched
    w.text(kOemId, 6);
    w.u8(2);          // revision: ACPI 2.0+
    w.u32(0);         // RsdtAddress: none, the XSDT serves
    w.u32(kRsdpSize); // Length
    w.u64(0);         // XsdtAddress, patched
    w.u8(0);          // extended checksum over all 36 bytes, patched
    w.zeros(3);

    // DSDT first so the FADT can point at it; then FADT, MADT, and the XSDT listing those two.
    const std::size_t dsdt = begin_table(w, "DSDT", 2, "VMMLDSDT");
    w.bytes(s5_package_aml(config.s5_sleep_type));
    w.bytes(legacy_devices_aml(config));
    end_table(w, dsdt);

    const std::size_t fadt = begin_table(w, "FACP", 6, "VMMLFACP");
    write_fadt(w, config, at(dsdt).value);
    end_table(w, fadt);

    const std::size_t madt = begin_table(w, "APIC", 5, "VMMLMADT");
    write_madt(w, config);
    end_table(w, madt);

    const std::size_t xsdt = begin_table(w, "XSDT", 1, "VMMLXSDT");
    w.u64(at(fadt).value);
    w.u64(at(madt).value);
    end_table(w, xsdt);

    const std::uint64_t xsdt_address = at(xsdt).value;
    std::memcpy(image.bytes.data() + 24, &xsdt_address, sizeof xsdt_address);
    w.patch_u8(8, checksum_byte(w.span(0, 20)));
    w.patch_u8(32, checksum_byte(w.span(0, kRsdpSize)));

    image.tables = AcpiTables{at(0), at(xsdt), at(fadt), at(madt), at(dsdt), image.bytes.size()};
    return image;
}

std::expected<AcpiTables, std::string> write_acpi_tables(const GuestMemory& memory, GuestAddress base,
                                                         std::uint64_t area_size, const AcpiConfig& config) {
    auto image = build_acpi_tables(base, config);
    if (!image) return std::unexpected(image.error());
    if (image->bytes.size() > area_size)
        return std::unexpected(fmt::format("ACPI: the tables take {:#x} bytes; the area at {:#x} has {:#x}",
                                           image->bytes.size(), base.value, area_size));
    if (auto written = memory.write(base, image->bytes); !written)
        return std::unexpected("ACPI: " + written.error().describe());
    return image->tables;
}

} // namespace vmmlab::x86::acpi
