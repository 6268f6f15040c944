// The tiny guest's virtio-blk driver (virtio 1.2, 5.2) behind guest/workloads/platform.hpp's block_*
// functions: one request queue (queue 0), requests of three descriptors each (header, data, status) at
// fixed places (tag t uses descriptors 3t..3t+2), completions from the used ring, either after an MSI-X
// interrupt on kDeviceVector while the vCPU halts (wait=irq: the monitor's interrupt path is part of what
// is measured) or by spinning on the used ring (wait=poll: no interrupts at all). A LAPIC timer in
// periodic mode (about 10 ms) wakes a halted vCPU even if an interrupt is lost, so every wait is bounded.
// With EVENT_IDX (BlockOpen::event_index) the kick writes the notify register only when the device's
// avail_event asks for it, and the driver's used_event asks for an interrupt at the next unseen entry.
// A device that breaks the protocol (an id that is no request in flight, a status it did not write, a used
// index that runs ahead) or goes silent is a guest panic naming what it did.
#include "guest/kernel/kernel.hpp"
#include "guest/kernel/virtio_pci.hpp"
#include "guest/workloads/cpu.hpp"
#include "guest/workloads/platform.hpp"

extern "C" {
extern volatile uint64_t vmmlab_apic_eoi;       // guest/kernel/platform_guest.cpp
extern volatile uint64_t vmmlab_timer_count;    // ditto: LAPIC timer interrupts
volatile uint64_t vmmlab_device_interrupts = 0; // guest/kernel/start.cpp's vmmlab_isr_device counts here
void vmmlab_safe_halt();
}

