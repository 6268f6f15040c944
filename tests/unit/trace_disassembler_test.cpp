#include <catch2/catch.hpp>
#include <initializer_list>
#include <vector>

#include "trace/disassembler.hpp"

using namespace vmmlab;

namespace {

std::vector<std::byte> bytes(std::initializer_list<unsigned> values) {
    std::vector<std::byte> out;
    for (const unsigned value : values)
        out.push_back(static_cast<std::byte>(value));
    return out;
}

std::string text_of(Disassembler& disassembler, std::initializer_list<unsigned> code,
                    std::uint64_t rip = 0x1000) {
    const auto instruction = disassembler.disassemble(bytes(code), rip);
    REQUIRE(instruction.has_value());
    return instruction->text();
}

constexpr std::uint64_t kPresentWritable = 0x3;
constexpr std::uint64_t kLargeLeaf = 0x83;

// 1 MiB of RAM with hand-made 4-level tables: PML4 0x1000 -> PDPT 0x2000 -> PD 0x3000 -> PT 0x4000.
//   virtual 0x200000 (4K) -> physical 0x10000
//   virtual 0x201000 (4K) -> physical 0x30000 (not adjacent: a crossing instruction must be stitched)
//   virtual 0x202000      -> not present
//   virtual 0x400000 (2M) -> physical 0x0
struct PagedGuest {
    std::vector<std::byte> ram = std::vector<std::byte>(1 << 20);
    GuestMemory memory{{GuestMemory::Region{GuestAddress{0}, ram.size(), ram.data()}}};
    static constexpr std::uint64_t kCr3 = 0x1000;

    PagedGuest() {
        entry(0x1000, 0, 0x2000 | kPresentWritable);
        entry(0x2000, 0, 0x3000 | kPresentWritable);
        entry(0x3000, 1, 0x4000 | kPresentWritable); // PD entry 1: virtual [2 MiB, 4 MiB) through a PT
        entry(0x3000, 2, 0x0 | kLargeLeaf);          // PD entry 2: virtual [4 MiB, 6 MiB) -> 0 as a 2M leaf
        entry(0x4000, 0, 0x10000 | kPresentWritable);
        entry(0x4000, 1, 0x30000 | kPresentWritable);
    }
    void entry(std::uint64_t table, std::uint64_t index, std::uint64_t value) {
        REQUIRE(memory.write_object(GuestAddress{table + index * 8}, value));
    }
    void put(std::uint64_t physical, std::initializer_list<unsigned> code) {
        REQUIRE(memory.write(GuestAddress{physical}, bytes(code)));
    }
};

} // namespace

