// Feeds arbitrary kvm_run areas to the exit decoder: it must never read or write outside the area.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu/exit.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::vector<std::byte> area(size);
    if (size != 0) std::memcpy(area.data(), data, size);
    auto exit = vmmlab::decode(area);
    (void)vmmlab::describe(exit);
    return 0;
}
