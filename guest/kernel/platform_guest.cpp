// The guest side of guest/workloads/platform.hpp: serial output, BootInfo memory, vCPUs, and the
// instructions that make the VM exits the exit microbenchmarks time.
#include "guest/kernel/kernel.hpp"
#include "guest/kernel/memory_map.hpp"
#include "guest/workloads/cpu.hpp"
#include "guest/workloads/platform.hpp"

// The LAPIC timer entry in guest/kernel/start.cpp counts here and writes the EOI register at this address.
extern "C" {
volatile uint64_t vmmlab_timer_count = 0;
volatile uint64_t vmmlab_apic_eoi = 0;
volatile uint64_t vmmlab_halt_shadow_misses = 0; // timer interrupts taken inside the STI shadow
void vmmlab_safe_halt();
}

namespace vmmlab::guest {

extern FreeMemory g_free_memory; // guest/kernel/kernel.cpp

namespace platform {
namespace {

using kernel::outb;

template <typename Operation>
ExitMeasurement time_loop(const ExitRequest& request, Operation operation) {
    for (unsigned i = 0; i < 100 && i < request.iterations; ++i) // warm-up, untimed
        operation();
    ExitMeasurement m;
    m.supported = true;
    const uint64_t start = read_ticks();
    const uint64_t deadline = start + request.budget_ticks;
    uint64_t done = 0;
    while (done < request.iterations) {
        const uint64_t chunk = request.iterations - done < 64 ? request.iterations - done : 64;
        for (uint64_t i = 0; i < chunk; ++i)
            operation();
        done += chunk;
        if (read_ticks() > deadline) break;
    }
    m.ticks = read_ticks() - start;
    m.completed = done;
    return m;
}

// --- xAPIC timer for the HLT benchmark -----------------------------------------------------------------

namespace apic = kernel::apic;

ExitMeasurement measure_hlt(const ExitRequest& request) {
    ExitMeasurement m;
    constexpr uint32_t kCpuidApic = 1U << 9;
    if ((cpuid(1).edx & kCpuidApic) == 0) {
        m.note = "the CPU model has no local APIC (CPUID.1:EDX.APIC = 0)";
        return m;
    }
    const uint64_t apic_base_msr = kernel::rdmsr(apic::kMsrBase);
    if ((apic_base_msr & (1U << 11)) == 0 || (apic_base_msr & (1U << 10)) != 0) {
        m.note = "the local APIC is disabled or in x2APIC mode (IA32_APIC_BASE); only xAPIC is supported";
        return m;
    }
    const uint64_t base = apic_base_msr & 0xffffff000ULL;
    const uint32_t version = apic::read(base, apic::kVersion);
    if (version == 0 || version == 0xffffffff) {
        m.note = "no local APIC answers at its base address (no in-kernel irqchip?)";
        return m;
    }
    outb(0x21, 0xff); // mask both 8259 PICs: only the LAPIC timer may wake us
    outb(0xa1, 0xff);
    vmmlab_apic_eoi = base + apic::kEoi;
    apic::write(base, apic::kTpr, 0);
    apic::write(base, apic::kSvr, apic::read(base, apic::kSvr) | 0x100 | kernel::kSpuriousVector);
    apic::write(base, apic::kDivide, 0xb);                    // divide by 1
    apic::write(base, apic::kLvtTimer, kernel::kTimerVector); // one-shot, unmasked

    // Each round: arm the one-shot timer, then sti;hlt until its interrupt has been handled. A wake-up that
    // never comes cannot be bounded from inside (TESTING.md: enforce that from the host); the budget
    // bounds the total time of the wake-ups that do come.
    const uint64_t start = read_ticks();
    const uint64_t deadline = start + request.budget_ticks;
    uint64_t done = 0;
    bool out_of_time = false;
    while (done < request.iterations && !out_of_time) {
        const uint64_t before = vmmlab_timer_count;
        apic::write(base, apic::kInitialCount, static_cast<uint32_t>(request.timer_ticks));
        while (vmmlab_timer_count == before) {
            vmmlab_safe_halt();
            if (read_ticks() > deadline) break;
        }
        if (vmmlab_timer_count == before) break;
        ++done;
        out_of_time = read_ticks() > deadline;
    }
    m.ticks = read_ticks() - start;
    apic::write(base, apic::kLvtTimer, apic::kLvtMasked | kernel::kTimerVector);
    apic::write(base, apic::kInitialCount, 0);
    m.supported = true;
    m.completed = done;
    m.detail = static_cast<int64_t>(vmmlab_halt_shadow_misses);
    return m;
}

} // namespace

Text name() {
    return "the vmmlab guest";
}

Text cpu_noun() {
    return "vCPUs";
}

void write(Text text) {
    kernel::serial_write(text);
}

int read_byte(uint64_t timeout_ticks) {
    const uint64_t start = read_ticks();
    for (;;) {
        const int value = kernel::serial_read_byte();
        if (value >= 0) return value;
        if (read_ticks() - start > timeout_ticks) return -1;
        cpu_relax();
    }
}

void fail(Text message) {
    kernel::panic(message);
}

uint64_t tick_hz() {
    return kernel::tick_hz();
}

bool tick_rate_known() {
    return kernel::tick_rate_known();
}

unsigned cpu_count() {
    return kernel::online_cpus();
}

unsigned cpus_expected() {
    const uint32_t count = kernel::boot_info().vcpu_count;
    return count == 0 ? 1 : count;
}

uint64_t memory_bytes() {
    return g_free_memory.usable_bytes();
}

uint64_t page_size() {
    return kernel::boot_info().page_size;
}

void* allocate(size_t bytes, size_t alignment) {
    return reinterpret_cast<void*>(g_free_memory.allocate(bytes, alignment));
}

void release(void*) {
    // Bump allocation: one workload per boot, memory is never given back.
}

uint64_t largest_free_block() {
    return g_free_memory.largest_block();
}

void run_on_cpus(unsigned count, Job job, void* context) {
    kernel::run_on_cpus(count, job, context);
}

ExitMeasurement measure_exits(const ExitRequest& request) {
    switch (request.kind) {
    case ExitKind::Pio:
        return time_loop(request, [] {
            asm volatile("outl %0, %1" ::"a"(0U), "d"(static_cast<uint16_t>(abi::kBenchPioPort)) : "memory");
        });
    case ExitKind::PioIoeventfd:
        return time_loop(request, [] {
            asm volatile("outl %0, %1" ::"a"(0U), "d"(static_cast<uint16_t>(abi::kBenchIoeventfdPort))
                         : "memory");
        });
    case ExitKind::Mmio:
        return time_loop(request, [] {
            asm volatile("movl %0, (%1)" ::"a"(0U), "r"(abi::kBenchMmioAddress) : "memory");
        });
    case ExitKind::Cpuid:
        return time_loop(request, [] { (void)cpuid(0); });
    case ExitKind::Hypercall: {
        // An unknown hypercall number: KVM answers -KVM_ENOSYS (-1000) in RAX without leaving the kernel.
        constexpr uint64_t kUnknownHypercall = 0x7fff0000;
        char vendor[13];
        cpu_vendor(vendor);
        const bool amd = Text{vendor} == Text{"AuthenticAMD"} || Text{vendor} == Text{"HygonGenuine"};
        uint64_t rax = 0;
        ExitMeasurement m;
        if (amd) {
            m = time_loop(request, [&rax] {
                asm volatile("vmmcall" : "=a"(rax) : "a"(kUnknownHypercall) : "memory");
            });
            m.note = "VMMCALL (AMD)";
        } else {
            m = time_loop(request, [&rax] {
                asm volatile("vmcall" : "=a"(rax) : "a"(kUnknownHypercall) : "memory");
            });
            m.note = "VMCALL (Intel)";
        }
        m.detail = static_cast<int64_t>(rax);
        return m;
    }
    case ExitKind::Hlt:
        return measure_hlt(request);
    }
    return {};
}

bool raise_exception(Text type) {
    if (type == Text{"ud"}) asm volatile("ud2");
    if (type == Text{"pf"}) {
        // 1 TiB: beyond the identity map of any RAM size this project boots.
        (void)*reinterpret_cast<volatile uint64_t*>(1ULL << 40);
    }
    if (type == Text{"gp"})
        (void)*reinterpret_cast<volatile uint64_t*>(0x8000000000000000ULL); // non-canonical
    if (type == Text{"de"}) {
        uint32_t quotient = 1;
        uint32_t zero = 0;
        asm volatile("xor %%edx, %%edx\n\tdivl %1" : "+a"(quotient) : "r"(zero) : "rdx");
    }
    return false;
}

bool ioeventfd_bound() {
    return (kernel::boot_info().flags & abi::kFlagIoeventfdBound) != 0;
}

} // namespace platform
} // namespace vmmlab::guest
