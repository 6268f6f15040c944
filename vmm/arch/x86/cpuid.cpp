#include "arch/x86/cpuid.hpp"

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <string_view>

#include <cpuid.h>
#include <fmt/format.h>

namespace vmmlab::x86 {

namespace {
constexpr std::uint32_t kLeafVendor = 0;
constexpr std::uint32_t kLeafFeatures = 1;
constexpr std::uint32_t kLeafCacheParameters = 4;
constexpr std::uint32_t kLeafStructuredFeatures = 7;
constexpr std::uint32_t kLeafTopology = 0xb;
constexpr std::uint32_t kLeafTopologyV2 = 0x1f;
constexpr std::uint32_t kLeafHypervisor = 0x40000000;
constexpr std::uint32_t kLeafHypervisorFeatures = 0x40000001;
constexpr std::uint32_t kLeafExtendedMax = 0x80000000;
constexpr std::uint32_t kLeafExtendedFeatures = 0x80000001;
constexpr std::uint32_t kLeafBrand = 0x80000002; // and the two after it
constexpr std::uint32_t kLeafAddressSizes = 0x80000008;
constexpr std::uint32_t kLeafAmdCacheParameters = 0x8000001d;
constexpr std::uint32_t kLeafAmdTopology = 0x8000001e;

constexpr unsigned kMaxVcpus = 255;              // leaf 1 EBX[31:24] holds the APIC ID
constexpr std::uint32_t kMaxCacheSubleaves = 32; // a bound on the host's cache enumeration

// Leaf 1.
constexpr std::uint32_t kEcxX2apic = 1U << 21;
constexpr std::uint32_t kEcxAvx = 1U << 28;
constexpr std::uint32_t kEcxHypervisor = 1U << 31;
constexpr std::uint32_t kEdxHtt = 1U << 28;
constexpr std::uint32_t kEbxClflushSize = 0x0000ff00;
// FPU PSE TSC MSR PAE CX8 APIC MTRR PGE CMOV PAT CLFSH FXSR SSE SSE2.
constexpr std::uint32_t kMinimalLeaf1Edx = (1U << 0) | (1U << 3) | (1U << 4) | (1U << 5) | (1U << 6) |
                                           (1U << 8) | (1U << 9) | (1U << 12) | (1U << 13) | (1U << 15) |
                                           (1U << 16) | (1U << 19) | (1U << 24) | (1U << 25) | (1U << 26);
// Leaf 0x80000001.
constexpr std::uint32_t kEcxCmpLegacy = 1U << 1;
constexpr std::uint32_t kEcxTopologyExtensions = 1U << 22;
constexpr std::uint32_t kEdxPdpe1gb = 1U << 26;
// SYSCALL NX Page1GB LM.
constexpr std::uint32_t kMinimalExtendedEdx = (1U << 11) | (1U << 20) | kEdxPdpe1gb | (1U << 29);

// Leaf 4 / 0x8000001D EAX.
constexpr std::uint32_t kCacheTypeMask = 0x1f;
constexpr std::uint32_t kCacheSharingShift = 14; // EAX[25:14]: logical processors sharing, minus 1
constexpr std::uint32_t kCacheSharingMask = 0xfffU << kCacheSharingShift;
constexpr std::uint32_t kCacheCoresShift = 26; // Intel EAX[31:26]: cores in the package, minus 1
constexpr std::uint32_t kCacheCoresMask = 0x3fU << kCacheCoresShift;

// Leaf 0xB / 0x1F ECX[15:8] level types.
constexpr std::uint32_t kLevelSmt = 1;
constexpr std::uint32_t kLevelCore = 2;

constexpr std::string_view kMinimalBrand = "vmmlab minimal";

kvm_cpuid_entry2 make_entry(std::uint32_t function, std::uint32_t index, const CpuidRegisters& regs,
                            bool index_significant) {
    kvm_cpuid_entry2 entry{};
    entry.function = function;
    entry.index = index;
    entry.flags = index_significant ? KVM_CPUID_FLAG_SIGNIFCANT_INDEX : 0;
    entry.eax = regs.eax;
    entry.ebx = regs.ebx;
    entry.ecx = regs.ecx;
    entry.edx = regs.edx;
    return entry;
}

CpuidRegisters registers_of(const kvm_cpuid_entry2& entry) {
    return {entry.eax, entry.ebx, entry.ecx, entry.edx};
}

bool matches(const kvm_cpuid_entry2& entry, std::uint32_t function, std::uint32_t index) {
    if (entry.function != function) return false;
    return (entry.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX) == 0 || entry.index == index;
}

kvm_cpuid_entry2* find_mutable(std::vector<kvm_cpuid_entry2>& entries, std::uint32_t function,
                               std::uint32_t index = 0) {
    auto found = std::ranges::find_if(entries, [&](const auto& e) { return matches(e, function, index); });
    return found == entries.end() ? nullptr : &*found;
}

bool has_function(const std::vector<kvm_cpuid_entry2>& entries, std::uint32_t function) {
    return std::ranges::any_of(entries, [&](const auto& e) { return e.function == function; });
}

void remove_function(std::vector<kvm_cpuid_entry2>& entries, std::uint32_t function) {
    std::erase_if(entries, [&](const auto& e) { return e.function == function; });
}

std::uint32_t ceil_log2(std::uint32_t count) {
    return count <= 1 ? 0 : static_cast<std::uint32_t>(std::bit_width(count - 1));
}

CpuVendor vendor_of(const CpuidRegisters& leaf0) {
    std::array<char, 12> name{};
    std::memcpy(name.data(), &leaf0.ebx, 4);
    std::memcpy(name.data() + 4, &leaf0.edx, 4);
    std::memcpy(name.data() + 8, &leaf0.ecx, 4);
    const std::string_view text(name.data(), name.size());
    if (text == "GenuineIntel") return CpuVendor::Intel;
    if (text == "AuthenticAMD" || text == "HygonGenuine") return CpuVendor::Amd;
    return CpuVendor::Other;
}

// Leaf 0xB or 0x1F for one vCPU: an SMT level of one thread, a core level of N cores, then the end.
void write_topology_leaf(std::vector<kvm_cpuid_entry2>& entries, std::uint32_t function,
                         const GuestCpuTopology& topology) {
    remove_function(entries, function);
    const std::uint32_t id = topology.vcpu_index;
    entries.push_back(make_entry(function, 0, {0, 1, kLevelSmt << 8 | 0, id}, true));
    entries.push_back(make_entry(
        function, 1, {ceil_log2(topology.vcpu_count), topology.vcpu_count, kLevelCore << 8 | 1, id}, true));
    entries.push_back(make_entry(function, 2, {0, 0, 2, id}, true));
}

// Leaf 1 EBX/EDX topology fields and the hypervisor bit, common to both models.
void write_leaf1_topology(kvm_cpuid_entry2& leaf1, const GuestCpuTopology& topology) {
    leaf1.ebx = (leaf1.ebx & 0x0000ffff) | topology.vcpu_count << 16 | topology.vcpu_index << 24;
    leaf1.edx = topology.vcpu_count > 1 ? leaf1.edx | kEdxHtt : leaf1.edx & ~kEdxHtt;
    leaf1.ecx |= kEcxHypervisor;
}

// Replaces the cache-parameter leaf (4 or 0x8000001D) with `descriptors`, rewriting who shares each cache:
// L1 and L2 private to a core, L3 and beyond shared by all N cores; Intel also gets the core count.
void write_cache_leaf(std::vector<kvm_cpuid_entry2>& entries, std::uint32_t function,
                      const std::vector<CpuidRegisters>& descriptors, const GuestCpuTopology& topology) {
    remove_function(entries, function);
    const std::uint32_t others = topology.vcpu_count - 1;
    std::uint32_t index = 0;
    for (CpuidRegisters regs : descriptors) {
        const std::uint32_t level = (regs.eax >> 5) & 0x7;
        const std::uint32_t sharing = level >= 3 ? others : 0;
        regs.eax = (regs.eax & ~kCacheSharingMask) | sharing << kCacheSharingShift;
        if (function == kLeafCacheParameters)
            regs.eax = (regs.eax & ~kCacheCoresMask) | std::min(others, 0x3fU) << kCacheCoresShift;
        entries.push_back(make_entry(function, index++, regs, true));
    }
    entries.push_back(make_entry(function, index, {}, true)); // the null descriptor that ends the list
}

// The cache descriptors KVM itself reports for `function` (the host's, as KVM copied them), up to the
// null one: a fallback when the host source has none.
std::vector<CpuidRegisters> descriptors_in_table(const std::vector<kvm_cpuid_entry2>& entries,
                                                 std::uint32_t function) {
    std::vector<CpuidRegisters> descriptors;
    for (std::uint32_t index = 0; index < kMaxCacheSubleaves; ++index) {
        auto entry = find_cpuid_entry(entries, function, index);
        if (!entry || (entry->eax & kCacheTypeMask) == 0) break;
        descriptors.push_back(registers_of(*entry));
    }
    return descriptors;
}

void write_amd_topology(std::vector<kvm_cpuid_entry2>& entries, const GuestCpuTopology& topology) {
    if (auto* sizes = find_mutable(entries, kLeafAddressSizes))
        sizes->ecx =
            (sizes->ecx & ~0xf0ffU) | (topology.vcpu_count - 1) | ceil_log2(topology.vcpu_count) << 12;
}

std::vector<kvm_cpuid_entry2> host_passthrough(std::vector<kvm_cpuid_entry2> entries, CpuVendor vendor,
                                               const GuestCpuTopology& topology, const HostCacheFacts& host) {
    write_leaf1_topology(*find_mutable(entries, kLeafFeatures), topology);

    auto* leaf0 = find_mutable(entries, kLeafVendor);
    if (!has_function(entries, kLeafTopology)) leaf0->eax = std::max(leaf0->eax, kLeafTopology);
    write_topology_leaf(entries, kLeafTopology, topology);
    if (has_function(entries, kLeafTopologyV2)) write_topology_leaf(entries, kLeafTopologyV2, topology);

    const bool host_matches = host.vendor == vendor && !host.cache_descriptors.empty();
    if (vendor == CpuVendor::Intel && has_function(entries, kLeafCacheParameters)) {
        write_cache_leaf(entries, kLeafCacheParameters,
                         host_matches ? host.cache_descriptors
                                      : descriptors_in_table(entries, kLeafCacheParameters),
                         topology);
    }
    if (vendor == CpuVendor::Amd) {
        if (has_function(entries, kLeafAmdCacheParameters)) {
            write_cache_leaf(entries, kLeafAmdCacheParameters,
                             host_matches ? host.cache_descriptors
                                          : descriptors_in_table(entries, kLeafAmdCacheParameters),
                             topology);
        }
        if (auto* amd_topology = find_mutable(entries, kLeafAmdTopology)) {
            amd_topology->eax = topology.vcpu_index;
            amd_topology->ebx = topology.vcpu_index & 0xff; // core ID; EBX[15:8] = threads per core - 1 = 0
            amd_topology->ecx = 0;                          // node 0 of 1
            amd_topology->edx = 0;
        }
        if (auto* extended = find_mutable(entries, kLeafExtendedFeatures))
            extended->ecx =
                topology.vcpu_count > 1 ? extended->ecx | kEcxCmpLegacy : extended->ecx & ~kEcxCmpLegacy;
        write_amd_topology(entries, topology);
    }
    return entries;
}

std::vector<kvm_cpuid_entry2> minimal(const std::vector<kvm_cpuid_entry2>& supported, CpuVendor vendor,
                                      const GuestCpuTopology& topology) {
    std::vector<kvm_cpuid_entry2> entries;
    const auto leaf0 = *find_cpuid_entry(supported, kLeafVendor);
    entries.push_back(make_entry(kLeafVendor, 0, {kLeafTopology, leaf0.ebx, leaf0.ecx, leaf0.edx}, false));

    const auto host_leaf1 = *find_cpuid_entry(supported, kLeafFeatures);
    kvm_cpuid_entry2 leaf1 = make_entry(kLeafFeatures, 0,
                                        {host_leaf1.eax, host_leaf1.ebx & kEbxClflushSize,
                                         host_leaf1.ecx & kEcxX2apic, host_leaf1.edx & kMinimalLeaf1Edx},
                                        false);
    write_leaf1_topology(leaf1, topology);
    entries.push_back(leaf1);

    entries.push_back(make_entry(kLeafCacheParameters, 0, {}, true));
    entries.push_back(make_entry(kLeafStructuredFeatures, 0, {}, true));
    write_topology_leaf(entries, kLeafTopology, topology);

    if (auto signature = find_cpuid_entry(supported, kLeafHypervisor)) {
        entries.push_back(
            make_entry(kLeafHypervisor, 0,
                       {kLeafHypervisorFeatures, signature->ebx, signature->ecx, signature->edx}, false));
        entries.push_back(make_entry(kLeafHypervisorFeatures, 0, {}, false));
    }

    const auto extended_max = find_cpuid_entry(supported, kLeafExtendedMax).value_or(kvm_cpuid_entry2{});
    entries.push_back(make_entry(kLeafExtendedMax, 0,
                                 {kLeafAddressSizes, extended_max.ebx, extended_max.ecx, extended_max.edx},
                                 false));
    const auto extended = find_cpuid_entry(supported, kLeafExtendedFeatures).value_or(kvm_cpuid_entry2{});
    entries.push_back(make_entry(kLeafExtendedFeatures, 0,
                                 {extended.eax, 0, 0, extended.edx & kMinimalExtendedEdx}, false));

    std::array<std::uint32_t, 12> brand{};
    std::memcpy(brand.data(), kMinimalBrand.data(), kMinimalBrand.size());
    for (std::uint32_t part = 0; part < 3; ++part) {
        const std::uint32_t* words = brand.data() + 4 * part;
        entries.push_back(make_entry(kLeafBrand + part, 0, {words[0], words[1], words[2], words[3]}, false));
    }

    const auto sizes = find_cpuid_entry(supported, kLeafAddressSizes).value_or(kvm_cpuid_entry2{});
    entries.push_back(make_entry(kLeafAddressSizes, 0, {sizes.eax, 0, 0, 0}, false));
    if (vendor == CpuVendor::Amd) write_amd_topology(entries, topology);
    return entries;
}

class NativeCpuid final : public CpuidSource {
public:
    CpuidRegisters query(std::uint32_t leaf, std::uint32_t subleaf) const override {
        CpuidRegisters r;
        __cpuid_count(leaf, subleaf, r.eax, r.ebx, r.ecx, r.edx);
        return r;
    }
};
} // namespace

const CpuidSource& native_cpuid() {
    static const NativeCpuid source;
    return source;
}

HostCacheFacts read_host_cache_facts(const CpuidSource& host) {
    HostCacheFacts facts;
    const CpuidRegisters leaf0 = host.query(kLeafVendor, 0);
    facts.vendor = vendor_of(leaf0);

    std::uint32_t function = 0;
    if (facts.vendor == CpuVendor::Intel && leaf0.eax >= kLeafCacheParameters) {
        function = kLeafCacheParameters;
    } else if (facts.vendor == CpuVendor::Amd &&
               host.query(kLeafExtendedMax, 0).eax >= kLeafAmdCacheParameters &&
               (host.query(kLeafExtendedFeatures, 0).ecx & kEcxTopologyExtensions) != 0) {
        function = kLeafAmdCacheParameters;
    }
    if (function == 0) return facts;
    for (std::uint32_t index = 0; index < kMaxCacheSubleaves; ++index) {
        const CpuidRegisters regs = host.query(function, index);
        if ((regs.eax & kCacheTypeMask) == 0) break;
        facts.cache_descriptors.push_back(regs);
    }
    return facts;
}

std::expected<std::vector<kvm_cpuid_entry2>, std::string>
guest_cpuid(const std::vector<kvm_cpuid_entry2>& supported, CpuModel model, const GuestCpuTopology& topology,
            const HostCacheFacts& host) {
    if (topology.vcpu_count == 0 || topology.vcpu_count > kMaxVcpus)
        return std::unexpected(
            fmt::format("cpuid: {} vCPUs (must be 1 to {})", topology.vcpu_count, kMaxVcpus));
    if (topology.vcpu_index >= topology.vcpu_count)
        return std::unexpected(
            fmt::format("cpuid: vCPU index {} outside {} vCPUs", topology.vcpu_index, topology.vcpu_count));
    if (!find_cpuid_entry(supported, kLeafVendor) || !find_cpuid_entry(supported, kLeafFeatures))
        return std::unexpected(std::string("cpuid: KVM's supported table lacks leaf 0 or 1"));

    const CpuVendor vendor = cpuid_vendor(supported);
    if (model == CpuModel::Minimal) return minimal(supported, vendor, topology);
    return host_passthrough(supported, vendor, topology, host);
}

CpuVendor cpuid_vendor(const std::vector<kvm_cpuid_entry2>& entries) {
    auto leaf0 = find_cpuid_entry(entries, kLeafVendor);
    return leaf0 ? vendor_of(registers_of(*leaf0)) : CpuVendor::Other;
}

std::optional<kvm_cpuid_entry2> find_cpuid_entry(const std::vector<kvm_cpuid_entry2>& entries,
                                                 std::uint32_t function, std::uint32_t index) {
    auto found = std::ranges::find_if(entries, [&](const auto& e) { return matches(e, function, index); });
    if (found == entries.end()) return std::nullopt;
    return *found;
}

namespace {
std::optional<bool> has_bit(const std::vector<kvm_cpuid_entry2>& entries, std::uint32_t function,
                            std::uint32_t kvm_cpuid_entry2::*reg, std::uint32_t bit) {
    auto entry = find_cpuid_entry(entries, function);
    if (!entry) return std::nullopt;
    return ((*entry).*reg & bit) != 0;
}
} // namespace

std::optional<bool> cpuid_has_pdpe1gb(const std::vector<kvm_cpuid_entry2>& entries) {
    return has_bit(entries, kLeafExtendedFeatures, &kvm_cpuid_entry2::edx, kEdxPdpe1gb);
}

std::optional<bool> cpuid_has_avx(const std::vector<kvm_cpuid_entry2>& entries) {
    return has_bit(entries, kLeafFeatures, &kvm_cpuid_entry2::ecx, kEcxAvx);
}

std::optional<bool> cpuid_has_x2apic(const std::vector<kvm_cpuid_entry2>& entries) {
    return has_bit(entries, kLeafFeatures, &kvm_cpuid_entry2::ecx, kEcxX2apic);
}

std::optional<bool> cpuid_has_hypervisor(const std::vector<kvm_cpuid_entry2>& entries) {
    return has_bit(entries, kLeafFeatures, &kvm_cpuid_entry2::ecx, kEcxHypervisor);
}

} // namespace vmmlab::x86
