#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "arch/x86/zero_page.hpp"
#include "base/read_file.hpp"
#include "boot/bzimage.hpp"
#include "linux_test_support.hpp"
#include "memory/backing.hpp"

using namespace vmmlab;
using vmmlab::test::BzImageBuilder;
using vmmlab::test::read_bytes;
using vmmlab::test::read_guest;
using vmmlab::test::vector_memory;
using Kind = BzImageError::Kind;
using x86::E820Entry;
using x86::E820Type;

namespace {

constexpr std::uint64_t kMiB = 1ULL << 20;
constexpr std::uint64_t kGiB = 1ULL << 30;

std::vector<std::byte> initrd_of(std::size_t size) {
    std::vector<std::byte> initrd(size);
    for (std::size_t i = 0; i < size; ++i)
        initrd[i] = static_cast<std::byte>((i * 13 + 1) & 0xff);
    return initrd;
}

boot_params zero_page_of(const GuestMemory& memory) {
    return read_guest<boot_params>(memory, kLinuxZeroPageAddress);
}

std::vector<E820Entry> e820_of(const boot_params& zero_page) {
    std::vector<E820Entry> entries;
    for (unsigned i = 0; i < zero_page.e820_entries; ++i) {
        const auto& entry = zero_page.e820_table[i];
        entries.push_back({GuestAddress{entry.addr}, entry.size, static_cast<E820Type>(entry.type)});
    }
    return entries;
}

BzImageError load_error(const std::vector<std::byte>& image, const GuestMemory& memory,
                        const LinuxBootOptions& options = {}) {
    auto loaded = load_bzimage(image, memory, options);
    REQUIRE_FALSE(loaded.has_value());
    return loaded.error();
}

} // namespace

TEST_CASE("bzimage: parses the setup header fields", "[linux][bzimage]") {
    BzImageBuilder builder;
    builder.setup_sects = 0; // means 4
    builder.kernel_alignment = 0x1000000;
    builder.pref_address = 0x2000000;
    builder.init_size = 0x123000;
    builder.cmdline_size = 255;
    builder.initrd_addr_max = 0x37ffffff;
    const auto image = builder.build();
    auto header = parse_bzimage(image);
    REQUIRE(header.has_value());
    CHECK(header->protocol == 0x020f);
    CHECK(header->setup_sectors == 4);
    CHECK(header->kernel_offset == 5 * 512);
    CHECK(header->kernel_size == builder.kernel_bytes);
    CHECK(header->relocatable);
    CHECK(header->kernel_alignment == 0x1000000);
    CHECK(header->pref_address == 0x2000000);
    CHECK(header->init_size == 0x123000);
    CHECK(header->cmdline_size == 255);
    CHECK(header->initrd_addr_max == 0x37ffffff);
    CHECK(header->xloadflags == 0x0003);
    CHECK(header->can_load_above_4g());
    CHECK(header->header_end == 0x26c);
}

