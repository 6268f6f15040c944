// The tiny guest kernel: boot, serial console, IDT and fault reporting, vCPU check-in and job fan-out.
#include "guest/kernel/kernel.hpp"

#include <atomic>

#include "guest/kernel/memory_map.hpp"
#include "guest/workloads/cpu.hpp"
#include "guest/workloads/workloads.hpp"

extern "C" {
// Linker script symbols: the whole image, page aligned.
extern char __image_start[];
extern char __image_end[];
// guest/kernel/start.cpp
extern char vmmlab_isr_stubs[];
extern char vmmlab_isr_timer[];
extern char vmmlab_isr_spurious[];
extern char vmmlab_isr_device[];

[[noreturn]] void vmmlab_guest_main(const vmmlab::abi::BootInfo* info, uint64_t index);
}

namespace vmmlab::guest {

constinit FreeMemory g_free_memory; // guest/kernel/platform_guest.cpp hands it out

namespace kernel {
namespace {

// --- state shared by the vCPUs ------------------------------------------------------------------------

const abi::BootInfo* g_info = nullptr;
uint64_t g_tick_hz = 0;
bool g_tick_rate_known = false;

std::atomic<uint32_t> g_idt_ready{0};
std::atomic<uint32_t> g_ap_arrivals{0}; // secondary vCPUs that checked in
std::atomic<uint32_t> g_online{0};      // published by the boot CPU once the check-in wait is over

// One job at a time; written by the boot CPU before it bumps g_job_generation (release).
Job g_job = nullptr;
void* g_job_context = nullptr;
unsigned g_job_count = 0;
alignas(64) std::atomic<uint32_t> g_job_generation{0};
alignas(64) std::atomic<uint32_t> g_job_done{0};

std::atomic<uint32_t> g_serial_lock{0};
std::atomic<uint32_t> g_in_fatal{0};
bool g_serial_fifo = false;

// --- serial console (16550 at COM1, polled) -----------------------------------------------------------

constexpr uint16_t kCom1 = abi::kSerialPort;
constexpr uint8_t kLsrThrEmpty = 0x20;

void serial_init() {
    outb(kCom1 + 1, 0x00); // no interrupts
    outb(kCom1 + 3, 0x80); // DLAB on
    outb(kCom1 + 0, 0x01); // 115200 baud
    outb(kCom1 + 1, 0x00);
    outb(kCom1 + 3, 0x03); // 8N1, DLAB off
    outb(kCom1 + 2, 0xc7); // FIFOs on and cleared, 14-byte trigger
    outb(kCom1 + 4, 0x03); // DTR, RTS
    // IIR bits 7:6 read 11 when the FIFOs are really on: then 16 bytes go per THR-empty check.
    g_serial_fifo = (inb(kCom1 + 2) & 0xc0) == 0xc0;
}

constexpr uint8_t kLsrDataReady = 0x01;

void serial_wait_thr_empty() {
    for (unsigned i = 0; i < (1U << 16); ++i) // bounded: a missing UART must not hang the guest
        if ((inb(kCom1 + 5) & kLsrThrEmpty) != 0) return;
}

void serial_put(Text text) {
    const size_t burst = g_serial_fifo ? 16 : 1;
    for (size_t i = 0; i < text.size; i += burst) {
        serial_wait_thr_empty();
        for (size_t k = i; k < text.size && k < i + burst; ++k)
            outb(kCom1, static_cast<uint8_t>(text[k]));
    }
}

// Bounded so that a CPU that faulted while holding it cannot silence the others forever.
bool serial_lock() {
    for (uint64_t i = 0; i < (1ULL << 24); ++i) {
        if (g_serial_lock.exchange(1, std::memory_order_acquire) == 0) return true;
        cpu_relax();
    }
    return false;
}

void serial_unlock(bool locked) {
    if (locked) g_serial_lock.store(0, std::memory_order_release);
}

void print(const Line& line) {
    const bool locked = serial_lock();
    serial_put(line.text());
    serial_put("\n");
    serial_unlock(locked);
}

// --- IDT and exceptions -------------------------------------------------------------------------------

struct IdtEntry {
    uint16_t offset_low;
    uint16_t selector;
    uint8_t ist;
    uint8_t type_attributes;
    uint16_t offset_middle;
    uint32_t offset_high;
    uint32_t reserved;
};
static_assert(sizeof(IdtEntry) == 16);

struct [[gnu::packed]] IdtPointer {
    uint16_t limit;
    uint64_t base;
};

alignas(16) IdtEntry g_idt[256];

constexpr uint16_t kCodeSelector = 0x8;
constexpr uint8_t kInterruptGate = 0x8e; // present, DPL 0, 64-bit interrupt gate (IF cleared on entry)

void set_gate(unsigned vector, const void* handler) {
    const auto address = reinterpret_cast<uint64_t>(handler);
    g_idt[vector] = IdtEntry{static_cast<uint16_t>(address & 0xffff),
                             kCodeSelector,
                             0,
                             kInterruptGate,
                             static_cast<uint16_t>((address >> 16) & 0xffff),
                             static_cast<uint32_t>(address >> 32),
                             0};
}

void build_idt() {
    for (unsigned vector = 0; vector < 256; ++vector)
        set_gate(vector, vmmlab_isr_stubs + 16 * vector);
    set_gate(kTimerVector, vmmlab_isr_timer);
    set_gate(kSpuriousVector, vmmlab_isr_spurious);
    set_gate(kDeviceVector, vmmlab_isr_device);
}

void load_idt() {
    const IdtPointer pointer{sizeof(g_idt) - 1, reinterpret_cast<uint64_t>(&g_idt[0])};
    asm volatile("lidt %0" ::"m"(pointer));
}

// clang-format off
constexpr const char* kExceptionNames[32] = {
    "#DE divide error", "#DB debug", "NMI", "#BP breakpoint", "#OF overflow", "#BR bound range",
    "#UD invalid opcode", "#NM device not available", "#DF double fault", "coprocessor segment overrun",
    "#TS invalid TSS", "#NP segment not present", "#SS stack fault", "#GP general protection",
    "#PF page fault", "reserved 15", "#MF x87 floating point", "#AC alignment check", "#MC machine check",
    "#XM SIMD floating point", "#VE virtualization", "#CP control protection", "reserved 22",
    "reserved 23", "reserved 24", "reserved 25", "reserved 26", "reserved 27", "#HV hypervisor injection",
    "#VC VMM communication", "#SX security", "reserved 31"};
// clang-format on

} // namespace

// --- interfaces for the other kernel files ------------------------------------------------------------

const abi::BootInfo& boot_info() {
    return *g_info;
}
uint64_t tick_hz() {
    return g_tick_hz;
}
bool tick_rate_known() {
    return g_tick_rate_known;
}
unsigned online_cpus() {
    return g_online.load(std::memory_order_relaxed);
}

int serial_read_byte() {
    if ((inb(kCom1 + 5) & kLsrDataReady) == 0) return -1;
    return inb(kCom1);
}

void serial_write(Text text) {
    const bool locked = serial_lock();
    serial_put(text);
    serial_unlock(locked);
}

void exit_vm(uint32_t status) {
    outl(abi::kExitPort, status);
    for (;;)
        asm volatile("cli\n\thlt");
}

void panic(Text message) {
    Line line;
    line.put("guest panic: ").put(message);
    print(line);
    exit_vm(kExitPanic);
}

void run_on_cpus(unsigned count, Job job, void* context) {
    if (count > 1) {
        g_job = job;
        g_job_context = context;
        g_job_count = count;
        g_job_done.store(0, std::memory_order_relaxed);
        g_job_generation.fetch_add(1, std::memory_order_release);
    }
    job(context, 0, count);
    while (count > 1 && g_job_done.load(std::memory_order_acquire) != count - 1)
        cpu_relax();
}

namespace {

// --- boot ---------------------------------------------------------------------------------------------

// The TSC rate: BootInfo, else CPUID leaf 0x15, else the hypervisor timing leaf 0x40000010, else 0x16.
void find_tick_rate(const abi::BootInfo& info) {
    g_tick_rate_known = true;
    if (info.tsc_khz != 0) {
        g_tick_hz = info.tsc_khz * 1000;
        return;
    }
    const uint32_t max_leaf = cpuid(0).eax;
    if (max_leaf >= 0x15) {
        const CpuidResult r = cpuid(0x15);
        if (r.eax != 0 && r.ebx != 0 && r.ecx != 0) {
            g_tick_hz = static_cast<uint64_t>(r.ecx) * r.ebx / r.eax;
            return;
        }
    }
    if (cpuid(0x40000000).eax >= 0x40000010 && cpuid(0x40000010).eax != 0) {
        g_tick_hz = static_cast<uint64_t>(cpuid(0x40000010).eax) * 1000;
        return;
    }
    if (max_leaf >= 0x16 && (cpuid(0x16).eax & 0xffff) != 0) {
        g_tick_hz = static_cast<uint64_t>(cpuid(0x16).eax & 0xffff) * 1000000;
        return;
    }
    g_tick_hz = 2000000000; // a guess; said so in the banner
    g_tick_rate_known = false;
}

[[noreturn]] void park() {
    for (;;)
        asm volatile("cli\n\thlt");
}

[[noreturn]] void secondary_main() {
    while (g_idt_ready.load(std::memory_order_acquire) == 0)
        cpu_relax();
    load_idt();
    const uint32_t slot = g_ap_arrivals.fetch_add(1, std::memory_order_acq_rel) + 1;
    uint32_t online;
    while ((online = g_online.load(std::memory_order_acquire)) == 0)
        cpu_relax();
    if (slot >= online) park(); // arrived after the boot CPU stopped waiting
    uint32_t seen = 0;
    for (;;) {
        uint32_t generation;
        while ((generation = g_job_generation.load(std::memory_order_acquire)) == seen)
            cpu_relax();
        seen = generation;
        if (slot < g_job_count) {
            g_job(g_job_context, slot, g_job_count);
            g_job_done.fetch_add(1, std::memory_order_release);
        }
    }
}

[[noreturn]] void boot_main(const abi::BootInfo* info) {
    serial_init();
    outb(abi::kBootMarkerPort, 1);
    Line line;
    if (info->magic != abi::kBootInfoMagic || info->version != abi::kBootInfoVersion) {
        line.put("guest panic: bad BootInfo at ").put_hex(reinterpret_cast<uint64_t>(info)).put(": magic ");
        line.put_hex(info->magic).put(" version ").put_u64(info->version).put(" (expected ");
        line.put_hex(abi::kBootInfoMagic).put(" version ").put_u64(abi::kBootInfoVersion).put(')');
        print(line);
        exit_vm(kExitPanic);
    }
    g_info = info;
    build_idt();
    load_idt();
    g_idt_ready.store(1, std::memory_order_release);
    find_tick_rate(*info);

    // Wait up to 1 s for the other vCPUs to check in.
    const uint32_t expected = info->vcpu_count == 0 ? 1 : info->vcpu_count;
    const uint64_t deadline = read_ticks() + g_tick_hz;
    while (g_ap_arrivals.load(std::memory_order_acquire) + 1 < expected && read_ticks() < deadline)
        cpu_relax();
    const uint32_t online = g_ap_arrivals.load(std::memory_order_acquire) + 1;
    g_online.store(online < expected ? online : expected, std::memory_order_release);

    g_free_memory.build(info->memory_ranges, info->memory_range_count,
                        reinterpret_cast<uint64_t>(__image_start), reinterpret_cast<uint64_t>(__image_end));

    size_t command_length = 0;
    while (command_length < abi::kCommandLineSize && info->command_line[command_length] != '\0')
        ++command_length;
    if (command_length == abi::kCommandLineSize) {
        print_text("error: command line is not NUL-terminated");
        exit_vm(kExitUsage);
    }
    const Text command_line{info->command_line, command_length};

    line.put("vmmlab guest: ")
        .put_u64(online_cpus())
        .put(" of ")
        .put_u64(expected)
        .put(" vCPUs online, TSC ");
    if (g_tick_rate_known)
        line.put_u64(g_tick_hz / 1000).put(" kHz");
    else
        line.put("rate unknown (assuming 2 GHz)");
    line.put(", ")
        .put_u64(g_free_memory.free_bytes() >> 20)
        .put(" MiB free, page size ")
        .put_bytes(info->page_size);
    line.put(", command line '").put(command_line).put('\'');
    print(line);

    outb(abi::kBootMarkerPort, 2); // workload starts
    const int status = run_command_line(command_line);
    outb(abi::kBootMarkerPort, 3); // workload done
    exit_vm(static_cast<uint32_t>(status));
}

} // namespace
} // namespace kernel
} // namespace vmmlab::guest

