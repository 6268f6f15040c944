#include <algorithm>
#include <array>
#include <catch2/catch.hpp>
#include <cstring>
#include <functional>
#include <vector>

#include <elf.h>

#include "boot/elf_loader.hpp"
#include "guest/abi/boot_abi.hpp"

using namespace vmmlab;
using Kind = ElfError::Kind;

namespace {

constexpr std::uint64_t kLoad = abi::kGuestLoadAddress;
constexpr std::byte kFill{0xcc}; // what guest RAM holds before loading, so zero-fill is visible

// Builds x86-64 ELF64 executables in memory: header, program headers, then each segment's bytes.
struct ElfBuilder {
    struct Segment {
        std::uint32_t type = PT_LOAD;
        std::uint32_t flags = PF_R;
        std::uint64_t vaddr = 0;
        std::uint64_t paddr = 0;
        std::vector<std::byte> data;
        std::uint64_t memsz = 0; // 0: same as data.size()
    };
    std::uint64_t entry = kLoad;
    std::vector<Segment> segments;

    ElfBuilder& add(std::uint32_t type, std::uint32_t flags, std::uint64_t address,
                    std::vector<std::byte> data, std::uint64_t memsz = 0) {
        segments.push_back(Segment{type, flags, address, address, std::move(data), memsz});
        return *this;
    }

    std::vector<std::byte> build() const {
        const std::size_t table_end = sizeof(Elf64_Ehdr) + segments.size() * sizeof(Elf64_Phdr);
        std::vector<std::byte> file(table_end);
        Elf64_Ehdr header{};
        std::memcpy(header.e_ident, ELFMAG, SELFMAG);
        header.e_ident[EI_CLASS] = ELFCLASS64;
        header.e_ident[EI_DATA] = ELFDATA2LSB;
        header.e_ident[EI_VERSION] = EV_CURRENT;
        header.e_type = ET_EXEC;
        header.e_machine = EM_X86_64;
        header.e_version = EV_CURRENT;
        header.e_entry = entry;
        header.e_phoff = sizeof(Elf64_Ehdr);
        header.e_ehsize = sizeof(Elf64_Ehdr);
        header.e_phentsize = sizeof(Elf64_Phdr);
        header.e_phnum = static_cast<std::uint16_t>(segments.size());
        std::memcpy(file.data(), &header, sizeof header);
        for (std::size_t i = 0; i < segments.size(); ++i) {
            const auto& segment = segments[i];
            file.resize((file.size() + 15) & ~std::size_t{15});
            Elf64_Phdr ph{};
            ph.p_type = segment.type;
            ph.p_flags = segment.flags;
            ph.p_offset = file.size();
            ph.p_vaddr = segment.vaddr;
            ph.p_paddr = segment.paddr;
            ph.p_filesz = segment.data.size();
            ph.p_memsz = segment.memsz != 0 ? segment.memsz : segment.data.size();
            ph.p_align = 16;
            std::memcpy(file.data() + sizeof(Elf64_Ehdr) + i * sizeof(Elf64_Phdr), &ph, sizeof ph);
            file.insert(file.end(), segment.data.begin(), segment.data.end());
        }
        return file;
    }
};

std::vector<std::byte> pattern(std::size_t size, std::uint8_t seed) {
    std::vector<std::byte> bytes(size);
    for (std::size_t i = 0; i < size; ++i)
        bytes[i] = std::byte(static_cast<std::uint8_t>(seed + i * 7));
    return bytes;
}

void patch_header(std::vector<std::byte>& file, const std::function<void(Elf64_Ehdr&)>& change) {
    Elf64_Ehdr header;
    std::memcpy(&header, file.data(), sizeof header);
    change(header);
    std::memcpy(file.data(), &header, sizeof header);
}

void patch_segment(std::vector<std::byte>& file, std::size_t index,
                   const std::function<void(Elf64_Phdr&)>& change) {
    const std::size_t offset = sizeof(Elf64_Ehdr) + index * sizeof(Elf64_Phdr);
    Elf64_Phdr ph;
    std::memcpy(&ph, file.data() + offset, sizeof ph);
    change(ph);
    std::memcpy(file.data() + offset, &ph, sizeof ph);
}

// Guest RAM filled with kFill: 4 MiB at 0 unless told otherwise.
struct TestRam {
    std::vector<std::byte> bytes;
    GuestMemory memory;
    explicit TestRam(std::uint64_t base = 0, std::size_t size = 4 << 20)
        : bytes(size, kFill), memory({GuestMemory::Region{GuestAddress{base}, bytes.size(), bytes.data()}}) {}
    bool untouched() const {
        return std::ranges::all_of(bytes, [](std::byte b) { return b == kFill; });
    }
};

// The tiny guest's shape: code at the load address, then data with a .bss tail.
ElfBuilder typical_guest() {
    ElfBuilder builder;
    builder.entry = kLoad + 0x10;
    builder.add(PT_LOAD, PF_R | PF_X, kLoad, pattern(0x180, 1));
    builder.add(PT_LOAD, PF_R | PF_W, kLoad + 0x1000, pattern(0x20, 2), 0x2000);
    builder.add(PT_GNU_STACK, PF_R | PF_W, 0, {});
    return builder;
}

ElfError expect_error(const std::vector<std::byte>& file, TestRam& ram) {
    auto result = load_elf64(file, ram.memory);
    REQUIRE_FALSE(result.has_value());
    CHECK(ram.untouched());
    return result.error();
}

} // namespace