TEST_CASE("bzimage: loads the kernel at pref_address and fills the zero page", "[linux][bzimage]") {
    const auto memory = vector_memory({{0, 64 * kMiB}});
    BzImageBuilder builder;
    builder.setup_sects = 7;
    const auto image = builder.build();
    const std::string command_line = "console=ttyS0 panic=-1";
    LinuxBootOptions options;
    options.command_line = command_line;
    options.acpi_rsdp = 0xe0000;

    auto loaded = load_bzimage(image, memory, options);
    REQUIRE(loaded.has_value());
    CHECK(loaded->kernel.value == 0x1000000);
    CHECK(loaded->entry.value == 0x1000200);
    CHECK(loaded->zero_page.value == kLinuxZeroPageAddress);
    CHECK(loaded->command_line.value == kLinuxCommandLineAddress);
    CHECK(loaded->command_line_size == command_line.size() + 1);
    CHECK(loaded->kernel_end.value == 0x1000000 + builder.init_size);
    CHECK(loaded->minimum_identity_map == 0x1800000);
    CHECK(loaded->initrd_size == 0);

    // The protected-mode kernel, byte for byte, from (setup_sects + 1) * 512 on.
    const auto copied = read_bytes(memory, 0x1000000, builder.kernel_bytes);
    for (std::size_t i = 0; i < copied.size(); ++i)
        REQUIRE(copied[i] == BzImageBuilder::pattern(i));

    const boot_params zero_page = zero_page_of(memory);
    CHECK(zero_page.hdr.boot_flag == 0xaa55);
    CHECK(zero_page.hdr.header == 0x53726448);
    CHECK(zero_page.hdr.version == 0x020f);
    CHECK(zero_page.hdr.setup_sects == 7);
    CHECK(zero_page.hdr.kernel_info_offset == 0x12345); // copied up to the header's end
    CHECK(zero_page.hdr.type_of_loader == 0xff);
    CHECK(zero_page.hdr.vid_mode == 0xffff);
    CHECK(zero_page.hdr.loadflags == 0x01);
    CHECK(zero_page.hdr.code32_start == 0x1000000);
    CHECK(zero_page.hdr.cmd_line_ptr == kLinuxCommandLineAddress);
    CHECK(zero_page.ext_cmd_line_ptr == 0);
    CHECK(zero_page.hdr.ramdisk_image == 0);
    CHECK(zero_page.hdr.ramdisk_size == 0);
    CHECK(zero_page.acpi_rsdp_addr == 0xe0000);

    const auto line = read_bytes(memory, kLinuxCommandLineAddress, command_line.size() + 1);
    CHECK(std::string(reinterpret_cast<const char*>(line.data()), command_line.size()) == command_line);
    CHECK(line.back() == std::byte{0});

    const std::vector<E820Entry> expected{
        {GuestAddress{0}, 0x9fc00, E820Type::Ram},
        {GuestAddress{0x9fc00}, 0x100000 - 0x9fc00, E820Type::Reserved},
        {GuestAddress{0x100000}, 64 * kMiB - 0x100000, E820Type::Ram},
    };
    CHECK(e820_of(zero_page) == expected);
    CHECK(loaded->e820 == expected);
}

TEST_CASE("bzimage: RAM above 3 GiB is split around the PCI hole and the initrd goes high",
          "[linux][bzimage]") {
    // 6 GiB of RAM: [0, 3 GiB) and [4 GiB, 7 GiB), mapped without reserving host memory.
    const GuestMemory memory = allocate_guest_ram(6 * kGiB, BackingOptions{});
    const auto image = BzImageBuilder{}.build();
    const auto initrd = initrd_of(0x12345);
    LinuxBootOptions options;
    options.initrd = initrd;

    auto loaded = load_bzimage(image, memory, options);
    REQUIRE(loaded.has_value());
    const boot_params zero_page = zero_page_of(memory);
    const std::vector<E820Entry> expected{
        {GuestAddress{0}, 0x9fc00, E820Type::Ram},
        {GuestAddress{0x9fc00}, 0x100000 - 0x9fc00, E820Type::Reserved},
        {GuestAddress{0x100000}, kPciHoleStart - 0x100000, E820Type::Ram},
        {GuestAddress{kPciHoleEnd}, 3 * kGiB, E820Type::Ram},
    };
    CHECK(e820_of(zero_page) == expected);

    // initrd_addr_max 0x7fffffff: the last byte at or below it, 4 KiB aligned, as high as possible.
    const std::uint64_t expected_initrd = (0x80000000 - initrd.size()) & ~std::uint64_t{0xfff};
    CHECK(loaded->initrd.value == expected_initrd);
    CHECK(loaded->initrd_size == initrd.size());
    CHECK(zero_page.hdr.ramdisk_image == expected_initrd);
    CHECK(zero_page.hdr.ramdisk_size == initrd.size());
    CHECK(zero_page.ext_ramdisk_image == 0);
    CHECK(read_bytes(memory, expected_initrd, initrd.size()) == initrd);

    SECTION("with initrd_addr_max at 4 GiB - 1 the end of low RAM (3 GiB) bounds it") {
        BzImageBuilder builder;
        builder.initrd_addr_max = 0xffffffff;
        auto high = load_bzimage(builder.build(), memory, options);
        REQUIRE(high.has_value());
        CHECK(high->initrd.value == ((kPciHoleStart - initrd.size()) & ~std::uint64_t{0xfff}));
        CHECK(high->initrd.value + high->initrd_size <= kPciHoleStart);
    }
}

