#include <algorithm>
#include <catch2/catch.hpp>
#include <cstring>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "arch/x86/cpuid.hpp"

using namespace vmmlab::x86;

namespace {
kvm_cpuid_entry2 entry(std::uint32_t function, std::uint32_t index, std::uint32_t eax, std::uint32_t ebx,
                       std::uint32_t ecx, std::uint32_t edx, bool significant = false) {
    kvm_cpuid_entry2 e{};
    e.function = function;
    e.index = index;
    e.flags = significant ? KVM_CPUID_FLAG_SIGNIFCANT_INDEX : 0;
    e.eax = eax;
    e.ebx = ebx;
    e.ecx = ecx;
    e.edx = edx;
    return e;
}

// "GenuineIntel" and "AuthenticAMD" as leaf 0 spells them in EBX, EDX, ECX.
constexpr std::uint32_t kIntelEbx = 0x756e6547, kIntelEdx = 0x49656e69, kIntelEcx = 0x6c65746e;
constexpr std::uint32_t kAmdEbx = 0x68747541, kAmdEdx = 0x69746e65, kAmdEcx = 0x444d4163;
// "KVMKVMKVM\0\0\0".
constexpr std::uint32_t kKvmEbx = 0x4b4d564b, kKvmEcx = 0x564b4d56, kKvmEdx = 0x0000004d;

constexpr std::uint32_t kAvx = 1U << 28, kX2apic = 1U << 21, kHypervisor = 1U << 31, kHtt = 1U << 28;

// A host's cache descriptors as leaf 4 (Intel) reports them on a 16-thread, 8-core package.
const std::vector<CpuidRegisters> kIntelCaches{
    {0x1c004121, 0x02c0003f, 0x0000003f, 0x00000000}, // L1d 48K, shared by 2 threads
    {0x1c004122, 0x01c0003f, 0x0000003f, 0x00000000}, // L1i 32K
    {0x1c004143, 0x03c0003f, 0x000003ff, 0x00000000}, // L2 1M: 16 ways, 1024 sets
    {0x1c03c163, 0x02c0003f, 0x00003fff, 0x00000006}, // L3, shared by 16 threads, inclusive
};
// And as 0x8000001D (AMD) reports them on a 16-thread, 8-core package.
const std::vector<CpuidRegisters> kAmdCaches{
    {0x00004121, 0x01c0003f, 0x0000003f, 0x00000000}, // L1d shared by 2 threads (SMT)
    {0x00004122, 0x01c0003f, 0x0000003f, 0x00000000}, // L1i
    {0x00004143, 0x01c0003f, 0x000003ff, 0x00000002}, // L2
    {0x0003c163, 0x03c0003f, 0x00007fff, 0x00000001}, // L3 shared by 16
};

// KVM_GET_SUPPORTED_CPUID as an Intel host with AVX, x2APIC and 1 GiB pages might answer it.
std::vector<kvm_cpuid_entry2> intel_table(bool with_leaf_1f = false, bool with_pdpe1gb = true) {
    std::vector<kvm_cpuid_entry2> t{
        entry(0, 0, with_leaf_1f ? 0x1f : 0x16, kIntelEbx, kIntelEcx, kIntelEdx),
        entry(1, 0, 0x000906ea, 0x0a100800, 0x77fa3223 | kAvx | kX2apic, 0x178bfbff),
        entry(7, 0, 0, 0x029c6fbf, 0x40000000, 0xbc000400, true), // AVX2 and friends
        entry(0xd, 0, 0x7, 0x340, 0x340, 0, true),
    };
    for (std::uint32_t i = 0; i < kIntelCaches.size(); ++i) {
        const auto& c = kIntelCaches[i];
        t.push_back(entry(4, i, c.eax, c.ebx, c.ecx, c.edx, true));
    }
    t.push_back(entry(4, 4, 0, 0, 0, 0, true));
    t.push_back(entry(0xb, 0, 1, 2, 0x100, 7, true)); // host: 2 threads per core, x2APIC ID 7
    t.push_back(entry(0xb, 1, 4, 16, 0x201, 7, true));
    if (with_leaf_1f) {
        t.push_back(entry(0x1f, 0, 1, 2, 0x100, 7, true));
        t.push_back(entry(0x1f, 1, 4, 16, 0x201, 7, true));
    }
    t.push_back(entry(0x40000000, 0, 0x40000001, kKvmEbx, kKvmEcx, kKvmEdx));
    t.push_back(entry(0x40000001, 0, 0x01007afb, 0, 0, 0));
    t.push_back(entry(0x80000000, 0, 0x80000008, 0, 0, 0));
    t.push_back(entry(0x80000001, 0, 0, 0, 0x121, 0x28100800 | (with_pdpe1gb ? 1U << 26 : 0)));
    t.push_back(entry(0x80000002, 0, 0x65746e49, 0x2952286c, 0x726f4320, 0x4d542865));
    t.push_back(entry(0x80000003, 0, 0x37692029, 0x3037382d, 0x43204b30, 0x40205550));
    t.push_back(entry(0x80000004, 0, 0x362e3320, 0x7a484730, 0, 0));
    t.push_back(entry(0x80000008, 0, 0x3027, 0, 0, 0));
    return t;
}

// The same for an AMD host with topology extensions.
std::vector<kvm_cpuid_entry2> amd_table() {
    std::vector<kvm_cpuid_entry2> t{
        entry(0, 0, 0x10, kAmdEbx, kAmdEcx, kAmdEdx),
        entry(1, 0, 0x00a20f10, 0x00100800, 0x76f83203 | kAvx | kX2apic, 0x178bfbff),
        entry(7, 0, 0, 0x219c97a9, 0, 0, true),
        entry(0xb, 0, 1, 2, 0x100, 0, true),
        entry(0xb, 1, 4, 16, 0x201, 0, true),
        entry(0x40000000, 0, 0x40000001, kKvmEbx, kKvmEcx, kKvmEdx),
        entry(0x40000001, 0, 0x01007afb, 0, 0, 0),
        entry(0x80000000, 0, 0x80000021, kAmdEbx, kAmdEcx, kAmdEdx),
        entry(0x80000001, 0, 0x00a20f10, 0, 0x75c237ff, 0x2fd3fbff),
        entry(0x80000008, 0, 0x3030, 0x0001ef57, 0x0000700f, 0),
        entry(0x8000001e, 0, 0, 0, 0, 0),
    };
    for (std::uint32_t i = 0; i < kAmdCaches.size(); ++i) {
        const auto& c = kAmdCaches[i];
        t.push_back(entry(0x8000001d, i, c.eax, c.ebx, c.ecx, c.edx, true));
    }
    t.push_back(entry(0x8000001d, 4, 0, 0, 0, 0, true));
    return t;
}

// A host CPUID answering from a fixed table: zeros for anything not in it.
class FakeHostCpuid final : public CpuidSource {
public:
    void set(std::uint32_t leaf, std::uint32_t subleaf, CpuidRegisters regs) {
        table_[{leaf, subleaf}] = regs;
    }
    CpuidRegisters query(std::uint32_t leaf, std::uint32_t subleaf) const override {
        auto found = table_.find({leaf, subleaf});
        return found == table_.end() ? CpuidRegisters{} : found->second;
    }

private:
    std::map<std::pair<std::uint32_t, std::uint32_t>, CpuidRegisters> table_;
};

FakeHostCpuid intel_host() {
    FakeHostCpuid host;
    host.set(0, 0, {0x16, kIntelEbx, kIntelEcx, kIntelEdx});
    for (std::uint32_t i = 0; i < kIntelCaches.size(); ++i)
        host.set(4, i, kIntelCaches[i]);
    return host;
}

FakeHostCpuid amd_host() {
    FakeHostCpuid host;
    host.set(0, 0, {0x10, kAmdEbx, kAmdEcx, kAmdEdx});
    host.set(0x80000000, 0, {0x80000021, kAmdEbx, kAmdEcx, kAmdEdx});
    host.set(0x80000001, 0, {0, 0, 1U << 22, 0}); // TOPOEXT
    for (std::uint32_t i = 0; i < kAmdCaches.size(); ++i)
        host.set(0x8000001d, i, kAmdCaches[i]);
    return host;
}

std::vector<kvm_cpuid_entry2> shape(const std::vector<kvm_cpuid_entry2>& supported, CpuModel model,
                                    unsigned count, unsigned index, const HostCacheFacts& host) {
    auto shaped = guest_cpuid(supported, model, {count, index}, host);
    REQUIRE(shaped.has_value());
    return *shaped;
}

kvm_cpuid_entry2 get(const std::vector<kvm_cpuid_entry2>& entries, std::uint32_t function,
                     std::uint32_t index = 0) {
    auto found = find_cpuid_entry(entries, function, index);
    REQUIRE(found.has_value());
    return *found;
}

std::size_t count_function(const std::vector<kvm_cpuid_entry2>& entries, std::uint32_t function) {
    return static_cast<std::size_t>(
        std::ranges::count_if(entries, [&](const auto& e) { return e.function == function; }));
}

std::uint32_t sharing(std::uint32_t eax) {
    return (eax >> 14) & 0xfff;
}
std::uint32_t cores(std::uint32_t eax) {
    return eax >> 26;
}

std::string brand(const std::vector<kvm_cpuid_entry2>& entries) {
    char text[49]{};
    for (std::uint32_t i = 0; i < 3; ++i) {
        const auto e = get(entries, 0x80000002 + i);
        const std::uint32_t words[4]{e.eax, e.ebx, e.ecx, e.edx};
        std::memcpy(text + 16 * i, words, 16);
    }
    return text;
}
} // namespace