TEST_CASE("disassembler: known x86-64 instructions", "[trace]") {
    Disassembler disassembler;
    CHECK(disassembler.mode() == CpuMode::Long64);
    CHECK(text_of(disassembler, {0xee}) == "out dx, al");
    CHECK(text_of(disassembler, {0xe6, 0x80}) == "out 0x80, al");
    CHECK(text_of(disassembler, {0xec}) == "in al, dx");
    CHECK(text_of(disassembler, {0x0f, 0xa2}) == "cpuid");
    CHECK(text_of(disassembler, {0x0f, 0x01, 0xd9}) == "vmmcall");
    CHECK(text_of(disassembler, {0x0f, 0x01, 0xc1}) == "vmcall");
    CHECK(text_of(disassembler, {0xf4}) == "hlt");
    CHECK(text_of(disassembler, {0x89, 0x07}) == "mov dword ptr [rdi], eax");
    // Only the first instruction is decoded; its length says where the next one starts.
    const auto first = disassembler.disassemble(bytes({0x89, 0x07, 0xf4, 0xee}), 0x1000);
    REQUIRE(first.has_value());
    CHECK(first->mnemonic == "mov");
    CHECK(first->operands == "dword ptr [rdi], eax");
    CHECK(first->length == 2);
    // Relative targets are shown as absolute addresses from rip.
    CHECK(text_of(disassembler, {0xe8, 0x00, 0x00, 0x00, 0x00}, 0x40'0000) == "call 0x400005");
}

TEST_CASE("disassembler: 16- and 32-bit modes", "[trace]") {
    Disassembler real(CpuMode::Real16);
    CHECK(text_of(real, {0xb8, 0x34, 0x12}) == "mov ax, 0x1234");
    CHECK(text_of(real, {0xee}) == "out dx, al");
    Disassembler protected_mode(CpuMode::Protected32);
    const auto mov = protected_mode.disassemble(bytes({0xb8, 0x78, 0x56, 0x34, 0x12}), 0);
    REQUIRE(mov.has_value());
    CHECK(mov->text() == "mov eax, 0x12345678");
    CHECK(mov->length == 5);
    // 0x48 is "dec eax" in 32-bit mode, a REX prefix in 64-bit mode.
    CHECK(text_of(protected_mode, {0x48}) == "dec eax");

    Disassembler moved = std::move(real);
    CHECK(text_of(moved, {0xf4}) == "hlt");
}

TEST_CASE("disassembler: bytes that are not an instruction are an error", "[trace]") {
    Disassembler disassembler;
    const auto truncated = disassembler.disassemble(bytes({0x0f, 0x01}), 0x1234);
    REQUIRE_FALSE(truncated.has_value());
    CHECK(truncated.error().message == "cannot decode 0f 01 at 0x1234");
    const auto empty = disassembler.disassemble({}, 0x10);
    REQUIRE_FALSE(empty.has_value());
    CHECK(empty.error().message == "no bytes at 0x10");
}

TEST_CASE("disassembler: guest instruction fetch follows the page tables across a page boundary", "[trace]") {
    PagedGuest guest;
    Disassembler disassembler;

    // vmmcall split over two pages whose frames are far apart: 0f 01 at the end of the first, d9 at the
    // start of the second.
    guest.put(0x10ffe, {0x0f, 0x01});
    guest.put(0x30000, {0xd9, 0xf4});
    const auto fetched = read_guest_instruction(guest.memory, PagedGuest::kCr3, true, 0x200ffe);
    REQUIRE(fetched.has_value());
    CHECK(fetched->length == kMaxInstructionLength);
    CHECK(fetched->bytes[0] == std::byte{0x0f});
    CHECK(fetched->bytes[1] == std::byte{0x01});
    CHECK(fetched->bytes[2] == std::byte{0xd9});
    CHECK(fetched->bytes[3] == std::byte{0xf4});
    const auto vmmcall = disassemble_guest(disassembler, guest.memory, PagedGuest::kCr3, true, 0x200ffe);
    REQUIRE(vmmcall.has_value());
    CHECK(vmmcall->text() == "vmmcall");
    CHECK(vmmcall->length == 3);

    // Through a 2 MiB leaf: virtual 0x405000 is physical 0x5000.
    guest.put(0x5000, {0xe6, 0x80});
    const auto out = disassemble_guest(disassembler, guest.memory, PagedGuest::kCr3, true, 0x405000);
    REQUIRE(out.has_value());
    CHECK(out->text() == "out 0x80, al");
}

TEST_CASE("disassembler: unmapped code is an error; an unmapped next page shortens the fetch", "[trace]") {
    PagedGuest guest;
    Disassembler disassembler;

    const auto unmapped = read_guest_instruction(guest.memory, PagedGuest::kCr3, true, 0x202000);
    REQUIRE_FALSE(unmapped.has_value());
    CHECK(unmapped.error().message.starts_with(
        "instruction fetch at rip 0x202000: virtual address 0x202000: PT "
        "entry 2"));
    CHECK(unmapped.error().message.ends_with("is not present"));
    CHECK_FALSE(read_guest_instruction(guest.memory, PagedGuest::kCr3, true, 0x8000'0000'0000).has_value());

    // The last two bytes before the hole: cpuid fits, a cut-off vmmcall does not decode.
    guest.put(0x30ffe, {0x0f, 0xa2});
    const auto short_fetch = read_guest_instruction(guest.memory, PagedGuest::kCr3, true, 0x201ffe);
    REQUIRE(short_fetch.has_value());
    CHECK(short_fetch->length == 2);
    const auto cpuid = disassemble_guest(disassembler, guest.memory, PagedGuest::kCr3, true, 0x201ffe);
    REQUIRE(cpuid.has_value());
    CHECK(cpuid->text() == "cpuid");
    guest.put(0x30ffe, {0x0f, 0x01});
    const auto cut = disassemble_guest(disassembler, guest.memory, PagedGuest::kCr3, true, 0x201ffe);
    REQUIRE_FALSE(cut.has_value());
    CHECK(cut.error().message == "cannot decode 0f 01 at 0x201ffe");
}

TEST_CASE("disassembler: without paging rip is a physical address, bounded by RAM", "[trace]") {
    PagedGuest guest;
    Disassembler disassembler;
    guest.put(0x8000, {0xee});
    const auto out = disassemble_guest(disassembler, guest.memory, 0, false, 0x8000);
    REQUIRE(out.has_value());
    CHECK(out->text() == "out dx, al");

    const std::uint64_t last = guest.ram.size() - 1;
    guest.put(last, {0xf4});
    const auto at_end = read_guest_instruction(guest.memory, 0, false, last);
    REQUIRE(at_end.has_value());
    CHECK(at_end->length == 1);
    CHECK(disassemble_guest(disassembler, guest.memory, 0, false, last)->text() == "hlt");

    const auto outside = read_guest_instruction(guest.memory, 0, false, guest.ram.size());
    REQUIRE_FALSE(outside.has_value());
    CHECK(outside.error().message ==
          "instruction fetch at rip 0x100000: guest-physical 0x100000 is outside RAM");
}