TEST_CASE("an ELF executable loads: bytes copied, bss zeroed, entry and image range reported", "[elf]") {
    TestRam ram;
    const auto file = typical_guest().build();
    auto loaded = load_elf64(file, ram.memory);
    REQUIRE(loaded.has_value());

    CHECK(loaded->entry == GuestAddress{kLoad + 0x10});
    CHECK(loaded->entry_virtual == kLoad + 0x10);
    CHECK(loaded->lowest == GuestAddress{kLoad});
    CHECK(loaded->highest == GuestAddress{kLoad + 0x1000 + 0x2000 - 1});
    CHECK(loaded->image_size() == 0x3000);
    REQUIRE(loaded->segments.size() == 2);
    CHECK(loaded->segments[0].index == 0);
    CHECK(loaded->segments[0].executable());
    CHECK(loaded->segments[1].index == 1);
    CHECK_FALSE(loaded->segments[1].executable());
    CHECK(loaded->segments[1].file_size == 0x20);
    CHECK(loaded->segments[1].memory_size == 0x2000);

    std::vector<std::byte> text(0x180);
    REQUIRE(ram.memory.read(GuestAddress{kLoad}, text).has_value());
    CHECK(text == pattern(0x180, 1));
    std::vector<std::byte> data(0x20);
    REQUIRE(ram.memory.read(GuestAddress{kLoad + 0x1000}, data).has_value());
    CHECK(data == pattern(0x20, 2));

    const auto bss = std::span(ram.bytes).subspan(kLoad + 0x1020, 0x2000 - 0x20);
    CHECK(std::ranges::all_of(bss, [](std::byte b) { return b == std::byte{0}; }));
    // Bytes outside the segments are left alone: the gap after .text and the byte after .bss.
    CHECK(ram.bytes[kLoad + 0x180] == kFill);
    CHECK(ram.bytes[kLoad + 0xfff] == kFill);
    CHECK(ram.bytes[kLoad + 0x3000] == kFill);
    CHECK(ram.bytes[kLoad - 1] == kFill);
}

TEST_CASE("ELF segments are reported in guest-address order with their header index", "[elf]") {
    TestRam ram;
    ElfBuilder builder;
    builder.entry = kLoad + 0x2000;
    builder.add(PT_LOAD, PF_R | PF_W, kLoad + 0x4000, pattern(0x10, 3));
    builder.add(PT_NOTE, PF_R, 0, pattern(4, 4));
    builder.add(PT_LOAD, PF_R | PF_X, kLoad + 0x2000, pattern(0x10, 5));
    builder.add(PT_LOAD, PF_R, kLoad, pattern(0x10, 6));
    auto loaded = load_elf64(builder.build(), ram.memory);
    REQUIRE(loaded.has_value());
    REQUIRE(loaded->segments.size() == 3);
    CHECK(loaded->segments[0].index == 3);
    CHECK(loaded->segments[1].index == 2);
    CHECK(loaded->segments[2].index == 0);
    CHECK(loaded->lowest == GuestAddress{kLoad});
    CHECK(loaded->highest == GuestAddress{kLoad + 0x400f});
}