TEST_CASE("cpuid: host cache facts come from leaf 4 on Intel and 0x8000001D on AMD", "[cpuid]") {
    const auto intel = read_host_cache_facts(intel_host());
    CHECK(intel.vendor == CpuVendor::Intel);
    REQUIRE(intel.cache_descriptors.size() == 4);
    CHECK(intel.cache_descriptors[3].eax == kIntelCaches[3].eax);

    const auto amd = read_host_cache_facts(amd_host());
    CHECK(amd.vendor == CpuVendor::Amd);
    REQUIRE(amd.cache_descriptors.size() == 4);
    CHECK(amd.cache_descriptors[2].ecx == kAmdCaches[2].ecx);

    auto no_topoext = amd_host();
    no_topoext.set(0x80000001, 0, {});
    CHECK(read_host_cache_facts(no_topoext).cache_descriptors.empty());
    CHECK(read_host_cache_facts(FakeHostCpuid{}).vendor == CpuVendor::Other);
}

TEST_CASE("cpuid: the native source answers leaf 0", "[cpuid]") {
    const auto facts = read_host_cache_facts(native_cpuid());
    CHECK(native_cpuid().query(0, 0).eax >= 1);
    CHECK(facts.cache_descriptors.size() <= 32);
}

TEST_CASE("cpuid: leaf 1 carries each vCPU's APIC ID, the count, HTT and the hypervisor bit", "[cpuid]") {
    const auto host = read_host_cache_facts(intel_host());
    const auto model = GENERATE(CpuModel::HostPassthrough, CpuModel::Minimal);
    for (unsigned count : {1u, 2u, 4u, 255u}) {
        for (unsigned index : {0u, count / 2, count - 1}) {
            const auto leaf1 = get(shape(intel_table(), model, count, index, host), 1);
            CHECK(leaf1.ebx >> 24 == index);
            CHECK(((leaf1.ebx >> 16) & 0xff) == count);
            CHECK(((leaf1.ebx >> 8) & 0xff) == 8); // CLFLUSH line size kept
            CHECK(((leaf1.edx & kHtt) != 0) == (count > 1));
            CHECK((leaf1.ecx & kHypervisor) != 0);
        }
    }
}

