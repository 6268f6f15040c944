#include "boot/bzimage.hpp"

#include <algorithm>
#include <bit>
#include <cctype>
#include <cstring>
#include <optional>
#include <type_traits>
#include <utility>

#include <fmt/format.h>

namespace vmmlab {

static_assert(std::endian::native == std::endian::little, "the bzImage loader assumes a little-endian host");

namespace {

using Kind = BzImageError::Kind;

// Offsets in the file (boot.rst, "THE REAL-MODE KERNEL HEADER").
constexpr std::size_t kSetupSects = 0x1f1;
constexpr std::size_t kSysSize = 0x1f4;
constexpr std::size_t kBootFlag = 0x1fe;
constexpr std::size_t kJump = 0x200; // the byte at 0x201 is the jump's displacement: the header's length
constexpr std::size_t kHeaderMagic = 0x202;
constexpr std::size_t kVersion = 0x206;
constexpr std::size_t kLoadFlags = 0x211;
constexpr std::size_t kInitrdAddrMax = 0x22c;
constexpr std::size_t kKernelAlignment = 0x230;
constexpr std::size_t kRelocatableKernel = 0x234;
constexpr std::size_t kXLoadFlags = 0x236;
constexpr std::size_t kCmdlineSize = 0x238;
constexpr std::size_t kPrefAddress = 0x258;
constexpr std::size_t kInitSize = 0x260;
constexpr std::size_t kHeaderFieldsEnd = 0x264; // one past init_size, the last field 2.12 needs

constexpr std::uint16_t kBootFlagValue = 0xaa55;
constexpr std::uint32_t kHdrS = 0x53726448; // "HdrS" read little-endian
constexpr std::uint8_t kLoadedHigh = 0x01;  // LOADED_HIGH
constexpr std::uint16_t kXlfKernel64 = 0x01;
constexpr std::uint16_t kXlfCanBeLoadedAbove4G = 0x02;
constexpr std::uint64_t k4G = std::uint64_t{1} << 32;
constexpr std::uint64_t k2M = std::uint64_t{1} << 21;

std::unexpected<BzImageError> fail(Kind kind, std::string message) {
    return std::unexpected(BzImageError{kind, std::move(message)});
}

template <typename T>
T read_field(std::span<const std::byte> image, std::size_t offset) {
    static_assert(std::is_trivially_copyable_v<T>);
    T value;
    std::memcpy(&value, image.data() + offset, sizeof value); // callers checked the length
    return value;
}

std::uint64_t align_up(std::uint64_t value, std::uint64_t alignment) {
    return (value + alignment - 1) / alignment * alignment;
}
std::uint64_t align_down(std::uint64_t value, std::uint64_t alignment) {
    return value / alignment * alignment;
}

// Four magic bytes shown as hex and, where printable, as text: 41 42 00 ff ("AB..").
std::string show_magic(std::span<const std::byte> bytes) {
    std::string hex, text;
    for (std::byte byte : bytes) {
        const auto value = std::to_integer<unsigned char>(byte);
        hex += fmt::format("{}{:02x}", hex.empty() ? "" : " ", value);
        text += std::isprint(value) != 0 ? static_cast<char>(value) : '.';
    }
    return fmt::format("{} (\"{}\")", hex, text);
}

std::string protocol_name(std::uint16_t version) {
    return fmt::format("{}.{:02}", version >> 8, version & 0xff);
}

bool range_is_ram(const GuestMemory& memory, std::uint64_t start, std::uint64_t length) {
    return memory.contains(GuestAddress{start}, length);
}

// Where the kernel goes, or nothing. `footprint` covers the file bytes and init_size from the load address;
// a relocatable kernel also needs init_size bytes from pref_address when it is loaded below that.
std::optional<std::uint64_t> place_kernel(const BzImageHeader& header, const GuestMemory& memory) {
    const std::uint64_t footprint = std::max<std::uint64_t>(header.init_size, header.kernel_size);
    auto fits = [&](std::uint64_t address) {
        if (address < kLinuxMinimumKernelAddress || address + footprint < address) return false;
        const std::uint64_t runs_at = header.relocatable ? std::max(address, header.pref_address) : address;
        const std::uint64_t end = std::max(address + footprint, runs_at + header.init_size);
        if (end > k4G && !header.can_load_above_4g()) return false;
        return range_is_ram(memory, address, footprint) && range_is_ram(memory, runs_at, header.init_size);
    };
    if (fits(header.pref_address)) return header.pref_address;
    if (!header.relocatable) return std::nullopt;
    for (const auto& region : memory.regions()) {
        const std::uint64_t candidate =
            align_up(std::max(region.start.value, kLinuxMinimumKernelAddress), header.kernel_alignment);
        if (fits(candidate)) return candidate;
    }
    return std::nullopt;
}

} // namespace

bool BzImageHeader::can_load_above_4g() const {
    return (xloadflags & kXlfCanBeLoadedAbove4G) != 0;
}

std::expected<BzImageHeader, BzImageError> parse_bzimage(std::span<const std::byte> image) {
    // The magic numbers first, over the bytes there are, so "not a bzImage" wins over "truncated".
    if (image.size() >= kBootFlag + 2) {
        if (const auto flag = read_field<std::uint16_t>(image, kBootFlag); flag != kBootFlagValue)
            return fail(Kind::NotBzImage,
                        fmt::format("not a bzImage: boot flag at 0x1fe is {:#06x} (want 0xaa55)", flag));
    }
    if (image.size() >= kHeaderMagic + 4) {
        if (read_field<std::uint32_t>(image, kHeaderMagic) != kHdrS)
            return fail(Kind::NotBzImage, fmt::format("not a bzImage: magic at 0x202 is {} (want \"HdrS\")",
                                                      show_magic(image.subspan(kHeaderMagic, 4))));
    }
    if (image.size() < kHeaderFieldsEnd)
        return fail(Kind::Truncated, fmt::format("truncated bzImage: {} bytes, the boot sector and setup "
                                                 "header need {:#x}",
                                                 image.size(), kHeaderFieldsEnd));

    BzImageHeader header{};
    header.protocol = read_field<std::uint16_t>(image, kVersion);
    if (header.protocol < kLinuxMinimumProtocol)
        return fail(Kind::ProtocolTooOld,
                    fmt::format("boot protocol {} is too old: vmmlab needs {} (Linux 3.8 or later)",
                                protocol_name(header.protocol), protocol_name(kLinuxMinimumProtocol)));
    header.loadflags = read_field<std::uint8_t>(image, kLoadFlags);
    if ((header.loadflags & kLoadedHigh) == 0)
        return fail(
            Kind::NotBzImage,
            fmt::format("not a bzImage: loadflags {:#04x} lack LOADED_HIGH (a zImage)", header.loadflags));
    header.xloadflags = read_field<std::uint16_t>(image, kXLoadFlags);
    if ((header.xloadflags & kXlfKernel64) == 0)
        return fail(
            Kind::Not64Bit,
            fmt::format("kernel is not 64-bit capable: xloadflags {:#06x} lack XLF_KERNEL_64 (no 64-bit "
                        "entry point)",
                        header.xloadflags));

    header.header_end = kHeaderMagic + read_field<std::uint8_t>(image, kJump + 1);
    if (header.header_end < kHeaderFieldsEnd)
        return fail(Kind::BadHeader,
                    fmt::format("bad bzImage header: it ends at {:#x} (byte 0x201), before the "
                                "fields of protocol 2.12 end at {:#x}",
                                header.header_end, kHeaderFieldsEnd));
    header.relocatable = read_field<std::uint8_t>(image, kRelocatableKernel) != 0;
    header.kernel_alignment = read_field<std::uint32_t>(image, kKernelAlignment);
    if (header.relocatable && !std::has_single_bit(header.kernel_alignment))
        return fail(Kind::BadHeader,
                    fmt::format("bad bzImage header: kernel_alignment {:#x} is not a power of two",
                                header.kernel_alignment));
    header.pref_address = read_field<std::uint64_t>(image, kPrefAddress);
    header.init_size = read_field<std::uint32_t>(image, kInitSize);
    header.cmdline_size = read_field<std::uint32_t>(image, kCmdlineSize);
    header.initrd_addr_max = read_field<std::uint32_t>(image, kInitrdAddrMax);

    const auto setup_sects = read_field<std::uint8_t>(image, kSetupSects);
    header.setup_sectors = setup_sects == 0 ? 4 : setup_sects;
    header.kernel_offset = (std::uint64_t{header.setup_sectors} + 1) * 512;
    if (image.size() <= header.kernel_offset)
        return fail(Kind::Truncated,
                    fmt::format("truncated bzImage: setup_sects {} puts the kernel at {:#x}, "
                                "but the file is {:#x} bytes",
                                header.setup_sectors, header.kernel_offset, image.size()));
    header.kernel_size = image.size() - header.kernel_offset;
    const std::uint64_t syssize_bytes = std::uint64_t{read_field<std::uint32_t>(image, kSysSize)} * 16;
    if (header.kernel_size < syssize_bytes)
        return fail(Kind::Truncated,
                    fmt::format("truncated bzImage: syssize announces {:#x} bytes of kernel, "
                                "the file has {:#x} after the setup code",
                                syssize_bytes, header.kernel_size));
    if (header.init_size == 0) return fail(Kind::BadHeader, "bad bzImage header: init_size is 0");
    return header;
}

std::expected<LoadedLinux, BzImageError>
load_bzimage(std::span<const std::byte> image, const GuestMemory& memory, const LinuxBootOptions& options) {
    auto parsed = parse_bzimage(image);
    if (!parsed) return std::unexpected(parsed.error());
    const BzImageHeader& header = *parsed;

    LoadedLinux loaded{};
    loaded.header = header;

    // Command line: the kernel's limit and the area's.
    const std::uint64_t cmdline_limit =
        std::min<std::uint64_t>(header.cmdline_size, kLinuxCommandLineCapacity - 1);
    if (options.command_line.size() > cmdline_limit)
        return fail(Kind::CommandLineTooLong,
                    fmt::format("command line is {} bytes; this kernel takes at most {}{}",
                                options.command_line.size(), cmdline_limit,
                                cmdline_limit == header.cmdline_size ? " (its cmdline_size)" : ""));
    if (options.command_line.find('\0') != std::string::npos)
        return fail(Kind::CommandLineTooLong, "command line contains a NUL byte");
    loaded.command_line = GuestAddress{kLinuxCommandLineAddress};
    loaded.command_line_size = options.command_line.size() + 1;
    loaded.zero_page = GuestAddress{kLinuxZeroPageAddress};
    if (!memory.contains(loaded.zero_page, sizeof(boot_params)) ||
        !memory.contains(loaded.command_line, loaded.command_line_size))
        return fail(
            Kind::LowMemoryMissing,
            fmt::format("guest RAM does not cover the zero page at {:#x} and the command line at {:#x}",
                        kLinuxZeroPageAddress, kLinuxCommandLineAddress));

    // Kernel.
    const auto kernel_at = place_kernel(header, memory);
    if (!kernel_at)
        return fail(Kind::KernelTooLarge,
                    fmt::format("kernel does not fit in guest RAM ({} MiB): it needs {:#x} bytes (init_size) "
                                "from {:#x}{}",
                                memory.total_size() >> 20, header.init_size, header.pref_address,
                                header.relocatable ? "" : " (not relocatable)"));
    loaded.kernel = GuestAddress{*kernel_at};
    loaded.entry = loaded.kernel + kLinux64BitEntryOffset;
    const std::uint64_t runs_at = header.relocatable ? std::max(*kernel_at, header.pref_address) : *kernel_at;
    loaded.kernel_end =
        GuestAddress{std::max(*kernel_at + std::max<std::uint64_t>(header.init_size, header.kernel_size),
                              runs_at + header.init_size)};
    loaded.minimum_identity_map = align_up(loaded.kernel_end.value, k2M);

    // Initrd: as high as allowed in the RAM region below 4 GiB that starts at 0, above the kernel.
    if (!options.initrd.empty()) {
        const auto& regions = memory.regions();
        const auto low = std::ranges::find_if(
            regions, [](const GuestMemory::Region& region) { return region.start.value == 0; });
        const std::uint64_t low_end = low == regions.end() ? 0 : std::min(low->end().value, k4G);
        const std::uint64_t window_end = std::min(std::uint64_t{header.initrd_addr_max} + 1, low_end);
        std::uint64_t window_start = kLinuxMinimumKernelAddress;
        if (loaded.kernel.value < low_end)
            window_start = std::max(window_start, align_up(loaded.kernel_end.value, kLinuxInitrdAlignment));
        const std::uint64_t size = options.initrd.size();
        const std::uint64_t room = window_end > window_start ? window_end - window_start : 0;
        const std::uint64_t address =
            size <= window_end ? align_down(window_end - size, kLinuxInitrdAlignment) : 0;
        if (size > room || address < window_start)
            return fail(
                Kind::InitrdTooLarge,
                fmt::format("initrd is {:#x} bytes; only {:#x} fit between the kernel's end {:#x} and "
                            "{:#x} (initrd_addr_max {:#x}, low RAM ends at {:#x})",
                            size, room, window_start, window_end, header.initrd_addr_max, low_end));
        loaded.initrd = GuestAddress{address};
        loaded.initrd_size = size;
    }

    // e820 and the zero page.
    std::vector<x86::E820Entry> reserved{
        {GuestAddress{x86::kEbdaStart}, x86::kLowMemoryEnd - x86::kEbdaStart, x86::E820Type::Reserved}};
    reserved.insert(reserved.end(), options.extra_reserved.begin(), options.extra_reserved.end());
    auto e820 = x86::build_e820_map(memory.regions(), reserved);
    if (!e820) return fail(Kind::BadHeader, e820.error());
    loaded.e820 = std::move(*e820);

    const x86::ZeroPageParams zero_page_params{
        .setup_header = image.subspan(kSetupSects, header.header_end - kSetupSects),
        .kernel = loaded.kernel,
        .command_line = loaded.command_line,
        .ramdisk = loaded.initrd,
        .ramdisk_size = loaded.initrd_size,
        .acpi_rsdp = options.acpi_rsdp,
        .e820 = loaded.e820,
    };
    auto zero_page = x86::build_zero_page(zero_page_params);
    if (!zero_page) return fail(Kind::BadHeader, zero_page.error());

    // Everything is checked: write. These cannot fail now; if one did, say where.
    std::vector<std::byte> command_line(loaded.command_line_size, std::byte{0});
    std::memcpy(command_line.data(), options.command_line.data(), options.command_line.size());
    auto written = memory.write(loaded.kernel, image.subspan(header.kernel_offset));
    if (written) written = memory.write_object(loaded.zero_page, *zero_page);
    if (written) written = memory.write(loaded.command_line, command_line);
    if (written && loaded.initrd_size != 0) written = memory.write(loaded.initrd, options.initrd);
    if (!written) return fail(Kind::LowMemoryMissing, written.error().describe());
    return loaded;
}

} // namespace vmmlab
