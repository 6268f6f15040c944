// Walks guest page tables a guest controls: the first 16 bytes are CR3 and the virtual address, the rest
// is the content of 64 KiB of guest RAM at 0. The walk must end (it has four levels), never read outside
// RAM, and either translate or return an error with a message.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "memory/page_tables.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static std::vector<std::byte> ram(0x10000);
    static const vmmlab::GuestMemory memory({{vmmlab::GuestAddress{0}, ram.size(), ram.data()}});
    if (size < 16) return 0;
    std::uint64_t cr3 = 0;
    std::uint64_t virtual_address = 0;
    std::memcpy(&cr3, data, sizeof cr3);
    std::memcpy(&virtual_address, data + 8, sizeof virtual_address);
    const std::size_t tables = std::min(size - 16, ram.size());
    std::fill(ram.begin(), ram.end(), std::byte{0});
    std::memcpy(ram.data(), data + 16, tables);

    auto walked = vmmlab::walk(memory, cr3, virtual_address);
    if (!walked && walked.error().message.empty()) __builtin_trap();
    auto translated = vmmlab::translate(memory, cr3, virtual_address);
    if (walked.has_value() != translated.has_value()) __builtin_trap();
    if (walked && walked->address != *translated) __builtin_trap();
    return 0;
}