TEST_CASE("ELF segments load at p_paddr, the entry is found by p_vaddr and translated", "[elf]") {
    TestRam ram;
    ElfBuilder builder;
    builder.add(PT_LOAD, PF_R | PF_X, 0, pattern(0x40, 7));
    builder.segments[0].vaddr = 0xffffffff80000000;
    builder.segments[0].paddr = 0x300000;
    builder.entry = 0xffffffff80000020;
    auto loaded = load_elf64(builder.build(), ram.memory);
    REQUIRE(loaded.has_value());
    CHECK(loaded->entry == GuestAddress{0x300020});
    CHECK(loaded->entry_virtual == 0xffffffff80000020);
    CHECK(ram.bytes[0x300000] == pattern(1, 7)[0]);
    CHECK(ram.bytes[0x200000] == kFill);
}

TEST_CASE("a PT_LOAD segment with no memory size is ignored", "[elf]") {
    TestRam ram;
    auto builder = typical_guest();
    builder.add(PT_LOAD, PF_R, 0x7fffffff00000000, {}); // nowhere near RAM, but empty
    auto loaded = load_elf64(builder.build(), ram.memory);
    REQUIRE(loaded.has_value());
    CHECK(loaded->segments.size() == 2);
}

TEST_CASE("a segment may span two adjacent RAM regions", "[elf]") {
    std::vector<std::byte> low(kLoad + 0x800, kFill), high(0x100000, kFill);
    GuestMemory memory({GuestMemory::Region{GuestAddress{0}, low.size(), low.data()},
                        GuestMemory::Region{GuestAddress{low.size()}, high.size(), high.data()}});
    ElfBuilder builder;
    builder.entry = kLoad;
    builder.add(PT_LOAD, PF_R | PF_X, kLoad, pattern(0x1000, 8), 0x3000);
    auto loaded = load_elf64(builder.build(), memory);
    REQUIRE(loaded.has_value());
    std::vector<std::byte> back(0x1000);
    REQUIRE(memory.read(GuestAddress{kLoad}, back).has_value());
    CHECK(back == pattern(0x1000, 8));
    // Segment byte k lands at high[k - 0x800].
    CHECK(high[0x1000 - 0x800] == std::byte{0});
    CHECK(high[0x2fff - 0x800] == std::byte{0});
    CHECK(high[0x3000 - 0x800] == kFill);
}

