// Memory latency by pointer chasing: every load depends on the one before, over a random cyclic
// permutation of cache lines, so neither prefetchers nor out-of-order execution hide the latency.
#pragma once

#include <stddef.h>
#include <stdint.h>

namespace vmmlab::guest::latency {

inline constexpr size_t kLineBytes = 64;

// Writes a random cyclic permutation into words[i * stride], i < n: following i -> words[i * stride]
// from any element visits all n elements once before it returns (Sattolo's shuffle). n >= 1.
void build_cycle(uint64_t* words, size_t n, size_t stride, uint64_t seed);

} // namespace vmmlab::guest::latency
