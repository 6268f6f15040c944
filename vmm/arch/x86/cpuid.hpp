// CPUID as the guest sees it: KVM's supported table (KVM_GET_SUPPORTED_CPUID), shaped per vCPU for one
// of two CPU models, ready for KVM_SET_CPUID2.
//
// Guest topology, both models: one package of N cores (N = vCPU count), one thread per core; vCPU i has
// APIC ID and x2APIC ID i. The vCPU index must be the id given to KVM_CREATE_VCPU, from which KVM
// derives the local APIC's ID. The host's own topology (its leaf 0xB/0x1F) is not copied: it describes
// the host's package, not the guest's.
//
// CpuModel::HostPassthrough starts from KVM's table as it is and changes only:
//   leaf 1             EBX[31:24] initial APIC ID = i, EBX[23:16] logical processors = N,
//                      EDX[28] HTT = (N > 1), ECX[31] hypervisor = 1
//   leaf 0xB (0x1F)    x2APIC topology: subleaf 0 SMT level (shift 0, 1 thread), subleaf 1 core level
//                      (shift ceil(log2 N), N processors), subleaf 2 invalid; EDX = i in every subleaf.
//                      0xB is added (and leaf 0's maximum raised to 0xB) when KVM lacks it; 0x1F is
//                      written only when KVM reports it.
//   leaf 4 (Intel)     the host's cache descriptors (read from the host's CPUID) with EAX[25:14] (logical
//                      processors sharing the cache, minus 1) = 0 for L1/L2 and N-1 for L3 and beyond,
//                      and EAX[31:26] (cores in the package, minus 1) = N-1; the rest (type, level,
//                      line size, partitions, ways, sets, EDX) as the host has it
//   0x8000001D (AMD)   likewise: EAX[25:14] = 0 for L1/L2, N-1 for L3 and beyond; written only when
//                      KVM's table has 0x8000001D entries (TOPOEXT hosts)
//   0x8000001E (AMD)   when present: EAX = x2APIC ID i, EBX = core ID i (1 thread per core), ECX = node 0
//   0x80000008 (AMD)   ECX[7:0] NC = N-1, ECX[15:12] ApicIdSize = ceil(log2 N)
//   0x80000001 (AMD)   ECX[1] CmpLegacy = (N > 1)
//   everything else, 0x40000000 (the "KVMKVMKVM\0\0\0" signature) and 0x40000001 (KVM's paravirtual
//   features) included, as KVM reports it.
//
// CpuModel::Minimal keeps only what a 64-bit guest needs, each feature bit only where KVM supports it:
//   leaf 0             max basic leaf 0xB, the host's vendor (KVM emulates vendor-specific behaviour)
//   leaf 1             EAX (family/model/stepping) and EBX[15:8] (CLFLUSH line) from KVM; EBX topology as
//                      above; EDX: FPU PSE TSC MSR PAE CX8 APIC MTRR PGE CMOV PAT CLFSH FXSR SSE SSE2,
//                      HTT when N > 1; ECX: x2APIC (when supported), hypervisor. No AVX, XSAVE, SSE3+.
//   leaf 4             one null subleaf (no cache descriptors)
//   leaf 7             subleaf 0 all zero (no AVX2, AVX-512, SMEP, ...)
//   leaf 0xB           x2APIC topology as above
//   0x40000000         KVM's signature, maximum hypervisor leaf 0x40000001
//   0x40000001         all zero: no paravirtual features (no kvmclock, no PV EOI, ...)
//   0x80000000         max extended leaf 0x80000008; EBX/ECX/EDX as KVM reports them (AMD: the vendor)
//   0x80000001         EAX from KVM; EDX: SYSCALL, NX, LM, Page1GB (pdpe1gb, when KVM has it)
//   0x80000002-4       brand "vmmlab minimal"
//   0x80000008         EAX (physical/linear address bits) from KVM, so the guest sizes memory right;
//                      ECX NC/ApicIdSize as above on AMD; nothing else
//   no other leaves (KVM answers leaves within range but absent from the table with zeros).
#pragma once

#include <cstdint>
#include <expected>
#include <optional>
#include <string>
#include <vector>

#include "kvm/kvm_uapi.hpp"

namespace vmmlab::x86 {

enum class CpuModel { HostPassthrough, Minimal };
enum class CpuVendor { Intel, Amd, Other }; // Hygon counts as AMD: same topology and cache leaves

struct CpuidRegisters {
    std::uint32_t eax = 0, ebx = 0, ecx = 0, edx = 0;
};

// Answers CPUID(leaf, subleaf): the host processor itself, or a table in tests.
class CpuidSource {
public:
    virtual ~CpuidSource() = default;
    virtual CpuidRegisters query(std::uint32_t leaf, std::uint32_t subleaf) const = 0;
};

// Executes the CPUID instruction on whichever host CPU the calling thread runs on.
const CpuidSource& native_cpuid();

// What the host's own CPUID says about its caches, read once and shared by every vCPU.
struct HostCacheFacts {
    CpuVendor vendor = CpuVendor::Other;
    // The deterministic cache parameters, one entry per subleaf up to (not including) the null one:
    // leaf 4 on Intel, 0x8000001D on AMD (empty when the host lacks the leaf).
    std::vector<CpuidRegisters> cache_descriptors;
};
HostCacheFacts read_host_cache_facts(const CpuidSource& host);

struct GuestCpuTopology {
    unsigned vcpu_count = 1; // N: 1 to 255
    unsigned vcpu_index = 0; // i: below vcpu_count; also the vCPU's KVM id and APIC ID
};

// The entries for one vCPU's KVM_SET_CPUID2. Fails (with a one-line reason) only on a topology it
// cannot express: no vCPUs, more than 255, or an index outside the count.
std::expected<std::vector<kvm_cpuid_entry2>, std::string>
guest_cpuid(const std::vector<kvm_cpuid_entry2>& supported, CpuModel model, const GuestCpuTopology& topology,
            const HostCacheFacts& host);

// The vendor named by leaf 0 of a table.
CpuVendor cpuid_vendor(const std::vector<kvm_cpuid_entry2>& entries);

// The entry for (function, index); the index is compared only where the entry says it is significant.
std::optional<kvm_cpuid_entry2> find_cpuid_entry(const std::vector<kvm_cpuid_entry2>& entries,
                                                 std::uint32_t function, std::uint32_t index = 0);

// Feature questions for the monitor, on KVM's table or a shaped one; nothing when the leaf is absent.
std::optional<bool> cpuid_has_pdpe1gb(const std::vector<kvm_cpuid_entry2>& entries);    // 80000001h EDX[26]
std::optional<bool> cpuid_has_avx(const std::vector<kvm_cpuid_entry2>& entries);        // 1 ECX[28]
std::optional<bool> cpuid_has_x2apic(const std::vector<kvm_cpuid_entry2>& entries);     // 1 ECX[21]
std::optional<bool> cpuid_has_hypervisor(const std::vector<kvm_cpuid_entry2>& entries); // 1 ECX[31]

} // namespace vmmlab::x86
