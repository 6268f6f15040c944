// What a workload needs from the place it runs in. Two implementations: the guest kernel
// (guest/kernel/platform_guest.cpp: serial port, BootInfo memory, vCPUs) and the host
// (guest/native/platform_native.cpp: stdout, aligned_alloc, threads). Workload sources include only this.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "guest/workloads/text.hpp"

namespace vmmlab::guest::platform {

// "the vmmlab guest" or "vmmlab-native": who says hello; and what its CPUs are called ("vCPUs", "CPUs").
Text name();
Text cpu_noun();

// Writes text as is (the caller adds the newline). Only one CPU writes at a time by convention: the
// boot CPU / main thread.
void write(Text text);

// The next byte of input (the serial port / stdin), waiting up to `timeout_ticks`; -1 on timeout or at
// the end of input.
int read_byte(uint64_t timeout_ticks);

// Ends the run with a panic: prints `message` and exits with status 70 (kExitPanic).
[[noreturn]] void fail(Text message);

// Time-stamp counter ticks per second. `tick_rate_known` is false where it had to be assumed.
uint64_t tick_hz();
bool tick_rate_known();

// CPUs that can run work (vCPUs that checked in / host threads), and how many were expected.
unsigned cpu_count();
unsigned cpus_expected();

// RAM for hello's report, and the page size that maps it (the guest's identity-map leaf size).
uint64_t memory_bytes();
uint64_t page_size();

// Workload memory: nullptr when it does not fit. `alignment` is a power of two.
void* allocate(size_t bytes, size_t alignment);
void release(void* memory);
// The biggest block allocate() could hand out now, for error messages; 0 when unknown.
uint64_t largest_free_block();

// Runs job(context, index, count) on CPUs 0..count-1 at once (the caller's CPU is index 0) and returns
// when all are done. count <= cpu_count().
using Job = void (*)(void* context, unsigned index, unsigned count);
void run_on_cpus(unsigned count, Job job, void* context);

// The VM-exit microbenchmarks. Only the guest can make most of these exits; natively the measurement
// reports supported = false with a note (CPUID is the exception: it is timed natively as well).
enum class ExitKind { Pio, PioIoeventfd, Mmio, Cpuid, Hypercall, Hlt };

struct ExitRequest {
    ExitKind kind = ExitKind::Pio;
    uint64_t iterations = 0;
    uint64_t budget_ticks = 0; // stop early (completed < iterations) once this much time has passed
    uint64_t timer_ticks = 0;  // Hlt: LAPIC timer initial count (divide by 1)
};

struct ExitMeasurement {
    bool supported = false;
    uint64_t completed = 0; // round trips timed
    uint64_t ticks = 0;     // TSC ticks for all of them
    Text note;              // why not supported, or which instruction was used
    int64_t detail = 0;     // Hypercall: the RAX the hypervisor returned; Hlt: wake-ups inside the STI shadow
};

ExitMeasurement measure_exits(const ExitRequest& request);

// Raises a CPU exception on purpose (the `fault` workload, to test fault reporting): "ud" invalid opcode,
// "pf" page fault, "gp" general protection, "de" divide error. Returns only where it cannot (natively, or
// an unknown type): false.
bool raise_exception(Text type);

// Whether the ioeventfd bench port is really bound to an ioeventfd (BootInfo flag).
bool ioeventfd_bound();

// Block devices, for the `blk` workload. The guest drives its virtio-blk PCI functions (1AF4:1042 on bus 0,
// numbered in slot order; guest/kernel/virtio_blk.cpp); natively there is none (block_open says why).
// One device is open at a time. Requests are tagged 0..queue_depth-1; a tag is reused only after its
// completion came back. Buffers are the caller's and must stay put until then.
enum class BlockWait { Interrupt, Poll };

struct BlockOpen {
    unsigned disk = 0;
    unsigned queue_depth = 1;
    BlockWait wait = BlockWait::Interrupt;
    bool event_index =
        false; // negotiate VIRTIO_F_EVENT_IDX: kicks and interrupts only when the other side asked
};

struct BlockInfo {
    uint64_t sectors = 0;   // capacity in 512-byte sectors
    bool read_only = false; // the device offered VIRTIO_BLK_F_RO
    unsigned max_queue_depth = 0;
    uint16_t queue_size = 0; // descriptors in the virtqueue
    Text transport;          // e.g. "virtio-pci 00:01.0"
};

struct BlockCompletion {
    uint16_t tag = 0;
    uint8_t status = 0; // 0 OK, 1 IOERR, 2 UNSUPP (virtio-blk status values)
};

inline constexpr uint8_t kBlockStatusOk = 0;
inline constexpr uint8_t kBlockStatusIoError = 1;

// False where there are no block devices at all (natively); block_open's error says why.
bool block_supported();
// Finds and initialises the device; false with `error` set (one line) when it cannot.
bool block_open(const BlockOpen& request, BlockInfo& info, Line& error);
// Queues a read (write = false) or write of `bytes` (a multiple of 512) at `sector` for `tag`; the device
// sees it at the next block_kick().
void block_submit(uint16_t tag, bool write, uint64_t sector, void* buffer, uint32_t bytes);
void block_kick();
// Collects finished requests into `out` (at most `capacity`), waiting for at least one: with Interrupt,
// halted until the device's MSI-X interrupt; with Poll, spinning on the used ring. Panics after
// `timeout_ticks` without one, naming the device's state.
size_t block_reap(BlockCompletion* out, size_t capacity, uint64_t timeout_ticks);
// Interrupts taken from the device since block_open.
uint64_t block_interrupts();
// Queue notifications (writes to the notify register) since block_open.
uint64_t block_kicks();
// Resets the device (it stops using guest memory).
void block_close();

// Network devices, for the `net` workload. The guest drives its first virtio-net PCI function (1AF4:1041 on
// bus 0; guest/kernel/virtio_net.cpp) with VERSION_1 (+ MAC where offered), polling its used rings;
// natively there is none (net_open says why). Frames are whole Ethernet frames without the virtio header.
inline constexpr size_t kNetMaxFrameBytes = 1514; // Ethernet header + 1500 bytes of payload

struct NetInfo {
    uint8_t mac[6] = {};
    bool device_mac = false; // the device offered VIRTIO_NET_F_MAC (else a fixed locally administered one)
    uint16_t queue_size = 0; // descriptors in each of the receive and transmit queues
    Text transport;          // e.g. "virtio-net 00:01.0"
};

// False where there are no network devices at all (natively); net_open's error says why.
bool net_supported();
// Finds and initialises the first virtio-net device; false with `error` set (one line) when it cannot.
bool net_open(NetInfo& info, Line& error);
// Queues one frame (at most kNetMaxFrameBytes) for transmission and notifies the device; waits up to
// `timeout_ticks` for a free transmit slot and panics (naming the device's state) if none comes.
void net_send(const void* frame, size_t bytes, uint64_t timeout_ticks);
// Copies the next received frame into `buffer` and returns its length (frames longer than `capacity` are
// cut), waiting up to `timeout_ticks`; 0 when none came in time.
size_t net_receive(void* buffer, size_t capacity, uint64_t timeout_ticks);
// Frames handed to the device for transmission since net_open.
uint64_t net_frames_sent();
// Resets the device (it stops using guest memory).
void net_close();

} // namespace vmmlab::guest::platform
