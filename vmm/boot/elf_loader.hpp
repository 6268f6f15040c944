// Loads an x86-64 ELF64 executable (the tiny guest) into guest memory.
//
// Rules:
// - Only ET_EXEC is accepted. ET_DYN (position-independent) is refused: loading it at its link addresses
//   (often 0) would land on the GDT and boot block, and relocating it is not this loader's job.
// - Each PT_LOAD segment is placed at its p_paddr, the guest-physical load address; p_vaddr matters only
//   for finding the entry point. The tiny guest is linked with p_paddr == p_vaddr and runs on an identity
//   map, so both are the same there.
// - PT_LOAD segments with p_memsz == 0 are accepted and ignored; every other segment type is ignored.
// - p_align is not checked: the loader copies bytes, it does not map pages.
// - The whole file is validated before any byte is written: on error guest memory is unchanged.
#pragma once

#include <cstddef>
#include <cstdint>
#include <expected>
#include <span>
#include <string>
#include <vector>

#include "memory/guest_address.hpp"
#include "memory/guest_memory.hpp"

namespace vmmlab {

struct ElfError {
    enum class Kind {
        TruncatedHeader,       // shorter than the 64-byte ELF header
        BadMagic,              // not "\x7fELF"
        WrongClass,            // not ELFCLASS64
        WrongEndianness,       // not little-endian
        WrongVersion,          // e_ident[EI_VERSION] or e_version is not EV_CURRENT
        WrongType,             // not ET_EXEC (ET_DYN, ET_REL, core files, ...)
        WrongMachine,          // not EM_X86_64
        BadProgramHeaderSize,  // e_phentsize is not sizeof(Elf64_Phdr)
        TooManyProgramHeaders, // e_phnum == PN_XNUM (extended numbering is not supported)
        ProgramHeadersOutsideFile,
        SegmentOutsideFile, // p_offset + p_filesz beyond the end of the file (or wrapping)
        FileSizeLargerThanMemorySize,
        SegmentOutsideRam,    // p_paddr + p_memsz not inside guest memory (or wrapping)
        SegmentsOverlap,      // two PT_LOAD segments share a guest-physical byte
        EntryOutsideSegments, // e_entry is not inside the file bytes of an executable PT_LOAD
        NoLoadSegment,        // no PT_LOAD segment with a non-zero p_memsz
    };
    Kind kind;
    std::string message; // one line, e.g. "segment 2: file range 0x1000+0x200 lies outside the file"
};

struct ElfSegment {
    std::size_t index;             // position in the program header table (as readelf numbers it)
    GuestAddress address;          // p_paddr: where the first byte lands in guest memory
    std::uint64_t virtual_address; // p_vaddr
    std::uint64_t file_offset;
    std::uint64_t file_size;   // bytes copied from the file
    std::uint64_t memory_size; // file_size plus the zero-filled tail
    std::uint32_t flags;       // PF_R | PF_W | PF_X
    bool executable() const;
    GuestAddress end() const { return address + memory_size; } // one past the last byte
};

struct LoadedElf {
    GuestAddress entry; // guest-physical address of the first instruction (e_entry through its segment)
    std::uint64_t
        entry_virtual;    // e_entry as linked; equal to `entry` when the segment has p_paddr == p_vaddr
    GuestAddress lowest;  // first byte of the lowest segment
    GuestAddress highest; // last byte of the highest segment (inclusive)
    std::vector<ElfSegment> segments; // PT_LOAD segments with p_memsz > 0, in guest-address order
    // Bytes from `lowest` to `highest` inclusive: the range to mark Reserved (gaps included).
    std::uint64_t image_size() const { return highest.value - lowest.value + 1; }
};

// Validates `file` completely, then copies each PT_LOAD segment's file bytes to its p_paddr and zero-fills
// the rest of its p_memsz. Nothing in `file` can make this read outside `file` or write outside `memory`.
std::expected<LoadedElf, ElfError> load_elf64(std::span<const std::byte> file, const GuestMemory& memory);

} // namespace vmmlab
