#include "arch/x86/host_cpu.hpp"

#include <algorithm>
#include <array>
#include <cstring>

#include <cpuid.h>
#include <unistd.h>

namespace vmmlab::x86 {

namespace {
struct Registers {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
};

Registers cpuid(unsigned leaf) {
    Registers r;
    __cpuid_count(leaf, 0, r.eax, r.ebx, r.ecx, r.edx);
    return r;
}

std::string trim(std::string text) {
    text.erase(std::find(text.begin(), text.end(), '\0'), text.end());
    auto first = text.find_first_not_of(' ');
    auto last = text.find_last_not_of(' ');
    return first == std::string::npos ? std::string{} : text.substr(first, last - first + 1);
}
} // namespace

HostCpu read_host_cpu() {
    HostCpu cpu;
    Registers leaf0 = cpuid(0);
    std::array<char, 13> vendor{};
    std::memcpy(vendor.data(), &leaf0.ebx, 4);
    std::memcpy(vendor.data() + 4, &leaf0.edx, 4);
    std::memcpy(vendor.data() + 8, &leaf0.ecx, 4);
    cpu.vendor = vendor.data();

    constexpr unsigned kVmxBit = 1U << 5;                        // CPUID.1:ECX.VMX
    constexpr unsigned kSvmBit = 1U << 2;                        // CPUID.80000001h:ECX.SVM
    constexpr unsigned kPdpe1gbBit = 1U << 26;                   // CPUID.80000001h:EDX.Page1GB
    constexpr unsigned kOsxsaveAndAvx = (1U << 27) | (1U << 28); // CPUID.1:ECX.OSXSAVE, AVX
    const Registers leaf1 = cpuid(1);
    cpu.vmx = (leaf1.ecx & kVmxBit) != 0;
    cpu.avx_usable = (leaf1.ecx & kOsxsaveAndAvx) == kOsxsaveAndAvx;
    const unsigned max_extended = cpuid(0x80000000).eax;
    if (max_extended >= 0x80000001) {
        Registers extended = cpuid(0x80000001);
        cpu.svm = (extended.ecx & kSvmBit) != 0;
        cpu.pdpe1gb = (extended.edx & kPdpe1gbBit) != 0;
    }
    if (max_extended >= 0x80000004) {
        std::array<char, 49> brand{};
        for (unsigned i = 0; i < 3; ++i) {
            Registers part = cpuid(0x80000002 + i);
            std::memcpy(brand.data() + 16 * i, &part, 16);
        }
        cpu.brand = trim(brand.data());
    }
    long online = ::sysconf(_SC_NPROCESSORS_ONLN);
    cpu.logical_cpus = online > 0 ? static_cast<unsigned>(online) : 0;
    return cpu;
}

} // namespace vmmlab::x86
