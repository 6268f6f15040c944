// Feeds arbitrary files to the ELF loader: it must never read outside the file, never write outside guest
// RAM, and either load or return an error with a message. RAM is three regions, two of them adjacent and
// one beyond a hole, so ranges that cross regions and ranges that fall into the hole both get exercised.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "boot/elf_loader.hpp"

namespace {
constexpr std::uint64_t kRegionSize = 0x100000;
std::vector<std::byte>& ram() {
    static std::vector<std::byte> bytes(3 * kRegionSize);
    return bytes;
}
const vmmlab::GuestMemory& memory() {
    static const vmmlab::GuestMemory guest({
        {vmmlab::GuestAddress{0x100000}, kRegionSize, ram().data()},
        {vmmlab::GuestAddress{0x200000}, kRegionSize, ram().data() + kRegionSize},
        {vmmlab::GuestAddress{0x400000}, kRegionSize, ram().data() + 2 * kRegionSize},
    });
    return guest;
}
} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    // A copy of exactly `size` bytes, so ASan catches a read one past the end of the file.
    std::vector<std::byte> file(size);
    if (size != 0) std::memcpy(file.data(), data, size);
    auto loaded = vmmlab::load_elf64(file, memory());
    if (loaded) {
        if (loaded->segments.empty() || loaded->highest < loaded->lowest) __builtin_trap();
        if (loaded->entry < loaded->lowest || loaded->highest < loaded->entry) __builtin_trap();
    } else if (loaded.error().message.empty()) {
        __builtin_trap();
    }
    return 0;
}