TEST_CASE("cpuid: leaf 0xB describes N cores of one thread", "[cpuid]") {
    const auto host = read_host_cache_facts(intel_host());
    const auto model = GENERATE(CpuModel::HostPassthrough, CpuModel::Minimal);
    struct Case {
        unsigned count;
        std::uint32_t core_shift;
    };
    for (auto [count, shift] : {Case{1, 0}, Case{2, 1}, Case{3, 2}, Case{4, 2}, Case{8, 3}, Case{9, 4}}) {
        for (unsigned index = 0; index < count; ++index) {
            const auto cpuid = shape(intel_table(), model, count, index, host);
            CHECK(count_function(cpuid, 0xb) == 3);
            const auto smt = get(cpuid, 0xb, 0);
            CHECK(smt.eax == 0);
            CHECK(smt.ebx == 1);
            CHECK(smt.ecx == 0x100); // level 0, type SMT
            CHECK(smt.edx == index);
            CHECK((smt.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX) != 0);
            const auto core = get(cpuid, 0xb, 1);
            CHECK(core.eax == shift);
            CHECK(core.ebx == count);
            CHECK(core.ecx == 0x201); // level 1, type core
            CHECK(core.edx == index);
            const auto end = get(cpuid, 0xb, 2);
            CHECK(end.eax == 0);
            CHECK(end.ebx == 0);
            CHECK(end.ecx == 2); // level 2, type invalid
            CHECK(end.edx == index);
            CHECK(get(cpuid, 0).eax >= 0xb);
        }
    }
}

