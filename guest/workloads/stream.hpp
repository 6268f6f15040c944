// STREAM-style sustainable memory bandwidth: copy, scale, add and triad over three arrays of doubles.
#pragma once

#include <stddef.h>
#include <stdint.h>

namespace vmmlab::guest::stream {

enum class Kernel { Copy, Scale, Add, Triad };
inline constexpr unsigned kKernelCount = 4;
inline constexpr double kScalar = 3.0;

// Bytes one kernel moves for n elements per array (read + written, as STREAM counts them).
constexpr uint64_t bytes_moved(Kernel kernel, uint64_t n) {
    return (kernel == Kernel::Copy || kernel == Kernel::Scale ? 2 : 3) * sizeof(double) * n;
}

// Runs one kernel over [begin, end): copy c=a, scale b=s*c, add c=a+b, triad a=b+s*c.
void run_kernel(Kernel kernel, double* a, double* b, double* c, size_t begin, size_t end, bool avx2);

// The values every element of a, b and c has after `ntimes` rounds of the four kernels, starting from
// a=1, b=2, c=0.
void expected_values(unsigned ntimes, double& a, double& b, double& c);

} // namespace vmmlab::guest::stream