TEST_CASE("bzimage: the initrd lies page aligned below initrd_addr_max and above the kernel",
          "[linux][bzimage]") {
    const auto memory = vector_memory({{0, 64 * kMiB}});
    BzImageBuilder builder;
    builder.initrd_addr_max = 48 * kMiB - 1;
    const auto initrd = initrd_of(0x5001);
    LinuxBootOptions options;
    options.initrd = initrd;
    auto loaded = load_bzimage(builder.build(), memory, options);
    REQUIRE(loaded.has_value());
    CHECK(loaded->initrd.value % kLinuxInitrdAlignment == 0);
    CHECK(loaded->initrd.value + initrd.size() - 1 <= builder.initrd_addr_max);
    CHECK(loaded->initrd.value == 48 * kMiB - 0x6000);
    CHECK(loaded->initrd.value >= loaded->kernel_end.value);
    CHECK(read_bytes(memory, loaded->initrd.value, initrd.size()) == initrd);

    SECTION("RAM ending below initrd_addr_max bounds it instead") {
        builder.initrd_addr_max = 0x7fffffff;
        auto low = load_bzimage(builder.build(), memory, options);
        REQUIRE(low.has_value());
        CHECK(low->initrd.value == 64 * kMiB - 0x6000);
    }
    SECTION("an initrd that fills the whole room between the kernel and the limit still fits") {
        const auto exact = initrd_of(48 * kMiB - loaded->kernel_end.value);
        options.initrd = exact;
        auto fitted = load_bzimage(builder.build(), memory, options);
        REQUIRE(fitted.has_value());
        CHECK(fitted->initrd.value == loaded->kernel_end.value);
    }
    SECTION("one page more does not") {
        const auto too_big = initrd_of(48 * kMiB - loaded->kernel_end.value + 1);
        options.initrd = too_big;
        const auto error = load_error(builder.build(), memory, options);
        CHECK(error.kind == Kind::InitrdTooLarge);
        CHECK_THAT(error.message, Catch::Contains("initrd is"));
    }
}

TEST_CASE("bzimage: a relocatable kernel whose pref_address is not RAM goes to an aligned address",
          "[linux][bzimage]") {
    // RAM [0, 16 MiB) and [32 MiB, 96 MiB): pref_address 16 MiB lies in the gap. Below it the kernel
    // would still run at pref_address, so the first candidate that works is 32 MiB.
    const auto memory = vector_memory({{0, 16 * kMiB}, {32 * kMiB, 64 * kMiB}});
    BzImageBuilder builder;
    auto loaded = load_bzimage(builder.build(), memory, {});
    REQUIRE(loaded.has_value());
    CHECK(loaded->kernel.value == 32 * kMiB);
    CHECK(loaded->entry.value == 32 * kMiB + 0x200);
    CHECK(loaded->kernel.value % builder.kernel_alignment == 0);

    SECTION("a kernel that is not relocatable is refused") {
        builder.relocatable = 0;
        const auto error = load_error(builder.build(), memory);
        CHECK(error.kind == Kind::KernelTooLarge);
        CHECK_THAT(error.message, Catch::Contains("not relocatable"));
    }
}