TEST_CASE("cpuid: leaf 0x1F mirrors 0xB only where KVM reports it", "[cpuid]") {
    const auto host = read_host_cache_facts(intel_host());
    const auto with = shape(intel_table(true), CpuModel::HostPassthrough, 4, 3, host);
    REQUIRE(count_function(with, 0x1f) == 3);
    for (std::uint32_t level = 0; level < 3; ++level) {
        const auto a = get(with, 0xb, level), b = get(with, 0x1f, level);
        CHECK(a.eax == b.eax);
        CHECK(a.ebx == b.ebx);
        CHECK(a.ecx == b.ecx);
        CHECK(b.edx == 3);
    }
    CHECK(count_function(shape(intel_table(false), CpuModel::HostPassthrough, 4, 3, host), 0x1f) == 0);
}

TEST_CASE("cpuid: leaf 0xB is added when KVM lacks it", "[cpuid]") {
    auto table = intel_table();
    std::erase_if(table, [](const auto& e) { return e.function == 0xb; });
    table.front().eax = 0x7;
    const auto cpuid = shape(table, CpuModel::HostPassthrough, 2, 1, read_host_cache_facts(intel_host()));
    CHECK(get(cpuid, 0).eax == 0xb);
    CHECK(get(cpuid, 0xb, 1).ebx == 2);
}

TEST_CASE("cpuid: Intel leaf 4 keeps the host's caches and shares them as the guest's topology", "[cpuid]") {
    const auto host = read_host_cache_facts(intel_host());
    for (unsigned count : {1u, 2u, 4u}) {
        const auto cpuid = shape(intel_table(), CpuModel::HostPassthrough, count, 0, host);
        REQUIRE(count_function(cpuid, 4) == 5);
        for (std::uint32_t i = 0; i < kIntelCaches.size(); ++i) {
            const auto leaf = get(cpuid, 4, i);
            const auto& original = kIntelCaches[i];
            INFO("vcpus " << count << " subleaf " << i);
            CHECK((leaf.eax & 0x3fff) == (original.eax & 0x3fff)); // type, level, self-init, assoc
            CHECK(leaf.ebx == original.ebx);                       // line size, partitions, ways
            CHECK(leaf.ecx == original.ecx);                       // sets
            CHECK(leaf.edx == original.edx);
            CHECK(cores(leaf.eax) == count - 1);
            const bool l3 = i == 3;
            CHECK(sharing(leaf.eax) == (l3 ? count - 1 : 0));
        }
        CHECK(get(cpuid, 4, 4).eax == 0); // the null descriptor ends the list
    }
}

TEST_CASE("cpuid: leaf 4 falls back to KVM's own descriptors", "[cpuid]") {
    const auto cpuid = shape(intel_table(), CpuModel::HostPassthrough, 2, 1, HostCacheFacts{});
    REQUIRE(count_function(cpuid, 4) == 5);
    CHECK(sharing(get(cpuid, 4, 0).eax) == 0);
    CHECK(sharing(get(cpuid, 4, 3).eax) == 1);
    CHECK(cores(get(cpuid, 4, 3).eax) == 1);
    CHECK(get(cpuid, 4, 3).ecx == kIntelCaches[3].ecx);
}

