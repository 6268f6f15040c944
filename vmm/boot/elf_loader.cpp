#include "boot/elf_loader.hpp"

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <type_traits>
#include <utility>

#include <elf.h>
#include <fmt/format.h>

namespace vmmlab {

// The file's fields are read with memcpy into the host's structs: both are little-endian x86-64.
static_assert(std::endian::native == std::endian::little, "the ELF loader assumes a little-endian host");

namespace {

using Kind = ElfError::Kind;

std::unexpected<ElfError> fail(Kind kind, std::string message) {
    return std::unexpected(ElfError{kind, std::move(message)});
}

// True when [offset, offset + length) lies inside a buffer of `size` bytes, without overflow.
bool inside(std::uint64_t offset, std::uint64_t length, std::uint64_t size) {
    return offset <= size && length <= size - offset;
}

template <typename T>
T read_struct(std::span<const std::byte> file, std::uint64_t offset) {
    static_assert(std::is_trivially_copyable_v<T>);
    T value;
    std::memcpy(&value, file.data() + offset, sizeof value); // callers checked the range
    return value;
}

std::expected<void, ElfError> check_header(std::span<const std::byte> file, const Elf64_Ehdr& header) {
    const auto* ident = header.e_ident;
    if (ident[EI_CLASS] == ELFCLASS32) return fail(Kind::WrongClass, "ELF class is 32-bit; need ELF64");
    if (ident[EI_CLASS] != ELFCLASS64)
        return fail(Kind::WrongClass, fmt::format("ELF class {} is not valid; need ELF64", ident[EI_CLASS]));
    if (ident[EI_DATA] != ELFDATA2LSB) return fail(Kind::WrongEndianness, "not little-endian");
    if (ident[EI_VERSION] != EV_CURRENT || header.e_version != EV_CURRENT)
        return fail(Kind::WrongVersion, fmt::format("ELF version {}/{} is not supported; need 1",
                                                    ident[EI_VERSION], header.e_version));
    if (header.e_type == ET_DYN)
        return fail(Kind::WrongType, "ELF type is ET_DYN (position-independent); need an ET_EXEC executable");
    if (header.e_type != ET_EXEC)
        return fail(Kind::WrongType,
                    fmt::format("ELF type {} is not an executable (ET_EXEC)", header.e_type));
    if (header.e_machine != EM_X86_64)
        return fail(Kind::WrongMachine,
                    fmt::format("machine is not x86-64 (e_machine {})", header.e_machine));
    if (header.e_phnum == 0) return fail(Kind::NoLoadSegment, "no PT_LOAD segment");
    if (header.e_phentsize != sizeof(Elf64_Phdr))
        return fail(Kind::BadProgramHeaderSize, fmt::format("program header entry size is {}; need {}",
                                                            header.e_phentsize, sizeof(Elf64_Phdr)));
    if (header.e_phnum == PN_XNUM)
        return fail(Kind::TooManyProgramHeaders, "too many program headers (extended numbering)");
    const std::uint64_t table_size = std::uint64_t{header.e_phnum} * sizeof(Elf64_Phdr);
    if (!inside(header.e_phoff, table_size, file.size()))
        return fail(
            Kind::ProgramHeadersOutsideFile,
            fmt::format("program header table lies outside the file ({:#x}+{:#x}, file is {:#x} bytes)",
                        header.e_phoff, table_size, file.size()));
    return {};
}

// Checks one PT_LOAD segment on its own: its bytes in the file and its range in guest memory.
std::expected<void, ElfError> check_segment(std::size_t index, const Elf64_Phdr& ph,
                                            std::span<const std::byte> file, const GuestMemory& memory) {
    if (!inside(ph.p_offset, ph.p_filesz, file.size()))
        return fail(Kind::SegmentOutsideFile,
                    fmt::format("segment {}: file range {:#x}+{:#x} lies outside the file ({:#x} bytes)",
                                index, ph.p_offset, ph.p_filesz, file.size()));
    if (ph.p_filesz > ph.p_memsz)
        return fail(
            Kind::FileSizeLargerThanMemorySize,
            fmt::format("segment {}: filesz {:#x} larger than memsz {:#x}", index, ph.p_filesz, ph.p_memsz));
    if (ph.p_memsz != 0 && !memory.contains(GuestAddress{ph.p_paddr}, ph.p_memsz))
        return fail(Kind::SegmentOutsideRam, fmt::format("segment {}: guest range {:#x}+{:#x} is outside RAM",
                                                         index, ph.p_paddr, ph.p_memsz));
    return {};
}

std::expected<void, MemoryFault> zero_fill(const GuestMemory& memory, GuestAddress start,
                                           std::uint64_t length) {
    static constexpr std::array<std::byte, 4096> zeros{};
    std::uint64_t done = 0;
    while (done < length) {
        const std::uint64_t chunk = std::min<std::uint64_t>(length - done, zeros.size());
        if (auto written = memory.write(start + done, std::span(zeros).first(chunk)); !written)
            return written;
        done += chunk;
    }
    return {};
}

} // namespace

bool ElfSegment::executable() const {
    return (flags & PF_X) != 0;
}

std::expected<LoadedElf, ElfError> load_elf64(std::span<const std::byte> file, const GuestMemory& memory) {
    // The magic first, over as many bytes as there are, so "not an ELF file" wins over "truncated".
    static constexpr std::array<std::byte, SELFMAG> magic{std::byte{ELFMAG0}, std::byte{ELFMAG1},
                                                          std::byte{ELFMAG2}, std::byte{ELFMAG3}};
    const std::size_t magic_bytes = std::min(file.size(), magic.size());
    if (!std::ranges::equal(file.first(magic_bytes), std::span(magic).first(magic_bytes)))
        return fail(Kind::BadMagic, "not an ELF file (bad magic)");
    if (file.size() < sizeof(Elf64_Ehdr))
        return fail(Kind::TruncatedHeader,
                    fmt::format("truncated ELF header ({} bytes; need {})", file.size(), sizeof(Elf64_Ehdr)));

    const auto header = read_struct<Elf64_Ehdr>(file, 0);
    if (auto checked = check_header(file, header); !checked) return std::unexpected(checked.error());

    LoadedElf loaded{};
    loaded.entry_virtual = header.e_entry;
    for (std::size_t index = 0; index < header.e_phnum; ++index) {
        const auto ph = read_struct<Elf64_Phdr>(file, header.e_phoff + index * sizeof(Elf64_Phdr));
        if (ph.p_type != PT_LOAD) continue;
        if (auto checked = check_segment(index, ph, file, memory); !checked)
            return std::unexpected(checked.error());
        if (ph.p_memsz == 0) continue;
        loaded.segments.push_back(ElfSegment{index, GuestAddress{ph.p_paddr}, ph.p_vaddr, ph.p_offset,
                                             ph.p_filesz, ph.p_memsz, ph.p_flags});
    }
    if (loaded.segments.empty()) return fail(Kind::NoLoadSegment, "no PT_LOAD segment");

    // Neighbours in guest-address order are enough to find any overlap.
    std::ranges::sort(loaded.segments, {}, &ElfSegment::address);
    for (std::size_t i = 1; i < loaded.segments.size(); ++i) {
        const auto& before = loaded.segments[i - 1];
        const auto& after = loaded.segments[i];
        if (before.end() > after.address)
            return fail(Kind::SegmentsOverlap,
                        fmt::format("segments {} and {} overlap", std::min(before.index, after.index),
                                    std::max(before.index, after.index)));
    }

    // The entry must be a byte the file provides inside an executable segment, found by virtual address.
    const auto entry_segment = std::ranges::find_if(loaded.segments, [&](const ElfSegment& segment) {
        return segment.executable() && header.e_entry >= segment.virtual_address &&
               header.e_entry - segment.virtual_address < segment.file_size;
    });
    if (entry_segment == loaded.segments.end())
        return fail(
            Kind::EntryOutsideSegments,
            fmt::format("entry point {:#x} is not inside a loaded executable segment", header.e_entry));
    loaded.entry = entry_segment->address + (header.e_entry - entry_segment->virtual_address);
    loaded.lowest = loaded.segments.front().address;
    loaded.highest = loaded.segments.back().address + (loaded.segments.back().memory_size - 1);

    // Everything is checked: copy. The writes cannot fail now; if they did, say where.
    for (const auto& segment : loaded.segments) {
        auto copied = memory.write(segment.address, file.subspan(segment.file_offset, segment.file_size));
        if (copied)
            copied = zero_fill(memory, segment.address + segment.file_size,
                               segment.memory_size - segment.file_size);
        if (!copied)
            return fail(Kind::SegmentOutsideRam,
                        fmt::format("segment {}: {}", segment.index, copied.error().describe()));
    }
    return loaded;
}

} // namespace vmmlab
