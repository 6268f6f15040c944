// x86 disassembly through Capstone, and the guest instruction fetch that feeds it: read the bytes at a
// guest RIP through the guest's own page tables, as the CPU would have fetched them.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <expected>
#include <span>
#include <string>

#include "memory/guest_memory.hpp"

namespace vmmlab {

enum class CpuMode { Real16, Protected32, Long64 };

struct Instruction {
    std::string mnemonic; // "out"
    std::string operands; // "dx, al" (Intel syntax); empty for "hlt"
    std::size_t length = 0;
    std::string text() const { return operands.empty() ? mnemonic : mnemonic + " " + operands; }
};

struct DisassemblyError {
    std::string message; // "cannot decode 0f 01 at 0x1000", "virtual address 0x...: PT entry 3 ..."
};

// Owns one Capstone handle (x86, Intel syntax, no instruction details) and one instruction buffer.
// Not thread-safe: give each thread its own Disassembler.
class Disassembler {
public:
    // Throws std::runtime_error naming Capstone's error if the handle cannot be opened.
    explicit Disassembler(CpuMode mode = CpuMode::Long64);
    Disassembler(Disassembler&& other) noexcept;
    Disassembler& operator=(Disassembler&& other) noexcept;
    Disassembler(const Disassembler&) = delete;
    Disassembler& operator=(const Disassembler&) = delete;
    ~Disassembler();

    CpuMode mode() const noexcept { return mode_; }
    // Decodes the first instruction of `bytes`, as located at `rip` (relative branch targets and
    // RIP-relative operands are printed as absolute addresses). An error when the bytes are empty, cut
    // short, or not a valid instruction in this mode.
    std::expected<Instruction, DisassemblyError> disassemble(std::span<const std::byte> bytes,
                                                             std::uint64_t rip);

private:
    void close() noexcept;
    CpuMode mode_;
    std::size_t handle_ = 0;      // Capstone's csh
    void* instruction_ = nullptr; // cs_insn* from cs_malloc, reused by every call
};

inline constexpr std::size_t kMaxInstructionLength = 15;

struct InstructionBytes {
    std::array<std::byte, kMaxInstructionLength> bytes{};
    std::size_t length = 0;
    std::span<const std::byte> view() const { return std::span(bytes).first(length); }
};

// Reads up to 15 bytes of guest code at `rip`. With `paging`, rip is a virtual address translated through
// the 4-level tables at `cr3` (walk() of memory/page_tables.hpp: 4K/2M/1G leaves, no LA57, no 32-bit
// paging), page by page, so an instruction that crosses into a page mapped elsewhere is read correctly.
// Without paging, rip is the linear = physical address (in real mode pass CS.base + IP).
// Fewer than 15 bytes come back when the next page is not mapped or RAM ends (the instruction may still
// fit); an error comes back when not even the first byte can be read.
std::expected<InstructionBytes, DisassemblyError>
read_guest_instruction(const GuestMemory& memory, std::uint64_t cr3, bool paging, std::uint64_t rip);

// read_guest_instruction + disassemble.
std::expected<Instruction, DisassemblyError> disassemble_guest(Disassembler& disassembler,
                                                               const GuestMemory& memory, std::uint64_t cr3,
                                                               bool paging, std::uint64_t rip);

} // namespace vmmlab
