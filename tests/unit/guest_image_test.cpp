#include <catch2/catch.hpp>
#include <cstring>

#include <elf.h>

#include "guest/abi/boot_abi.hpp"
#include "guest/embedded_image.hpp"

namespace {

template <typename T>
T read_at(std::span<const std::byte> bytes, size_t offset) {
    REQUIRE(offset + sizeof(T) <= bytes.size());
    T value;
    std::memcpy(&value, bytes.data() + offset, sizeof(T));
    return value;
}

} // namespace

TEST_CASE("the embedded guest is a static ELF64 linked at the guest load address", "[guest][image]") {
    const auto image = vmmlab::embedded_guest_image();
    REQUIRE(image.size() > sizeof(Elf64_Ehdr));
    const auto header = read_at<Elf64_Ehdr>(image, 0);
    CHECK(std::memcmp(header.e_ident, ELFMAG, SELFMAG) == 0);
    CHECK(header.e_ident[EI_CLASS] == ELFCLASS64);
    CHECK(header.e_ident[EI_DATA] == ELFDATA2LSB);
    CHECK(header.e_type == ET_EXEC);
    CHECK(header.e_machine == EM_X86_64);
    CHECK(header.e_entry == vmmlab::abi::kGuestLoadAddress);
    REQUIRE(header.e_phentsize == sizeof(Elf64_Phdr));
    REQUIRE(header.e_phnum >= 1);

    uint64_t lowest = UINT64_MAX;
    bool entry_is_executable = false;
    for (unsigned i = 0; i < header.e_phnum; ++i) {
        const auto segment = read_at<Elf64_Phdr>(image, header.e_phoff + i * sizeof(Elf64_Phdr));
        CAPTURE(i, segment.p_type);
        CHECK(segment.p_type == PT_LOAD); // no PT_INTERP, PT_DYNAMIC, PT_NOTE, PT_GNU_STACK
        CHECK(segment.p_vaddr % 4096 == 0);
        CHECK(segment.p_offset % 4096 == 0);
        CHECK(segment.p_paddr == segment.p_vaddr);
        CHECK(segment.p_filesz <= segment.p_memsz);
        CHECK(segment.p_offset + segment.p_filesz <= image.size());
        lowest = std::min<uint64_t>(lowest, segment.p_vaddr);
        if (header.e_entry >= segment.p_vaddr && header.e_entry < segment.p_vaddr + segment.p_memsz)
            entry_is_executable = (segment.p_flags & PF_X) != 0;
    }
    CHECK(lowest == vmmlab::abi::kGuestLoadAddress);
    CHECK(entry_is_executable);
}
