// Facts about the host processor that decide which knobs can be honoured.
#pragma once

#include <string>

namespace vmmlab::x86 {

struct HostCpu {
    std::string vendor;        // "AuthenticAMD", "GenuineIntel"
    std::string brand;         // the processor brand string
    bool vmx = false;          // Intel VT-x visible to this OS
    bool svm = false;          // AMD-V visible to this OS
    bool pdpe1gb = false;      // 1 GiB pages: needed for --guest-page 1g
    bool avx_usable = false;   // AVX with OSXSAVE: this OS saves YMM state, so guests may have it too
    unsigned logical_cpus = 0; // online CPUs (sysconf)
};

HostCpu read_host_cpu();

} // namespace vmmlab::x86
