// The device side of a virtio split virtqueue (virtio 1.2, section 2.7) over GuestMemory.
//
// Layout in guest memory, as the driver sets it up (N = queue size, a power of two, 1..32768):
//   descriptor table  16 * N bytes, 16-byte aligned: {u64 addr, u32 len, u16 flags, u16 next}
//   available ring    6 + 2 * N bytes, 2-byte aligned: {u16 flags, u16 idx, u16 ring[N], u16 used_event}
//   used ring         6 + 8 * N bytes, 4-byte aligned: {u16 flags, u16 idx, {u32 id, u32 len}[N], u16
//   avail_event}
// All fields are little-endian (the host is x86-64, so they are read as they are).
//
// What is checked, and when:
// - At activation (Virtqueue::activate), once: the size, each ring's alignment, and that each ring lies
//   inside one guest RAM region (start and last byte, no overflow). The rings are then held as spans.
// - On every pop: the available index may run at most N ahead of the last one seen (else the driver is
//   broken); the head and every `next` must be below the table size; a chain may visit at most N
//   descriptors (an indirect table at most its own length), so a loop ends in an error; every buffer
//   must lie inside guest RAM (it may cross adjacent regions: it is then split into several spans);
//   readable buffers must all come before writable ones; an indirect descriptor (only with
//   VIRTIO_RING_F_INDIRECT_DESC) must not also have NEXT, must have a length that is a non-zero multiple
//   of 16, must lie in RAM, and its table must not contain indirect descriptors; a chain must carry at
//   least one byte and at most kMaxChainBytes (128 MiB) in total. Zero-length buffers inside a chain
//   are legal and skipped (they produce no span).
// - A descriptor is copied out of guest memory once, then checked and used, so a guest changing it
//   concurrently cannot get an unchecked value past the checks.
//
// A malformed chain makes pop() return a QueueError and marks the queue broken: every later pop() fails
// with QueueErrorKind::Broken until the queue is activated again. The device is expected to count the
// error, log it rate-limited, and set DEVICE_NEEDS_RESET (VirtioInterruptSink::device_needs_reset);
// nothing here throws or logs.
//
// Ordering: the available index is read with acquire semantics before the ring entries and descriptors
// it publishes; used elements are written before the used index is stored with release semantics; a full
// fence separates publishing the used index (or avail_event) from reading the driver's used_event (or
// available index) so a notification is never lost.
//
// Threads: one Virtqueue is used by one thread at a time (the device serialises pop/push). It does not
// allocate on pop/push once the DescriptorChain's vectors have grown to the chain sizes in use.
#pragma once

#include <cstddef>
#include <cstdint>
#include <expected>
#include <span>
#include <string>
#include <vector>

#include "memory/guest_memory.hpp"

namespace vmmlab::virtio {

// Feature bits that concern the ring itself (virtio 1.2, section 6).
inline constexpr unsigned kFeatureRingIndirectDesc = 28;
inline constexpr unsigned kFeatureRingEventIdx = 29;
inline constexpr unsigned kFeatureVersion1 = 32;

// Descriptor flags, ring flags.
inline constexpr std::uint16_t kDescriptorNext = 1;
inline constexpr std::uint16_t kDescriptorWrite = 2;
inline constexpr std::uint16_t kDescriptorIndirect = 4;
inline constexpr std::uint16_t kAvailNoInterrupt = 1; // VRING_AVAIL_F_NO_INTERRUPT
inline constexpr std::uint16_t kUsedNoNotify = 1;     // VRING_USED_F_NO_NOTIFY

inline constexpr std::uint16_t kMaxQueueSize = 32768;
inline constexpr std::uint64_t kMaxChainBytes = 128ULL << 20;
inline constexpr std::uint64_t kDescriptorSize = 16;

// vring_need_event: whether moving the used index from `old_index` to `new_index` passed `event_index`
// (the driver's used_event, or the device's avail_event), all modulo 2^16.
constexpr bool need_event(std::uint16_t event_index, std::uint16_t new_index, std::uint16_t old_index) {
    return static_cast<std::uint16_t>(new_index - event_index - 1) <
           static_cast<std::uint16_t>(new_index - old_index);
}

struct QueueLayout {
    std::uint16_t size = 0;
    GuestAddress descriptor_table;
    GuestAddress available_ring; // the spec's "driver area"
    GuestAddress used_ring;      // the spec's "device area"
};

enum class QueueErrorKind {
    BadSize,               // activation: size 0, not a power of two, or above kMaxQueueSize
    Misaligned,            // activation: a ring is not aligned as the spec requires
    RingOutsideRam,        // activation: a ring is not inside one RAM region
    AvailIndexJump,        // the available index ran more than `size` ahead
    DescriptorIndex,       // a head or `next` index is not below the (indirect) table size
    ChainTooLong,          // more descriptors than the hop limit: a loop
    BufferOutsideRam,      // a buffer (or an indirect table) is not inside RAM
    ReadableAfterWritable, // a device-readable buffer follows a device-writable one
    NestedIndirect,        // an indirect table contains an indirect descriptor
    IndirectWithNext,      // a descriptor has both INDIRECT and NEXT
    IndirectLength,        // an indirect table's length is 0 or not a multiple of 16
    IndirectNotNegotiated, // INDIRECT used without VIRTIO_RING_F_INDIRECT_DESC
    EmptyChain,            // the chain carries no bytes at all
    ChainTooLarge,         // the chain carries more than kMaxChainBytes
    UsedIdOutOfRange,      // push_used with an id not below the queue size (a device bug)
    NotActive,             // pop/push on a queue that was never activated
    Broken,                // an earlier error broke the queue
};

struct QueueError {
    QueueErrorKind kind;
    std::uint16_t head = 0;    // the chain's head index, where one applies
    std::uint64_t address = 0; // the guest address involved, where one applies
    std::uint64_t length = 0;
    // "virtqueue: descriptor chain at head 3: buffer 0x10000+0x20 is outside RAM"
    std::string describe() const;
};

std::string_view to_string(QueueErrorKind kind);

// One popped chain: the guest's buffers as host spans, readable ones first. The spans point into guest
// RAM (nothing is copied) and stay valid as long as the GuestMemory's mappings do. Reuse one object for
// many pops to avoid allocation.
struct DescriptorChain {
    std::uint16_t head = 0;
    std::vector<std::span<std::byte>> readable;
    std::vector<std::span<std::byte>> writable;
    std::uint64_t readable_bytes = 0;
    std::uint64_t writable_bytes = 0;
    std::uint32_t descriptor_count = 0; // descriptors visited (an indirect one and its table's entries)
    void clear();
};

// Copies out.size() bytes from the front of a chain's buffers `spans`, after skipping `skip` bytes (the
// buffers must hold skip + out.size() bytes).
void gather(std::span<const std::span<std::byte>> spans, std::uint64_t skip, std::span<std::byte> out);
// Copies `data` into the front of `spans` (which must hold at least data.size() bytes).
void scatter(std::span<const std::span<std::byte>> spans, std::span<const std::byte> data);

class Virtqueue {
public:
    Virtqueue() = default;