TEST_CASE("bzimage: each way an image can be wrong is one clear error", "[linux][bzimage]") {
    const auto memory = vector_memory({{0, 64 * kMiB}});
    BzImageBuilder builder;

    SECTION("bad boot flag") {
        builder.boot_flag = 0x1234;
        const auto error = load_error(builder.build(), memory);
        CHECK(error.kind == Kind::NotBzImage);
        CHECK(error.message == "not a bzImage: boot flag at 0x1fe is 0x1234 (want 0xaa55)");
    }
    SECTION("bad header magic") {
        builder.magic = 0x21214241; // "AB!!"
        const auto error = load_error(builder.build(), memory);
        CHECK(error.kind == Kind::NotBzImage);
        CHECK(error.message == "not a bzImage: magic at 0x202 is 41 42 21 21 (\"AB!!\") (want \"HdrS\")");
    }
    SECTION("an ELF file is not a bzImage") {
        auto elf = builder.build();
        std::memcpy(elf.data(),
                    "\x7f"
                    "ELF",
                    4);
        elf[0x1fe] = std::byte{0};
        CHECK(load_error(elf, memory).kind == Kind::NotBzImage);
    }
    SECTION("protocol too old") {
        builder.version = 0x0209;
        const auto error = load_error(builder.build(), memory);
        CHECK(error.kind == Kind::ProtocolTooOld);
        CHECK_THAT(error.message,
                   Catch::Contains("boot protocol 2.09 is too old") && Catch::Contains("2.12"));
    }
    SECTION("not LOADED_HIGH: a zImage") {
        builder.loadflags = 0;
        const auto error = load_error(builder.build(), memory);
        CHECK(error.kind == Kind::NotBzImage);
        CHECK_THAT(error.message, Catch::Contains("LOADED_HIGH"));
    }
    SECTION("not 64-bit capable") {
        builder.xloadflags = 0;
        const auto error = load_error(builder.build(), memory);
        CHECK(error.kind == Kind::Not64Bit);
        CHECK_THAT(error.message, Catch::Contains("not 64-bit capable"));
    }
    SECTION("truncated before the end of the header") {
        auto image = builder.build();
        image.resize(0x250);
        const auto error = load_error(image, memory);
        CHECK(error.kind == Kind::Truncated);
        CHECK_THAT(error.message, Catch::Contains("592 bytes"));
    }
    SECTION("truncated inside the setup code") {
        auto image = builder.build();
        image.resize(builder.kernel_offset() - 100);
        const auto error = load_error(image, memory);
        CHECK(error.kind == Kind::Truncated);
        CHECK_THAT(error.message, Catch::Contains("setup_sects 4"));
    }
    SECTION("truncated inside the kernel syssize announces") {
        builder.syssize = static_cast<std::uint32_t>(builder.kernel_bytes / 16 + 1);
        const auto error = load_error(builder.build(), memory);
        CHECK(error.kind == Kind::Truncated);
        CHECK_THAT(error.message, Catch::Contains("syssize"));
    }
    SECTION("kernel too big for RAM") {
        builder.init_size = 60 * kMiB; // from 16 MiB, RAM ends at 64 MiB
        const auto error = load_error(builder.build(), memory);
        CHECK(error.kind == Kind::KernelTooLarge);
        CHECK_THAT(error.message, Catch::Contains("does not fit in guest RAM (64 MiB)"));
    }
    SECTION("command line longer than cmdline_size") {
        builder.cmdline_size = 10;
        LinuxBootOptions options;
        options.command_line = "0123456789";
        CHECK(load_bzimage(builder.build(), memory, options).has_value());
        options.command_line = "0123456789x";
        const auto error = load_error(builder.build(), memory, options);
        CHECK(error.kind == Kind::CommandLineTooLong);
        CHECK(error.message == "command line is 11 bytes; this kernel takes at most 10 (its cmdline_size)");
    }
    SECTION("kernel_alignment not a power of two") {
        builder.kernel_alignment = 0x300000;
        CHECK(load_error(builder.build(), memory).kind == Kind::BadHeader);
    }
    SECTION("a header too short for protocol 2.12") {
        builder.header_length = 0x30;
        CHECK(load_error(builder.build(), memory).kind == Kind::BadHeader);
    }
    SECTION("no RAM for the zero page") {
        const auto high_only = vector_memory({{16 * kMiB, 64 * kMiB}});
        CHECK(load_error(builder.build(), high_only).kind == Kind::LowMemoryMissing);
    }
}

