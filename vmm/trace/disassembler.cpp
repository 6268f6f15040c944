#include "trace/disassembler.hpp"

#include <algorithm>
#include <stdexcept>
#include <utility>

#include <capstone/capstone.h>
#include <fmt/format.h>

#include "memory/page_tables.hpp"

namespace vmmlab {

namespace {

static_assert(std::is_same_v<csh, std::size_t>, "Disassembler stores Capstone's handle as std::size_t");

cs_mode capstone_mode(CpuMode mode) {
    switch (mode) {
    case CpuMode::Real16:
        return CS_MODE_16;
    case CpuMode::Protected32:
        return CS_MODE_32;
    case CpuMode::Long64:
        return CS_MODE_64;
    }
    return CS_MODE_64;
}

std::string hex_bytes(std::span<const std::byte> bytes) {
    std::string text;
    for (const std::byte byte : bytes) {
        if (!text.empty()) text += ' ';
        text += fmt::format("{:02x}", std::to_integer<unsigned>(byte));
    }
    return text;
}

// How many bytes of [gpa, gpa + wanted) are guest RAM from the start on; they are copied to `out`.
std::size_t read_prefix(const GuestMemory& memory, GuestAddress gpa, std::size_t wanted, std::byte* out) {
    for (std::size_t length = wanted; length > 0; --length)
        if (memory.read(gpa, std::span(out, length))) return length;
    return 0;
}

} // namespace

Disassembler::Disassembler(CpuMode mode) : mode_(mode) {
    csh handle = 0;
    if (const cs_err error = cs_open(CS_ARCH_X86, capstone_mode(mode), &handle); error != CS_ERR_OK)
        throw std::runtime_error(fmt::format("capstone: cs_open: {}", cs_strerror(error)));
    handle_ = handle;
    cs_option(handle, CS_OPT_SYNTAX, CS_OPT_SYNTAX_INTEL);
    instruction_ = cs_malloc(handle);
    if (instruction_ == nullptr) {
        close();
        throw std::runtime_error("capstone: cs_malloc: out of memory");
    }
}

Disassembler::Disassembler(Disassembler&& other) noexcept
    : mode_(other.mode_), handle_(std::exchange(other.handle_, 0)),
      instruction_(std::exchange(other.instruction_, nullptr)) {
}

Disassembler& Disassembler::operator=(Disassembler&& other) noexcept {
    if (this != &other) {
        close();
        mode_ = other.mode_;
        handle_ = std::exchange(other.handle_, 0);
        instruction_ = std::exchange(other.instruction_, nullptr);
    }
    return *this;
}

Disassembler::~Disassembler() {
    close();
}

void Disassembler::close() noexcept {
    if (instruction_ != nullptr) cs_free(static_cast<cs_insn*>(instruction_), 1);
    instruction_ = nullptr;
    if (handle_ != 0) {
        csh handle = handle_;
        cs_close(&handle);
    }
    handle_ = 0;
}

std::expected<Instruction, DisassemblyError> Disassembler::disassemble(std::span<const std::byte> bytes,
                                                                       std::uint64_t rip) {
    if (bytes.empty()) return std::unexpected(DisassemblyError{fmt::format("no bytes at {:#x}", rip)});
    if (handle_ == 0) return std::unexpected(DisassemblyError{"disassembler was moved from"});
    const auto* code = reinterpret_cast<const std::uint8_t*>(bytes.data());
    std::size_t size = std::min(bytes.size(), kMaxInstructionLength);
    std::uint64_t address = rip;
    auto* instruction = static_cast<cs_insn*>(instruction_);
    if (!cs_disasm_iter(handle_, &code, &size, &address, instruction))
        return std::unexpected(
            DisassemblyError{fmt::format("cannot decode {} at {:#x}", hex_bytes(bytes.first(size)), rip)});
    return Instruction{instruction->mnemonic, instruction->op_str, instruction->size};
}

std::expected<InstructionBytes, DisassemblyError>
read_guest_instruction(const GuestMemory& memory, std::uint64_t cr3, bool paging, std::uint64_t rip) {
    InstructionBytes fetched;
    std::uint64_t linear = rip;
    while (fetched.length < kMaxInstructionLength) {
        std::size_t chunk = kMaxInstructionLength - fetched.length;
        GuestAddress physical{linear};
        if (paging) {
            auto translation = walk(memory, cr3, linear);
            if (!translation) {
                if (fetched.length == 0)
                    return std::unexpected(DisassemblyError{
                        fmt::format("instruction fetch at rip {:#x}: {}", rip, translation.error().message)});
                break; // the instruction may end before the unmapped page
            }
            const std::uint64_t page = page_size_bytes(translation->page_size);
            const std::uint64_t to_page_end = page - (linear & (page - 1));
            chunk = static_cast<std::size_t>(std::min<std::uint64_t>(chunk, to_page_end));
            physical = translation->address;
        }
        const std::size_t read = read_prefix(memory, physical, chunk, fetched.bytes.data() + fetched.length);
        if (read == 0 && fetched.length == 0)
            return std::unexpected(DisassemblyError{fmt::format(
                "instruction fetch at rip {:#x}: guest-physical {:#x} is outside RAM", rip, physical.value)});
        fetched.length += read;
        if (read < chunk || linear + chunk < linear) break; // RAM ends, or the address space wraps
        linear += chunk;
    }
    return fetched;
}

std::expected<Instruction, DisassemblyError> disassemble_guest(Disassembler& disassembler,
                                                               const GuestMemory& memory, std::uint64_t cr3,
                                                               bool paging, std::uint64_t rip) {
    auto bytes = read_guest_instruction(memory, cr3, paging, rip);
    if (!bytes) return std::unexpected(std::move(bytes.error()));
    return disassembler.disassemble(bytes->view(), rip);
}

} // namespace vmmlab
