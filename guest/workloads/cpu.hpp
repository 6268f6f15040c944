// x86-64 instructions the workloads use on both sides (guest and native): the serialised time-stamp
// counter, CPUID, the spin-loop hint, and the AVX2 check behind the vectorised STREAM kernels.
#pragma once

#include <stdint.h>

namespace vmmlab::guest {

struct CpuidResult {
    uint32_t eax;
    uint32_t ebx;
    uint32_t ecx;
    uint32_t edx;
};

inline CpuidResult cpuid(uint32_t leaf, uint32_t subleaf = 0) {
    CpuidResult r;
    asm volatile("cpuid" : "=a"(r.eax), "=b"(r.ebx), "=c"(r.ecx), "=d"(r.edx) : "a"(leaf), "c"(subleaf));
    return r;
}

// The TSC, fenced on both sides so that neither earlier nor later instructions move across the read.
// RDTSCP is not used: a guest CPU model may hide it, and then it faults.
inline uint64_t read_ticks() {
    uint32_t low;
    uint32_t high;
    asm volatile("lfence\n\trdtsc\n\tlfence" : "=a"(low), "=d"(high)::"memory");
    return (static_cast<uint64_t>(high) << 32) | low;
}

inline void cpu_relax() {
    __builtin_ia32_pause();
}

// AVX2 usable: the CPU has it and the OS (the monitor, for the guest) enabled the YMM state in XCR0.
bool cpu_has_avx2();

// "GenuineIntel", "AuthenticAMD", ...: 12 characters and a NUL.
void cpu_vendor(char (&vendor)[13]);

} // namespace vmmlab::guest