namespace vmmlab::guest::platform {
namespace {

using kernel::VirtioPciDevice;

constexpr uint32_t kRequestIn = 0;
constexpr uint32_t kRequestOut = 1;
constexpr unsigned kBlockFeatureReadOnly = 5;
constexpr unsigned kFeatureEventIndex = 29; // VIRTIO_F_EVENT_IDX
constexpr unsigned kMaxQueueDepth = 64;
constexpr uint8_t kStatusUnwritten = 0xff;

struct RequestHeader {
    uint32_t type;
    uint32_t reserved;
    uint64_t sector;
};

alignas(4096) kernel::SplitRing g_ring;
alignas(64) RequestHeader g_headers[kMaxQueueDepth];
alignas(64) volatile uint8_t g_status[kMaxQueueDepth];

struct Driver {
    VirtioPciDevice pci;
    bool open = false;
    BlockWait wait = BlockWait::Interrupt;
    unsigned depth = 0;
    uint16_t size = 0;
    uint16_t avail_index = 0; // the driver's copy of avail.idx
    uint16_t used_seen = 0;   // used entries consumed
    uint64_t notify_address = 0;
    uint64_t apic_base = 0;
    uint64_t interrupts_at_open = 0;
    uint64_t interrupts_seen = 0;
    uint64_t kicks = 0;
    bool event_index = false;
    uint16_t kicked_at = 0; // avail idx at the last notification (EVENT_IDX)
    bool in_flight[kMaxQueueDepth] = {};
    char name[sizeof("virtio-blk 00:1f.0")] = {}; // a Line would need a static constructor
};

constinit Driver g_driver;

Text driver_name() {
    return {g_driver.name, sizeof(g_driver.name) - 1};
}

// --- local APIC -----------------------------------------------------------------------------------------

constexpr uint32_t kWatchdogCount = 10000000; // 10 ms where the APIC bus runs at 1 GHz, as KVM's does

uint32_t apic_read(uint32_t reg) {
    return kernel::apic::read(g_driver.apic_base, reg);
}
void apic_write(uint32_t reg, uint32_t value) {
    kernel::apic::write(g_driver.apic_base, reg, value);
}

// Enables the xAPIC for interrupts (TPR 0, software enable) and starts the watchdog timer; returns the
// local APIC ID, or false with the reason.
bool apic_start(uint32_t& apic_id, Line& error) {
    if ((cpuid(1).edx & (1U << 9)) == 0) {
        error.put(
            "wait=irq needs a local APIC and the CPU model has none (CPUID.1:EDX.APIC = 0); use wait=poll");
        return false;
    }
    const uint64_t msr = kernel::rdmsr(kernel::apic::kMsrBase);
    if ((msr & (1U << 11)) == 0 || (msr & (1U << 10)) != 0) {
        error.put("wait=irq needs the local APIC enabled in xAPIC mode (IA32_APIC_BASE ")
            .put_hex(msr)
            .put(')');
        return false;
    }
    g_driver.apic_base = msr & 0xffffff000ULL;
    kernel::outb(0x21, 0xff); // both 8259 PICs masked: only the LAPIC's sources may interrupt
    kernel::outb(0xa1, 0xff);
    vmmlab_apic_eoi = g_driver.apic_base + kernel::apic::kEoi;
    apic_write(kernel::apic::kTpr, 0);
    apic_write(kernel::apic::kSvr, apic_read(kernel::apic::kSvr) | 0x100 | kernel::kSpuriousVector);
    apic_write(kernel::apic::kDivide, 0xb); // divide by 1
    apic_write(kernel::apic::kLvtTimer, kernel::apic::kLvtPeriodic | kernel::kTimerVector);
    apic_write(kernel::apic::kInitialCount, kWatchdogCount);
    apic_id = apic_read(kernel::apic::kId) >> 24;
    return true;
}

void apic_stop() {
    if (g_driver.apic_base == 0) return;
    apic_write(kernel::apic::kLvtTimer, kernel::apic::kLvtMasked | kernel::kTimerVector);
    apic_write(kernel::apic::kInitialCount, 0);
}

// --- ring access ----------------------------------------------------------------------------------------

void compiler_barrier() {
    asm volatile("" ::: "memory");
}

uint16_t used_index() {
    return *reinterpret_cast<volatile uint16_t*>(&g_ring.used.idx);
}

// EVENT_IDX fields: used_event after the available ring's entries, avail_event after the used ring's.
volatile uint16_t* used_event_slot(uint16_t size) {
    return reinterpret_cast<volatile uint16_t*>(&g_ring.avail.ring[size]);
}
volatile uint16_t* avail_event_slot(uint16_t size) {
    return reinterpret_cast<volatile uint16_t*>(&g_ring.used.ring[size]);
}

[[noreturn]] void device_panic(const Line& what) {
    Line line;
    line.put(driver_name()).put(": ").put(what.text());
    line.put(" (device_status ").put_hex(g_driver.pci.status()).put(", used idx ").put_u64(used_index());
    line.put(", consumed ")
        .put_u64(g_driver.used_seen)
        .put(", avail idx ")
        .put_u64(g_driver.avail_index)
        .put(')');
    kernel::panic(line.text());
}

[[noreturn]] void device_panic(Text what, uint64_t value) {
    Line line;
    line.put(what).put(' ').put_u64(value);
    device_panic(line);
}

size_t harvest(BlockCompletion* out, size_t capacity) {
    const uint16_t produced = used_index();
    compiler_barrier(); // the entries are read after the index (x86 keeps loads in order)
    const auto pending = static_cast<uint16_t>(produced - g_driver.used_seen);
    if (pending > g_driver.size) device_panic("used index ran ahead of the ring by", pending);
    size_t count = 0;
    while (count < capacity && g_driver.used_seen != produced) {
        const auto& element = g_ring.used.ring[g_driver.used_seen % g_driver.size];
        const uint32_t id = *reinterpret_cast<const volatile uint32_t*>(&element.id);
        const uint32_t tag = id / 3;
        if (id % 3 != 0 || tag >= g_driver.depth || !g_driver.in_flight[tag])
            device_panic("used ring returned descriptor id that heads no request in flight:", id);
        const uint8_t status = g_status[tag];
        if (status == kStatusUnwritten)
            device_panic("completed a request without writing its status, tag", tag);
        g_driver.in_flight[tag] = false;
        out[count++] = BlockCompletion{static_cast<uint16_t>(tag), status};
        ++g_driver.used_seen;
    }
    return count;
}

} // namespace

bool block_supported() {
    return true;
}

bool block_open(const BlockOpen& request, BlockInfo& info, Line& error) {
    if (g_driver.open) block_close();
    g_driver = Driver{};
    VirtioPciDevice& pci = g_driver.pci;
    if (!pci.find(kernel::kVirtioBlockDevice, request.disk, error)) return false;
    pci.name_into("virtio-blk ", g_driver.name);

    if (request.queue_depth == 0 || request.queue_depth > kMaxQueueDepth) {
        error.put("queue depth ").put_u64(request.queue_depth).put(" outside 1..").put_u64(kMaxQueueDepth);
        return false;
    }
    if (!pci.reset(error)) return false;
    uint64_t features = 0;
    const uint64_t required =
        1ULL << kernel::kFeatureVersion1 | (request.event_index ? 1ULL << kFeatureEventIndex : 0);
    if (!pci.negotiate(required, 1ULL << kBlockFeatureReadOnly, features, error)) return false;
    const bool interrupts = request.wait == BlockWait::Interrupt;
    uint16_t vector = kernel::kNoVector;
    if (interrupts) {
        uint32_t apic_id = 0;
        if (!apic_start(apic_id, error) || !pci.enable_msix(0, kernel::kDeviceVector, apic_id, error)) {
            pci.fail();
            apic_stop();
            return false;
        }
        vector = 0;
    }
    __builtin_memset(&g_ring, 0, sizeof g_ring); // a device opened before left its indices here
    uint16_t size = 0;
    if (!pci.setup_queue(0, g_ring, kernel::kQueueMaxSize, vector, size, g_driver.notify_address, error)) {
        pci.fail();
        apic_stop();
        return false;
    }
    if (size < 3 * request.queue_depth) {
        error.put("queue depth ")
            .put_u64(request.queue_depth)
            .put(" needs ")
            .put_u64(3 * request.queue_depth);
        error.put(" descriptors; the device's queue has ")
            .put_u64(size)
            .put(" (at most qd=")
            .put_u64(size / 3)
            .put(')');
        pci.fail();
        apic_stop();
        return false;
    }
    // Fixed descriptor chains: tag t is descriptors 3t (header), 3t+1 (data), 3t+2 (status).
    for (unsigned tag = 0; tag < request.queue_depth; ++tag) {
        auto* d = &g_ring.desc[3 * tag];
        d[0] = {reinterpret_cast<uint64_t>(&g_headers[tag]), sizeof(RequestHeader), kernel::kDescNext,
                static_cast<uint16_t>(3 * tag + 1)};
        d[1] = {0, 0, kernel::kDescNext, static_cast<uint16_t>(3 * tag + 2)};
        d[2] = {reinterpret_cast<uint64_t>(&g_status[tag]), 1, kernel::kDescWrite, 0};
    }
    g_ring.avail.flags = interrupts ? 0 : kernel::kAvailNoInterrupt; // ignored with EVENT_IDX
    *used_event_slot(size) = 0; // with EVENT_IDX: interrupt for the first completion
    if (!pci.driver_ok(error)) {
        apic_stop();
        return false;
    }
    g_driver.open = true;
    g_driver.wait = request.wait;
    g_driver.depth = request.queue_depth;
    g_driver.size = size;
    g_driver.interrupts_at_open = vmmlab_device_interrupts;
    g_driver.interrupts_seen = vmmlab_device_interrupts;
    g_driver.event_index = request.event_index;

    info.sectors = pci.config_u64(0);
    info.read_only = (features >> kBlockFeatureReadOnly) & 1;
    info.queue_size = size;
    info.max_queue_depth = size / 3 < kMaxQueueDepth ? size / 3 : kMaxQueueDepth;
    info.transport = driver_name();
    return true;
}

void block_submit(uint16_t tag, bool write, uint64_t sector, void* buffer, uint32_t bytes) {
    if (!g_driver.open || tag >= g_driver.depth || g_driver.in_flight[tag])
        kernel::panic("block_submit: no device open, tag out of range or already in flight");
    g_headers[tag] = RequestHeader{write ? kRequestOut : kRequestIn, 0, sector};
    g_status[tag] = kStatusUnwritten;
    auto& data = g_ring.desc[3 * tag + 1];
    data.addr = reinterpret_cast<uint64_t>(buffer);
    data.len = bytes;
    data.flags = static_cast<uint16_t>(kernel::kDescNext | (write ? 0 : kernel::kDescWrite));
    g_driver.in_flight[tag] = true;
    g_ring.avail.ring[g_driver.avail_index % g_driver.size] = static_cast<uint16_t>(3 * tag);
    ++g_driver.avail_index;
    compiler_barrier(); // descriptors and ring entry before the index (x86 keeps stores in order)
    *reinterpret_cast<volatile uint16_t*>(&g_ring.avail.idx) = g_driver.avail_index;
}

void block_kick() {
    // The index store must be visible before the device's suppression state is read (virtio 1.2, 2.7.13.5).
    asm volatile("mfence" ::: "memory");
    if (g_driver.event_index) {
        // Notify only if the device's avail_event lies among the entries added since the last notification.
        const uint16_t event = *avail_event_slot(g_driver.size);
        const auto added = static_cast<uint16_t>(g_driver.avail_index - g_driver.kicked_at);
        const auto distance = static_cast<uint16_t>(g_driver.avail_index - event - 1);
        g_driver.kicked_at = g_driver.avail_index;
        if (distance >= added) return;
    } else if ((*reinterpret_cast<volatile uint16_t*>(&g_ring.used.flags) & kernel::kUsedNoNotify) != 0) {
        return;
    }
    *reinterpret_cast<volatile uint16_t*>(g_driver.notify_address) = 0; // queue 0
    ++g_driver.kicks;
}

size_t block_reap(BlockCompletion* out, size_t capacity, uint64_t timeout_ticks) {
    const uint64_t deadline = read_ticks() + timeout_ticks;
    for (;;) {
        if (g_driver.wait == BlockWait::Interrupt) {
            // As a driver that runs with interrupts on: completions are collected in response to the
            // device's interrupt, never before it. An interrupt that came while this vCPU had them off
            // (the sync engine completes inside the kick's exit) is taken here; otherwise halt for one.
            asm volatile("sti\n\tnop\n\tcli" ::: "memory");
            bool collect = vmmlab_device_interrupts != g_driver.interrupts_seen;
            g_driver.interrupts_seen = vmmlab_device_interrupts;
            if (g_driver.event_index) {
                // Ask for an interrupt at the next unseen entry, then look again: an entry the device
                // pushed before it could see this used_event brings no interrupt (2.7.10).
                *used_event_slot(g_driver.size) = g_driver.used_seen;
                asm volatile("mfence" ::: "memory");
                collect = collect || used_index() != g_driver.used_seen;
            }
            if (collect) {
                const size_t count = harvest(out, capacity);
                if (count > 0) return count;
            }
        } else {
            const size_t count = harvest(out, capacity);
            if (count > 0) return count;
        }
        if (read_ticks() > deadline) {
            Line line;
            line.put("no completion within ").put_u64(timeout_ticks / (tick_hz() / 1000)).put(" ms; ");
            line.put(g_driver.wait == BlockWait::Interrupt ? "interrupts " : "polling; interrupts ");
            line.put_u64(vmmlab_device_interrupts - g_driver.interrupts_at_open).put(", timer ticks ");
            line.put_u64(vmmlab_timer_count);
            if (g_driver.wait == BlockWait::Interrupt && used_index() != g_driver.used_seen)
                line.put("; completions wait in the used ring, but no interrupt announced them");
            device_panic(line);
        }
        if (g_driver.wait == BlockWait::Interrupt)
            vmmlab_safe_halt(); // sti; hlt: the device's MSI-X message (or the watchdog timer) wakes us
        else
            cpu_relax();
    }
}

uint64_t block_kicks() {
    return g_driver.kicks;
}

uint64_t block_interrupts() {
    return vmmlab_device_interrupts - g_driver.interrupts_at_open;
}

void block_close() {
    if (!g_driver.open) return;
    Line ignored;
    (void)g_driver.pci.reset(ignored);
    apic_stop();
    g_driver.open = false;
}

} // namespace vmmlab::guest::platform