    // Checks the layout against `memory` and returns an active queue whose indices start at 0.
    // `features` are the negotiated feature bits (INDIRECT_DESC and EVENT_IDX are honoured).
    static std::expected<Virtqueue, QueueError> activate(const GuestMemory& memory, const QueueLayout& layout,
                                                         std::uint64_t features);

    bool active() const { return size_ != 0; }
    bool broken() const { return broken_; }
    std::uint16_t size() const { return size_; }
    std::uint16_t next_available() const { return next_available_; }
    std::uint16_t next_used() const { return next_used_; }
    // Restores the indices (a snapshot, or a test that starts near 2^16). The driver's rings must agree.
    void set_indices(std::uint16_t next_available, std::uint16_t next_used);

    // Where the three rings lie in the monitor's address space (for vhost, which walks them in the kernel).
    struct HostRings {
        std::byte* descriptors;
        std::byte* available;
        std::byte* used;
    };
    HostRings host_rings() const { return {descriptors_.data(), available_.data(), used_.data()}; }

    // How many chains the driver has made available and the device has not popped yet.
    std::expected<std::uint16_t, QueueError> pending() const;

    // Pops the next available chain into `chain`: true if one was popped, false if the ring is empty.
    std::expected<bool, QueueError> pop(DescriptorChain& chain);

    // Returns a popped chain to the driver: `written` bytes were written into its writable buffers.
    std::expected<void, QueueError> push_used(std::uint16_t head, std::uint32_t written);

    // After one or more push_used calls: whether the driver wants an interrupt now. With EVENT_IDX, true
    // when the used index passed the driver's used_event since the last call that returned true (or since
    // activation); without it, true unless the driver set VRING_AVAIL_F_NO_INTERRUPT, and false anyway
    // when nothing was pushed since the last true. A true answer resets that reference point.
    bool needs_notification();

    // Notification suppression in the other direction (device to driver). disable: ask the driver not to
    // kick (VRING_USED_F_NO_NOTIFY; with EVENT_IDX nothing needs writing). enable: ask for kicks again
    // (clears the flag, or with EVENT_IDX writes avail_event = next available index), then returns
    // whether chains arrived meanwhile, so the caller processes them instead of waiting for a kick.
    void disable_notifications();
    std::expected<bool, QueueError> enable_notifications();

private:
    std::expected<std::uint16_t, QueueError> available_index() const;
    std::expected<void, QueueError> walk(std::uint16_t head, DescriptorChain& chain);
    std::expected<void, QueueError> add_buffer(std::uint16_t head, std::uint64_t address,
                                               std::uint32_t length, bool writable, DescriptorChain& chain);
    std::unexpected<QueueError> fail(QueueErrorKind kind, std::uint16_t head, std::uint64_t address = 0,
                                     std::uint64_t length = 0);

    const GuestMemory* memory_ = nullptr;
    std::span<std::byte> descriptors_;
    std::span<std::byte> available_;
    std::span<std::byte> used_;
    std::uint16_t size_ = 0;
    bool indirect_ = false;
    bool event_index_ = false;
    bool broken_ = false;
    std::uint16_t next_available_ = 0;
    std::uint16_t next_used_ = 0;
    // The used index up to which the driver has been told (or, with EVENT_IDX, last checked against its
    // used_event). Activation starts both sides at 0, so the initial value is exact.
    std::uint16_t signalled_used_ = 0;
};

} // namespace vmmlab::virtio