TEST_CASE("bzimage: guest memory is unchanged when loading fails", "[linux][bzimage]") {
    const auto memory = vector_memory({{0, 64 * kMiB}});
    BzImageBuilder builder;
    const auto initrd = initrd_of(128 * kMiB); // cannot fit
    LinuxBootOptions options;
    options.initrd = initrd;
    options.command_line = "quiet";
    CHECK(load_error(builder.build(), memory, options).kind == Kind::InitrdTooLarge);
    const auto low = read_bytes(memory, 0, 64 * kMiB);
    CHECK(std::ranges::all_of(low, [](std::byte b) { return b == std::byte{0}; }));
}

// The real Debian kernel when VMMLAB_TEST_BZIMAGE names one (tools/kvm-sandbox caches its package);
// otherwise the same checks on a synthetic image with the header of Debian's 6.1 kernel.
TEST_CASE("bzimage: a Debian kernel loads for the 64-bit entry", "[linux][bzimage]") {
    std::vector<std::byte> image;
    if (const char* path = std::getenv("VMMLAB_TEST_BZIMAGE"); path != nullptr && *path != '\0') {
        auto bytes = read_binary_file(path);
        REQUIRE(bytes.has_value());
        image = std::move(*bytes);
    } else {
        WARN("VMMLAB_TEST_BZIMAGE is not set: checking a synthetic image with Debian 6.1's header instead");
        BzImageBuilder debian;
        debian.setup_sects = 39;
        debian.xloadflags = 0x7f;
        debian.init_size = 0x3f98000;
        debian.cmdline_size = 0x7ff;
        image = debian.build();
    }
    auto header = parse_bzimage(image);
    REQUIRE(header.has_value());
    CHECK(header->protocol >= kLinuxMinimumProtocol);
    CHECK((header->xloadflags & 0x1) != 0);
    CHECK(header->relocatable);
    CHECK(header->pref_address == 0x1000000);
    CHECK(header->kernel_size <= header->init_size);

    const GuestMemory memory = allocate_guest_ram(256 * kMiB, BackingOptions{});
    const auto initrd = initrd_of(4 * kMiB);
    LinuxBootOptions options;
    options.command_line = "console=ttyS0 reboot=acpi";
    options.initrd = initrd;
    auto loaded = load_bzimage(image, memory, options);
    REQUIRE(loaded.has_value());
    CHECK(loaded->entry.value == header->pref_address + 0x200);
    CHECK(loaded->initrd.value >= loaded->kernel_end.value);
    CHECK(loaded->initrd.value + initrd.size() <= 256 * kMiB);
    const boot_params zero_page = zero_page_of(memory);
    CHECK(zero_page.hdr.version == header->protocol);
    CHECK(zero_page.hdr.init_size == header->init_size);
    CHECK(zero_page.hdr.type_of_loader == 0xff);
}

TEST_CASE("bzimage: read_binary_file names the path and the cause", "[linux][bzimage]") {
    const auto folder =
        std::filesystem::temp_directory_path() / ("vmmlab-read-file-" + std::to_string(::getpid()));
    std::filesystem::create_directories(folder);
    const auto file = folder / "kernel";
    {
        std::ofstream out(file, std::ios::binary);
        out << "abc" << std::string(70000, 'x'); // more than one 64 KiB read
    }
    auto bytes = read_binary_file(file);
    REQUIRE(bytes.has_value());
    CHECK(bytes->size() == 3 + 70000);
    CHECK(bytes->front() == std::byte{'a'});

    auto missing = read_binary_file(folder / "absent");
    REQUIRE_FALSE(missing.has_value());
    CHECK(missing.error() == (folder / "absent").string() + ": No such file or directory");

    auto directory = read_binary_file(folder);
    REQUIRE_FALSE(directory.has_value());
    CHECK(directory.error() == folder.string() + ": is a directory, not a file");
    std::filesystem::remove_all(folder);
}