TEST_CASE("each kind of bad ELF file gets its own error and loads nothing", "[elf]") {
    TestRam ram;
    auto file = typical_guest().build();

    SECTION("bad magic") {
        file[1] = std::byte{'X'};
        auto error = expect_error(file, ram);
        CHECK(error.kind == Kind::BadMagic);
        CHECK(error.message == "not an ELF file (bad magic)");
    }
    SECTION("a short file that is not ELF is bad magic, not truncated") {
        const std::vector<std::byte> text{std::byte{'#'}, std::byte{'!'}};
        CHECK(expect_error(text, ram).kind == Kind::BadMagic);
    }
    SECTION("empty file") {
        CHECK(expect_error({}, ram).kind == Kind::TruncatedHeader);
    }
    SECTION("truncated header") {
        file.resize(40);
        auto error = expect_error(file, ram);
        CHECK(error.kind == Kind::TruncatedHeader);
        CHECK(error.message == "truncated ELF header (40 bytes; need 64)");
    }
    SECTION("32-bit") {
        file[EI_CLASS] = std::byte{ELFCLASS32};
        auto error = expect_error(file, ram);
        CHECK(error.kind == Kind::WrongClass);
        CHECK(error.message == "ELF class is 32-bit; need ELF64");
    }
    SECTION("invalid class") {
        file[EI_CLASS] = std::byte{7};
        CHECK(expect_error(file, ram).kind == Kind::WrongClass);
    }
    SECTION("big-endian") {
        file[EI_DATA] = std::byte{ELFDATA2MSB};
        auto error = expect_error(file, ram);
        CHECK(error.kind == Kind::WrongEndianness);
        CHECK(error.message == "not little-endian");
    }
    SECTION("unknown version") {
        patch_header(file, [](Elf64_Ehdr& h) { h.e_version = 2; });
        CHECK(expect_error(file, ram).kind == Kind::WrongVersion);
    }
    SECTION("position-independent (ET_DYN)") {
        patch_header(file, [](Elf64_Ehdr& h) { h.e_type = ET_DYN; });
        auto error = expect_error(file, ram);
        CHECK(error.kind == Kind::WrongType);
        CHECK_THAT(error.message, Catch::Contains("ET_DYN"));
    }
    SECTION("relocatable object") {
        patch_header(file, [](Elf64_Ehdr& h) { h.e_type = ET_REL; });
        CHECK(expect_error(file, ram).kind == Kind::WrongType);
    }
    SECTION("another machine") {
        patch_header(file, [](Elf64_Ehdr& h) { h.e_machine = EM_AARCH64; });
        auto error = expect_error(file, ram);
        CHECK(error.kind == Kind::WrongMachine);
        CHECK_THAT(error.message, Catch::StartsWith("machine is not x86-64"));
    }
    SECTION("program header entry size") {
        patch_header(file, [](Elf64_Ehdr& h) { h.e_phentsize = 32; });
        auto error = expect_error(file, ram);
        CHECK(error.kind == Kind::BadProgramHeaderSize);
        CHECK(error.message == "program header entry size is 32; need 56");
    }
    SECTION("extended program header numbering") {
        patch_header(file, [](Elf64_Ehdr& h) { h.e_phnum = PN_XNUM; });
        CHECK(expect_error(file, ram).kind == Kind::TooManyProgramHeaders);
    }
    SECTION("program header table past the end") {
        patch_header(file, [&](Elf64_Ehdr& h) { h.e_phoff = file.size() - 100; });
        auto error = expect_error(file, ram);
        CHECK(error.kind == Kind::ProgramHeadersOutsideFile);
        CHECK_THAT(error.message, Catch::StartsWith("program header table lies outside the file"));
    }
    SECTION("program header offset that wraps") {
        patch_header(file, [](Elf64_Ehdr& h) { h.e_phoff = ~std::uint64_t{0} - 8; });
        CHECK(expect_error(file, ram).kind == Kind::ProgramHeadersOutsideFile);
    }
    SECTION("too many program headers for the file") {
        patch_header(file, [](Elf64_Ehdr& h) { h.e_phnum = 1000; });
        CHECK(expect_error(file, ram).kind == Kind::ProgramHeadersOutsideFile);
    }
    SECTION("segment bytes past the end of the file") {
        patch_segment(file, 1, [](Elf64_Phdr& ph) { ph.p_offset = 0x1000; });
        auto error = expect_error(file, ram);
        CHECK(error.kind == Kind::SegmentOutsideFile);
        CHECK_THAT(error.message,
                   Catch::StartsWith("segment 1: file range 0x1000+0x20 lies outside the file"));
    }
    SECTION("segment file range that wraps") {
        patch_segment(file, 0, [](Elf64_Phdr& ph) {
            ph.p_offset = 0x100;
            ph.p_filesz = ~std::uint64_t{0} - 0x80;
            ph.p_memsz = ph.p_filesz;
        });
        CHECK(expect_error(file, ram).kind == Kind::SegmentOutsideFile);
    }
    SECTION("filesz larger than memsz") {
        patch_segment(file, 1, [](Elf64_Phdr& ph) { ph.p_memsz = 0x10; });
        auto error = expect_error(file, ram);
        CHECK(error.kind == Kind::FileSizeLargerThanMemorySize);
        CHECK(error.message == "segment 1: filesz 0x20 larger than memsz 0x10");
    }
    SECTION("segment outside RAM") {
        patch_segment(file, 1, [](Elf64_Phdr& ph) { ph.p_paddr = (4 << 20) - 0x1000; });
        auto error = expect_error(file, ram);
        CHECK(error.kind == Kind::SegmentOutsideRam);
        CHECK(error.message == "segment 1: guest range 0x3ff000+0x2000 is outside RAM");
    }
    SECTION("segment guest range that wraps") {
        patch_segment(file, 0, [](Elf64_Phdr& ph) { ph.p_paddr = ~std::uint64_t{0} - 0x10; });
        auto error = expect_error(file, ram);
        CHECK(error.kind == Kind::SegmentOutsideRam);
        CHECK_THAT(error.message, Catch::StartsWith("segment 0: guest range"));
    }
    SECTION("overlapping segments") {
        patch_segment(file, 1, [](Elf64_Phdr& ph) { ph.p_paddr = kLoad + 0x17f; });
        auto error = expect_error(file, ram);
        CHECK(error.kind == Kind::SegmentsOverlap);
        CHECK(error.message == "segments 0 and 1 overlap");
    }
    SECTION("segments that touch do not overlap") {
        patch_segment(file, 1, [](Elf64_Phdr& ph) { ph.p_paddr = kLoad + 0x180; });
        CHECK(load_elf64(file, ram.memory).has_value());
    }
    SECTION("entry in a data segment") {
        patch_header(file, [](Elf64_Ehdr& h) { h.e_entry = kLoad + 0x1000; });
        auto error = expect_error(file, ram);
        CHECK(error.kind == Kind::EntryOutsideSegments);
        CHECK(error.message == "entry point 0x201000 is not inside a loaded executable segment");
    }
    SECTION("entry just past the executable bytes") {
        patch_header(file, [](Elf64_Ehdr& h) { h.e_entry = kLoad + 0x180; });
        CHECK(expect_error(file, ram).kind == Kind::EntryOutsideSegments);
    }
    SECTION("entry below every segment") {
        patch_header(file, [](Elf64_Ehdr& h) { h.e_entry = 0; });
        CHECK(expect_error(file, ram).kind == Kind::EntryOutsideSegments);
    }
    SECTION("no program headers") {
        patch_header(file, [](Elf64_Ehdr& h) { h.e_phnum = 0; });
        auto error = expect_error(file, ram);
        CHECK(error.kind == Kind::NoLoadSegment);
        CHECK(error.message == "no PT_LOAD segment");
    }
    SECTION("only non-loadable segments") {
        patch_segment(file, 0, [](Elf64_Phdr& ph) { ph.p_type = PT_NOTE; });
        patch_segment(file, 1, [](Elf64_Phdr& ph) { ph.p_type = PT_NULL; });
        CHECK(expect_error(file, ram).kind == Kind::NoLoadSegment);
    }
}