TEST_CASE("cpuid: AMD cache and topology leaves follow the guest topology", "[cpuid]") {
    const auto host = read_host_cache_facts(amd_host());
    for (unsigned count : {1u, 2u, 4u}) {
        const unsigned index = count - 1;
        const auto cpuid = shape(amd_table(), CpuModel::HostPassthrough, count, index, host);
        INFO("vcpus " << count);
        REQUIRE(count_function(cpuid, 0x8000001d) == 5);
        for (std::uint32_t i = 0; i < kAmdCaches.size(); ++i) {
            const auto leaf = get(cpuid, 0x8000001d, i);
            CHECK((leaf.eax & 0x3fff) == (kAmdCaches[i].eax & 0x3fff));
            CHECK(leaf.ebx == kAmdCaches[i].ebx);
            CHECK(leaf.ecx == kAmdCaches[i].ecx);
            CHECK(leaf.edx == kAmdCaches[i].edx);
            CHECK(sharing(leaf.eax) == (i == 3 ? count - 1 : 0));
        }
        const auto sizes = get(cpuid, 0x80000008);
        CHECK((sizes.ecx & 0xff) == count - 1);
        CHECK(((sizes.ecx >> 12) & 0xf) == (count == 1 ? 0u : count == 2 ? 1u : 2u));
        CHECK(sizes.eax == 0x3030);
        const auto topology = get(cpuid, 0x8000001e);
        CHECK(topology.eax == index);
        CHECK((topology.ebx & 0xff) == index);
        CHECK(((topology.ebx >> 8) & 0xff) == 0);                      // one thread per core
        CHECK(((get(cpuid, 0x80000001).ecx & 2) != 0) == (count > 1)); // CmpLegacy
        CHECK(count_function(cpuid, 4) == 0);                          // no Intel cache leaf added
    }
}

TEST_CASE("cpuid: host-passthrough keeps everything else as KVM reports it", "[cpuid]") {
    const auto table = intel_table();
    const auto cpuid = shape(table, CpuModel::HostPassthrough, 2, 0, read_host_cache_facts(intel_host()));
    for (std::uint32_t function : {0x7u, 0xdu, 0x40000000u, 0x40000001u, 0x80000001u, 0x80000008u}) {
        const auto before = get(table, function), after = get(cpuid, function);
        INFO("leaf " << std::hex << function);
        CHECK(before.eax == after.eax);
        CHECK(before.ebx == after.ebx);
        CHECK(before.ecx == after.ecx);
        CHECK(before.edx == after.edx);
    }
    CHECK(get(cpuid, 0x40000000).ebx == kKvmEbx);
    CHECK(cpuid_has_avx(cpuid) == true);
    CHECK(cpuid_has_pdpe1gb(cpuid) == true);
    CHECK(get(cpuid, 0x80000008).ecx == 0); // the AMD core count is not written on Intel
    CHECK(get(cpuid, 0).ebx == kIntelEbx);
}

