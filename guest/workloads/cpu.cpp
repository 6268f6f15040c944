#include "guest/workloads/cpu.hpp"

namespace vmmlab::guest {

bool cpu_has_avx2() {
    const CpuidResult basic = cpuid(0);
    if (basic.eax < 7) return false;
    const CpuidResult features = cpuid(1);
    constexpr uint32_t kOsxsave = 1U << 27;
    constexpr uint32_t kAvx = 1U << 28;
    if ((features.ecx & (kOsxsave | kAvx)) != (kOsxsave | kAvx)) return false;
    uint32_t xcr0_low;
    uint32_t xcr0_high;
    asm volatile("xgetbv" : "=a"(xcr0_low), "=d"(xcr0_high) : "c"(0));
    constexpr uint32_t kSseAndAvxState = 0x6;
    if ((xcr0_low & kSseAndAvxState) != kSseAndAvxState) return false;
    constexpr uint32_t kAvx2 = 1U << 5;
    return (cpuid(7, 0).ebx & kAvx2) != 0;
}

void cpu_vendor(char (&vendor)[13]) {
    const CpuidResult r = cpuid(0);
    const uint32_t words[3] = {r.ebx, r.edx, r.ecx};
    for (unsigned word = 0; word < 3; ++word)
        for (unsigned byte = 0; byte < 4; ++byte)
            vendor[word * 4 + byte] = static_cast<char>((words[word] >> (8 * byte)) & 0xff);
    vendor[12] = '\0';
}

} // namespace vmmlab::guest