TEST_CASE("every truncation of a valid ELF file is refused and loads nothing", "[elf]") {
    TestRam ram;
    const auto file = typical_guest().build();
    REQUIRE(load_elf64(file, ram.memory).has_value());
    TestRam fresh;
    for (std::size_t length = 0; length < file.size(); ++length) {
        INFO("prefix of " << length << " bytes");
        auto result = load_elf64(std::span(file).first(length), fresh.memory);
        CHECK_FALSE(result.has_value());
    }
    CHECK(fresh.untouched());
}

TEST_CASE("every single-byte corruption of the ELF header and program headers is handled", "[elf]") {
    // Not every corruption is an error (some bytes are unused); none may crash or load half a file.
    const auto file = typical_guest().build();
    const std::size_t headers = sizeof(Elf64_Ehdr) + 3 * sizeof(Elf64_Phdr);
    for (std::size_t offset = 0; offset < headers; ++offset) {
        for (const auto value : std::to_array<std::uint8_t>({0x00, 0x01, 0x7f, 0x80, 0xff})) {
            auto corrupt = file;
            corrupt[offset] = std::byte{value};
            TestRam ram(kLoad, 0x10000); // just the image's neighbourhood: this loop runs ~1000 times
            auto result = load_elf64(corrupt, ram.memory);
            if (!result) {
                INFO("byte " << offset << " = " << int{value} << ": " << result.error().message);
                CHECK(ram.untouched());
                CHECK_FALSE(result.error().message.empty());
            }
        }
    }
}
