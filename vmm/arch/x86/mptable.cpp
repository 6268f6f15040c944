#include "arch/x86/mptable.hpp"

#include <cstring>
#include <string_view>

#include <fmt/format.h>

#include "arch/x86/acpi.hpp"

namespace vmmlab::x86::mptable {

namespace {

constexpr std::size_t kFloatingPointerSize = 16;
constexpr std::uint8_t kSpecRevision = 4; // MP spec 1.4

// Entry types and their sizes (MP spec 1.4, chapter 4.3).
constexpr std::uint8_t kProcessor = 0, kBus = 1, kIoApic = 2, kIoInterrupt = 3, kLocalInterrupt = 4;
constexpr std::uint8_t kInterruptInt = 0, kInterruptNmi = 1, kInterruptExtInt = 3;
constexpr std::uint16_t kConforming = 0; // polarity and trigger as the source bus defines them
constexpr std::uint8_t kLocalApicVersion = 0x14;
constexpr std::uint8_t kIoApicVersion = 0x11;
constexpr std::uint8_t kProcessorEnabled = 0x01, kProcessorBootstrap = 0x02;
constexpr std::uint32_t kCpuSignature = 0x600;                // family 6, as a placeholder: Linux ignores it
constexpr std::uint32_t kCpuFeatures = (1U << 0) | (1U << 9); // FPU, APIC
constexpr std::uint8_t kIsaBus = 0;

class Writer {
public:
    explicit Writer(std::vector<std::byte>& out) : out_(out) {}
    std::size_t offset() const { return out_.size(); }
    template <typename T>
    void put(T value) {
        const auto at = out_.size();
        out_.resize(at + sizeof value);
        std::memcpy(out_.data() + at, &value, sizeof value);
    }
    void u8(unsigned value) { put(static_cast<std::uint8_t>(value)); }
    void u16(unsigned value) { put(static_cast<std::uint16_t>(value)); }
    void u32(std::uint64_t value) { put(static_cast<std::uint32_t>(value)); }
    void text(std::string_view text, std::size_t width) {
        for (std::size_t i = 0; i < width; ++i)
            u8(static_cast<unsigned char>(i < text.size() ? text[i] : ' '));
    }
    void zeros(std::size_t count) { out_.resize(out_.size() + count); }

private:
    std::vector<std::byte>& out_;
};

void io_interrupt(Writer& w, std::uint8_t type, std::uint8_t irq, std::uint8_t ioapic_id,
                  std::uint8_t input) {
    w.u8(kIoInterrupt);
    w.u8(type);
    w.u16(kConforming);
    w.u8(kIsaBus);
    w.u8(irq);
    w.u8(ioapic_id);
    w.u8(input);
}

void local_interrupt(Writer& w, std::uint8_t type, std::uint8_t lint) {
    w.u8(kLocalInterrupt);
    w.u8(type);
    w.u16(kConforming);
    w.u8(kIsaBus);
    w.u8(0);
    w.u8(0xff); // every local APIC
    w.u8(lint);
}

} // namespace

std::expected<MpTableImage, std::string> build_mp_table(GuestAddress base, const MpTableConfig& config) {
    if (base.value % 16 != 0)
        return std::unexpected(fmt::format("MP table: base {:#x} is not 16-byte aligned", base.value));
    if (base.value >= 0xffff0000)
        return std::unexpected(fmt::format("MP table: base {:#x} leaves no room below 4 GiB", base.value));
    if (config.vcpus == 0 || config.vcpus > kMaxVcpus)
        return std::unexpected(
            fmt::format("MP table: {} vCPUs; the table takes 1 to {}", config.vcpus, kMaxVcpus));
    const int ioapic = config.ioapic_id < 0 ? static_cast<int>(config.vcpus) : config.ioapic_id;
    if (ioapic > 254 || ioapic < static_cast<int>(config.vcpus))
        return std::unexpected(
            fmt::format("MP table: IO-APIC ID {} collides with a vCPU or exceeds 254", ioapic));
    const auto ioapic_id = static_cast<std::uint8_t>(ioapic);

    MpTableImage image;
    Writer w(image.bytes);
    const std::uint64_t config_table = base.value + kFloatingPointerSize;

    // Floating pointer structure.
    w.text("_MP_", 4);
    w.u32(config_table);
    w.u8(1); // length in 16-byte units
    w.u8(kSpecRevision);
    w.u8(0); // checksum, patched
    w.u8(0); // feature 1: a configuration table is present (no default configuration)
    w.u8(0); // feature 2: IMCRP clear, virtual wire mode
    w.zeros(3);

    // Configuration table header.
    const std::size_t header = w.offset();
    w.text("PCMP", 4);
    w.u16(0); // base table length, patched
    w.u8(kSpecRevision);
    w.u8(0); // checksum, patched
    w.text("VMMLAB", 8);
    w.text("VMMLAB-VM", 12);
    w.u32(0); // OEM table pointer
    w.u16(0); // OEM table size
    w.u16(0); // entry count, patched
    w.u32(config.local_apic_address);
    w.u16(0); // extended table length
    w.u8(0);  // extended table checksum
    w.u8(0);

    unsigned entries = 0;
    for (unsigned vcpu = 0; vcpu < config.vcpus; ++vcpu, ++entries) {
        w.u8(kProcessor);
        w.u8(vcpu);
        w.u8(kLocalApicVersion);
        w.u8(kProcessorEnabled | (vcpu == 0 ? kProcessorBootstrap : 0));
        w.u32(kCpuSignature);
        w.u32(kCpuFeatures);
        w.zeros(8);
    }
    w.u8(kBus);
    w.u8(kIsaBus);
    w.text("ISA", 6);
    ++entries;
    w.u8(kIoApic);
    w.u8(ioapic_id);
    w.u8(kIoApicVersion);
    w.u8(1); // enabled
    w.u32(config.ioapic_address);
    ++entries;
    io_interrupt(w, kInterruptExtInt, 0, ioapic_id, 0);
    io_interrupt(w, kInterruptInt, 0, ioapic_id, 2);
    entries += 2;
    for (std::uint8_t irq = 1; irq < 16; ++irq) {
        if (irq == 2) continue; // the cascade
        io_interrupt(w, kInterruptInt, irq, ioapic_id, irq);
        ++entries;
    }
    local_interrupt(w, kInterruptExtInt, 0);
    local_interrupt(w, kInterruptNmi, 1);
    entries += 2;

    const std::size_t length = w.offset() - header;
    const auto length16 = static_cast<std::uint16_t>(length);
    const auto count16 = static_cast<std::uint16_t>(entries);
    std::memcpy(image.bytes.data() + header + 4, &length16, sizeof length16);
    std::memcpy(image.bytes.data() + header + 34, &count16, sizeof count16);
    image.bytes[header + 7] =
        std::byte{acpi::checksum_byte(std::span<const std::byte>(image.bytes).subspan(header, length))};
    image.bytes[10] =
        std::byte{acpi::checksum_byte(std::span<const std::byte>(image.bytes).first(kFloatingPointerSize))};
    image.table = MpTable{base, GuestAddress{config_table}, image.bytes.size(), count16};
    return image;
}

std::expected<MpTable, std::string> write_mp_table(const GuestMemory& memory, GuestAddress base,
                                                   std::uint64_t area_size, const MpTableConfig& config) {
    auto image = build_mp_table(base, config);
    if (!image) return std::unexpected(image.error());
    if (image->bytes.size() > area_size)
        return std::unexpected(fmt::format("MP table: it takes {:#x} bytes; the area at {:#x} has {:#x}",
                                           image->bytes.size(), base.value, area_size));
    if (auto written = memory.write(base, image->bytes); !written)
        return std::unexpected("MP table: " + written.error().describe());
    return image->table;
}

} // namespace vmmlab::x86::mptable
