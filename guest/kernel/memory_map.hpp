// The guest's workload memory: the BootInfo ranges of type Usable, minus every Reserved range, minus the
// guest image and everything below 1 MiB, handed out front to back by a bump allocator. Pure code (no
// hardware access), so the host unit tests run it too.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "guest/abi/boot_abi.hpp"

namespace vmmlab::guest {

class FreeMemory {
public:
    static constexpr size_t kMaxBlocks = 64;
    // Below 1 MiB live the GDT, the BootInfo block and whatever else the monitor keeps low: never handed out.
    static constexpr uint64_t kLowLimit = 1ULL << 20;

    struct Block {
        uint64_t start;
        uint64_t end; // exclusive
    };

    // `count` is clamped to kMaxMemoryRanges. The image is [image_start, image_end).
    void build(const abi::MemoryRange* ranges, uint32_t count, uint64_t image_start, uint64_t image_end);

    // Guest-physical (= virtual) address of `bytes` bytes aligned to `alignment` (a power of two), or 0.
    uint64_t allocate(uint64_t bytes, uint64_t alignment);

    uint64_t largest_block() const;
    uint64_t free_bytes() const;
    uint64_t usable_bytes() const { return usable_bytes_; } // sum of the Usable ranges as listed
    size_t block_count() const { return block_count_; }
    const Block& block(size_t index) const { return blocks_[index]; }

private:
    void add(uint64_t start, uint64_t end);
    void remove(uint64_t start, uint64_t end);

    Block blocks_[kMaxBlocks]{};
    size_t block_count_ = 0;
    uint64_t usable_bytes_ = 0;
};

} // namespace vmmlab::guest