using namespace vmmlab::guest;

extern "C" void vmmlab_guest_main(const vmmlab::abi::BootInfo* info, uint64_t index) {
    if (index == 0) kernel::boot_main(info);
    kernel::secondary_main();
}

// The saved state of an interrupted CPU as guest/kernel/start.cpp lays it out.
struct InterruptFrame {
    uint64_t r15, r14, r13, r12, r11, r10, r9, r8, rdi, rsi, rbp, rbx, rdx, rcx, rax;
    uint64_t vector, error_code;
    uint64_t rip, cs, rflags, rsp, ss;
};

// Every vector except the timer and spurious ones ends up here: report it and end the VM with 71.
extern "C" void vmmlab_interrupt(InterruptFrame* frame) {
    if (kernel::g_in_fatal.exchange(1) != 0) kernel::park(); // a fault while reporting one: stop here
    uint64_t cr2;
    asm volatile("mov %%cr2, %0" : "=r"(cr2));
    const uint32_t apic_id = cpuid(1).ebx >> 24;
    Line line;
    if (frame->vector < 32)
        line.put("guest exception: ").put(kernel::kExceptionNames[frame->vector]);
    else
        line.put("guest exception: unexpected interrupt");
    line.put(" (vector ").put_u64(frame->vector).put(") rip=").put_hex(frame->rip);
    line.put(" error=").put_hex(frame->error_code);
    if (frame->vector == 14) line.put(" cr2=").put_hex(cr2);
    line.put(" rsp=").put_hex(frame->rsp).put(" apic_id=").put_u64(apic_id);
    kernel::print(line);
    line.clear();
    line.put("  rax=").put_hex(frame->rax).put(" rbx=").put_hex(frame->rbx).put(" rcx=").put_hex(frame->rcx);
    line.put(" rdx=").put_hex(frame->rdx).put(" rsi=").put_hex(frame->rsi).put(" rdi=").put_hex(frame->rdi);
    line.put(" rbp=").put_hex(frame->rbp);
    kernel::print(line);
    kernel::exit_vm(kExitException);
}