TEST_CASE("cpuid: the minimal model hides AVX and everything beyond the basics", "[cpuid]") {
    const auto host = read_host_cache_facts(intel_host());
    const auto cpuid = shape(intel_table(), CpuModel::Minimal, 2, 1, host);
    CHECK(cpuid_has_avx(cpuid) == false);
    CHECK(cpuid_has_x2apic(cpuid) == true);
    CHECK(cpuid_has_hypervisor(cpuid) == true);
    CHECK(cpuid_has_pdpe1gb(cpuid) == true);

    const auto leaf1 = get(cpuid, 1);
    CHECK(leaf1.eax == 0x000906ea);
    CHECK(leaf1.ecx == (kX2apic | kHypervisor));
    // FPU PSE TSC MSR PAE CX8 APIC MTRR PGE CMOV PAT CLFSH FXSR SSE SSE2 HTT, nothing else.
    CHECK(leaf1.edx == 0x1709b379);

    const auto leaf7 = get(cpuid, 7);
    CHECK(leaf7.eax == 0);
    CHECK(leaf7.ebx == 0);
    CHECK(leaf7.ecx == 0);
    CHECK(leaf7.edx == 0);
    CHECK(count_function(cpuid, 4) == 1);
    CHECK(get(cpuid, 4).eax == 0); // no cache descriptors
    CHECK(count_function(cpuid, 0xd) == 0);
    CHECK(get(cpuid, 0).eax == 0xb);
    CHECK(get(cpuid, 0).ebx == kIntelEbx);

    CHECK(get(cpuid, 0x40000000).eax == 0x40000001);
    CHECK(get(cpuid, 0x40000000).ebx == kKvmEbx);
    CHECK(get(cpuid, 0x40000001).eax == 0); // no paravirtual features

    CHECK(get(cpuid, 0x80000000).eax == 0x80000008);
    CHECK(get(cpuid, 0x80000001).edx == ((1U << 11) | (1U << 20) | (1U << 26) | (1U << 29)));
    CHECK(get(cpuid, 0x80000001).ecx == 0);
    CHECK(brand(cpuid) == "vmmlab minimal");
    CHECK(get(cpuid, 0x80000008).eax == 0x3027);

    for (const auto& e : cpuid) {
        const bool allowed = e.function <= 1 || e.function == 4 || e.function == 7 || e.function == 0xb ||
                             e.function == 0x40000000 || e.function == 0x40000001 ||
                             (e.function >= 0x80000000 && e.function <= 0x80000004) ||
                             e.function == 0x80000008;
        INFO("leaf " << std::hex << e.function);
        CHECK(allowed);
    }
}

TEST_CASE("cpuid: minimal keeps pdpe1gb only where the host has it", "[cpuid]") {
    const auto host = read_host_cache_facts(intel_host());
    CHECK(cpuid_has_pdpe1gb(shape(intel_table(false, false), CpuModel::Minimal, 1, 0, host)) == false);
    CHECK(cpuid_has_pdpe1gb(shape(intel_table(false, true), CpuModel::Minimal, 1, 0, host)) == true);
    const auto single = shape(intel_table(), CpuModel::Minimal, 1, 0, host);
    CHECK((get(single, 1).edx & kHtt) == 0);
}

TEST_CASE("cpuid: minimal on AMD writes the core count into 0x80000008", "[cpuid]") {
    const auto cpuid = shape(amd_table(), CpuModel::Minimal, 4, 2, read_host_cache_facts(amd_host()));
    CHECK(get(cpuid, 0x80000008).ecx == 0x2003);
    CHECK(get(cpuid, 0x80000000).ebx == kAmdEbx);
    CHECK(count_function(cpuid, 0x8000001d) == 0);
    CHECK(cpuid_has_avx(cpuid) == false);
    CHECK(cpuid_has_hypervisor(cpuid) == true);
}

TEST_CASE("cpuid: topologies it cannot express are refused", "[cpuid]") {
    const auto host = read_host_cache_facts(intel_host());
    CHECK_FALSE(guest_cpuid(intel_table(), CpuModel::HostPassthrough, {0, 0}, host).has_value());
    CHECK_FALSE(guest_cpuid(intel_table(), CpuModel::HostPassthrough, {256, 0}, host).has_value());
    const auto outside = guest_cpuid(intel_table(), CpuModel::Minimal, {2, 2}, host);
    REQUIRE_FALSE(outside.has_value());
    CHECK(outside.error() == "cpuid: vCPU index 2 outside 2 vCPUs");
    CHECK_FALSE(guest_cpuid({}, CpuModel::Minimal, {1, 0}, host).has_value());
}

TEST_CASE("cpuid: feature helpers answer nothing for an absent leaf", "[cpuid]") {
    const std::vector<kvm_cpuid_entry2> empty;
    CHECK_FALSE(cpuid_has_pdpe1gb(empty).has_value());
    CHECK_FALSE(cpuid_has_avx(empty).has_value());
    CHECK_FALSE(cpuid_has_x2apic(empty).has_value());
    const auto table = intel_table(false, false);
    CHECK(cpuid_has_pdpe1gb(table) == false);
    CHECK(cpuid_has_avx(table) == true);
    CHECK(cpuid_has_x2apic(table) == true);
    CHECK(cpuid_has_hypervisor(table) == false);
    CHECK(cpuid_vendor(table) == CpuVendor::Intel);
    CHECK(cpuid_vendor(amd_table()) == CpuVendor::Amd);
}
