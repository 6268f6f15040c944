// RandomAccess (GUPS): XOR pseudo-random values into random entries of a power-of-two table. The
// random stream is the shift/XOR generator over GF(2) with polynomial x^63 + ... (feedback 0x7) that the
// HPC Challenge benchmark defines; the code here is our own.
#pragma once

#include <stddef.h>
#include <stdint.h>

namespace vmmlab::guest::gups {

inline constexpr uint64_t kFeedback = 0x7;

constexpr uint64_t next_random(uint64_t value) {
    return (value << 1) ^ (static_cast<int64_t>(value) < 0 ? kFeedback : 0);
}

// table[i] = i.
void init_table(uint64_t* table, uint64_t entries);

// `updates` updates table[r & (entries-1)] ^= r, in interleaved independent streams seeded from `seed`.
// entries must be a power of two. Running it twice with the same arguments restores the table.
void update_table(uint64_t* table, uint64_t entries, uint64_t updates, uint64_t seed);

// Entries with table[i] != i.
uint64_t count_errors(const uint64_t* table, uint64_t entries);

} // namespace vmmlab::guest::gups
