#include "guest/kernel/memory_map.hpp"

namespace vmmlab::guest {
namespace {

// End of [start, start + size), saturating instead of wrapping.
uint64_t range_end(uint64_t start, uint64_t size) {
    return size > UINT64_MAX - start ? UINT64_MAX : start + size;
}

} // namespace

void FreeMemory::build(const abi::MemoryRange* ranges, uint32_t count, uint64_t image_start,
                       uint64_t image_end) {
    block_count_ = 0;
    usable_bytes_ = 0;
    if (count > abi::kMaxMemoryRanges) count = abi::kMaxMemoryRanges;
    for (uint32_t i = 0; i < count; ++i) {
        if (ranges[i].type != abi::MemoryType::Usable) continue;
        const uint64_t end = range_end(ranges[i].start, ranges[i].size);
        usable_bytes_ += end - ranges[i].start;
        const uint64_t start = ranges[i].start < kLowLimit ? kLowLimit : ranges[i].start;
        if (start < end) add(start, end);
    }
    // Anything not Usable is off limits, whatever its type number.
    for (uint32_t i = 0; i < count; ++i)
        if (ranges[i].type != abi::MemoryType::Usable)
            remove(ranges[i].start, range_end(ranges[i].start, ranges[i].size));
    remove(image_start, image_end);
}

void FreeMemory::add(uint64_t start, uint64_t end) {
    remove(start, end); // overlapping Usable ranges must not be handed out twice
    if (block_count_ < kMaxBlocks) blocks_[block_count_++] = {start, end};
}

void FreeMemory::remove(uint64_t start, uint64_t end) {
    if (start >= end) return;
    for (size_t i = 0; i < block_count_;) {
        Block& block = blocks_[i];
        if (end <= block.start || start >= block.end) {
            ++i;
            continue;
        }
        const Block below{block.start, start};
        const Block above{end, block.end};
        const bool keep_below = below.start < below.end && start > block.start;
        const bool keep_above = above.start < above.end && end < block.end;
        if (keep_below && keep_above) {
            block = below;
            if (block_count_ < kMaxBlocks)
                blocks_[block_count_++] = above; // else the upper piece is lost: safe, only wasteful
            ++i;
        } else if (keep_below) {
            block = below;
            ++i;
        } else if (keep_above) {
            block = above;
            ++i;
        } else {
            blocks_[i] = blocks_[--block_count_];
        }
    }
}

uint64_t FreeMemory::allocate(uint64_t bytes, uint64_t alignment) {
    if (bytes == 0 || alignment == 0 || (alignment & (alignment - 1)) != 0) return 0;
    for (size_t i = 0; i < block_count_; ++i) {
        Block& block = blocks_[i];
        if (block.start > UINT64_MAX - (alignment - 1)) continue;
        const uint64_t aligned = (block.start + alignment - 1) & ~(alignment - 1);
        if (aligned >= block.end || bytes > block.end - aligned) continue;
        block.start = aligned + bytes;
        return aligned;
    }
    return 0;
}

uint64_t FreeMemory::largest_block() const {
    uint64_t largest = 0;
    for (size_t i = 0; i < block_count_; ++i)
        if (blocks_[i].end - blocks_[i].start > largest) largest = blocks_[i].end - blocks_[i].start;
    return largest;
}

uint64_t FreeMemory::free_bytes() const {
    uint64_t total = 0;
    for (size_t i = 0; i < block_count_; ++i)
        total += blocks_[i].end - blocks_[i].start;
    return total;
}

} // namespace vmmlab::guest
