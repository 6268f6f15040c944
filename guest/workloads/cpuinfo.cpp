// cpuinfo: what CPUID tells this CPU about itself, so a test (or a person) can check that the monitor's
// CPU model and topology reach the guest: vendor, brand, the logical-processor count and APIC IDs,
// the x2APIC topology levels (leaf 0xB) and the deterministic cache parameters (leaf 4 on Intel,
// 0x8000001D on AMD), as sizes and sharing counts.
#include "guest/workloads/cpu.hpp"
#include "guest/workloads/platform.hpp"
#include "guest/workloads/workloads.hpp"

namespace vmmlab::guest {
namespace {

constexpr unsigned kMaxCpus = 64;

struct CpuIds {
    uint32_t initial_apic_id[kMaxCpus]; // leaf 1 EBX[31:24], as each CPU sees it
};

void read_apic_id(void* context, unsigned index, unsigned /*count*/) {
    auto* ids = static_cast<CpuIds*>(context);
    if (index < kMaxCpus) ids->initial_apic_id[index] = cpuid(1).ebx >> 24;
}

bool is_amd_like(const char (&vendor)[13]) {
    return Text{vendor} == Text{"AuthenticAMD"} || Text{vendor} == Text{"HygonGenuine"};
}

struct CacheSummary {
    unsigned levels = 0;           // descriptors before the null one
    uint64_t l1d_bytes = 0;        // first level-1 data cache
    uint64_t last_level_bytes = 0; // the highest-level cache
    unsigned last_level = 0;
    unsigned last_level_sharing = 0; // logical processors sharing it
};

CacheSummary read_caches(uint32_t leaf) {
    CacheSummary summary;
    for (uint32_t subleaf = 0; subleaf < 16; ++subleaf) {
        const CpuidResult r = cpuid(leaf, subleaf);
        const uint32_t type = r.eax & 0x1f; // 0 null, 1 data, 2 instruction, 3 unified
        if (type == 0) break;
        const unsigned level = (r.eax >> 5) & 0x7;
        const unsigned sharing = ((r.eax >> 14) & 0xfff) + 1;
        const uint64_t ways = ((r.ebx >> 22) & 0x3ff) + 1;
        const uint64_t partitions = ((r.ebx >> 12) & 0x3ff) + 1;
        const uint64_t line_size = (r.ebx & 0xfff) + 1;
        const uint64_t sets = static_cast<uint64_t>(r.ecx) + 1;
        const uint64_t bytes = ways * partitions * line_size * sets;
        ++summary.levels;
        if (level == 1 && type == 1 && summary.l1d_bytes == 0) summary.l1d_bytes = bytes;
        if (level >= summary.last_level) {
            summary.last_level = level;
            summary.last_level_bytes = bytes;
            summary.last_level_sharing = sharing;
        }
        Line line;
        line.put("cache: L").put_u64(level).put(' ');
        line.put(type == 1 ? "data" : type == 2 ? "instruction" : "unified").put(' ').put_bytes(bytes);
        line.put(", shared by ").put_u64(sharing).put(" logical processor(s)");
        print_line(line);
    }
    return summary;
}

} // namespace

int run_cpuinfo(const Args& args) {
    if (!args.only(static_cast<const Text*>(nullptr), 0)) return kExitUsage;

    char vendor[13];
    cpu_vendor(vendor);
    char brand[49] = {};
    if (cpuid(0x80000000).eax >= 0x80000004)
        for (uint32_t i = 0; i < 3; ++i) {
            const CpuidResult r = cpuid(0x80000002 + i);
            const uint32_t words[4] = {r.eax, r.ebx, r.ecx, r.edx};
            for (unsigned word = 0; word < 4; ++word)
                for (unsigned byte = 0; byte < 4; ++byte)
                    brand[i * 16 + word * 4 + byte] = static_cast<char>((words[word] >> (8 * byte)) & 0xff);
        }
    const CpuidResult leaf1 = cpuid(1);
    const unsigned logical = (leaf1.ebx >> 16) & 0xff;
    const bool hypervisor = (leaf1.ecx >> 31) & 1;
    Line line;
    line.put("cpuinfo: ").put(vendor).put(", '").put(brand).put("', ");
    line.put_u64(logical).put(" logical processor(s) per package");
    line.put(hypervisor ? ", hypervisor bit set" : ", no hypervisor bit");
    print_line(line);

    // Leaf 0xB: the core level's processor count (the package size as the topology describes it).
    unsigned topology_processors = 0;
    if (cpuid(0).eax >= 0xb)
        for (uint32_t subleaf = 0; subleaf < 8; ++subleaf) {
            const CpuidResult r = cpuid(0xb, subleaf);
            const unsigned level_type = (r.ecx >> 8) & 0xff; // 1 SMT, 2 core
            if (level_type == 0) break;
            topology_processors = r.ebx & 0xffff;
        }

    // Every CPU reports its initial APIC ID; they must differ.
    const unsigned cpus = platform::cpu_count() < kMaxCpus ? platform::cpu_count() : kMaxCpus;
    CpuIds ids{};
    platform::run_on_cpus(cpus, read_apic_id, &ids);
    unsigned distinct = 0;
    for (unsigned i = 0; i < cpus; ++i) {
        bool seen = false;
        for (unsigned j = 0; j < i; ++j)
            seen = seen || ids.initial_apic_id[j] == ids.initial_apic_id[i];
        if (!seen) ++distinct;
    }

    const bool amd = is_amd_like(vendor);
    const uint32_t cache_leaf = amd ? 0x8000001d : 4;
    const bool has_cache_leaf =
        amd ? cpuid(0x80000000).eax >= 0x8000001d && ((cpuid(0x80000001).ecx >> 22) & 1) != 0 // TOPOEXT
            : cpuid(0).eax >= 4;
    const CacheSummary caches = has_cache_leaf ? read_caches(cache_leaf) : CacheSummary{};

    report("cpuinfo", "logical_processors", ResultValue::whole(logical), "count");
    report("cpuinfo", "topology_processors", ResultValue::whole(topology_processors), "count");
    report("cpuinfo", "distinct_apic_ids", ResultValue::whole(distinct), "count");
    report("cpuinfo", "hypervisor", ResultValue::whole(hypervisor ? 1 : 0), "bool");
    report("cpuinfo", "avx2", ResultValue::whole(cpu_has_avx2() ? 1 : 0), "bool");
    report("cpuinfo", "cache_descriptors", ResultValue::whole(caches.levels), "count");
    report("cpuinfo", "l1d_size", ResultValue::whole(caches.l1d_bytes), "bytes");
    report("cpuinfo", "last_level_cache", ResultValue::whole(caches.last_level), "level");
    report("cpuinfo", "last_level_size", ResultValue::whole(caches.last_level_bytes), "bytes");
    report("cpuinfo", "last_level_sharing", ResultValue::whole(caches.last_level_sharing), "count");
    return kExitOk;
}

} // namespace vmmlab::guest
