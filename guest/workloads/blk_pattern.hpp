// The data pattern of the `blk` workload, shared with the host-side tests (freestanding C++ only): the
// 8-byte little-endian word `word` (0..63) of 512-byte sector `sector` holds
//   (sector * 64 + word) XOR 0x766d6d6c61620000
// so every word on a disk differs from every other and a sector read from the wrong place, or not
// written at all (zeros), does not match.
#pragma once

#include <stdint.h>

namespace vmmlab::guest::blk {

inline constexpr uint64_t kSectorBytes = 512;
inline constexpr uint64_t kWordsPerSector = kSectorBytes / 8;
inline constexpr uint64_t kPatternMagic = 0x766d6d6c61620000ULL;

constexpr uint64_t pattern_word(uint64_t sector, uint64_t word) {
    return (sector * kWordsPerSector + word) ^ kPatternMagic;
}

// Fills `sectors` sectors starting at disk sector `first` into `words`.
inline void fill_pattern(uint64_t* words, uint64_t first, uint64_t sectors) {
    for (uint64_t s = 0; s < sectors; ++s)
        for (uint64_t w = 0; w < kWordsPerSector; ++w)
            words[s * kWordsPerSector + w] = pattern_word(first + s, w);
}

} // namespace vmmlab::guest::blk
