#include "devices/virtio/virtqueue.hpp"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstring>

#include <fmt/format.h>

namespace vmmlab::virtio {

namespace {
struct Descriptor {
    std::uint64_t address;
    std::uint32_t length;
    std::uint16_t flags;
    std::uint16_t next;
};
static_assert(sizeof(Descriptor) == kDescriptorSize);

// Ring field offsets.
constexpr std::size_t kRingFlags = 0;
constexpr std::size_t kRingIndex = 2;
constexpr std::size_t kRingEntries = 4;
constexpr std::size_t kUsedElementSize = 8;

std::uint16_t load_u16(std::span<std::byte> ring, std::size_t offset) {
    std::uint16_t value;
    std::memcpy(&value, ring.data() + offset, sizeof value);
    return value;
}
void store_u16(std::span<std::byte> ring, std::size_t offset, std::uint16_t value) {
    std::memcpy(ring.data() + offset, &value, sizeof value);
}
// The index fields are 2-byte aligned (checked at activation), so they can be accessed atomically.
std::atomic_ref<std::uint16_t> index_ref(std::span<std::byte> ring) {
    return std::atomic_ref<std::uint16_t>(
        *std::launder(reinterpret_cast<std::uint16_t*>(ring.data() + kRingIndex)));
}

Descriptor load_descriptor(std::span<const std::byte> table, std::uint16_t index) {
    Descriptor descriptor;
    std::memcpy(&descriptor, table.data() + std::size_t{index} * kDescriptorSize, sizeof descriptor);
    return descriptor;
}
} // namespace

std::string_view to_string(QueueErrorKind kind) {
    switch (kind) {
    case QueueErrorKind::BadSize:
        return "queue size is 0, not a power of two or above 32768";
    case QueueErrorKind::Misaligned:
        return "ring is misaligned";
    case QueueErrorKind::RingOutsideRam:
        return "ring is outside RAM";
    case QueueErrorKind::AvailIndexJump:
        return "available index ran more than the queue size ahead";
    case QueueErrorKind::DescriptorIndex:
        return "descriptor index out of range";
    case QueueErrorKind::ChainTooLong:
        return "chain exceeds the hop limit (a loop)";
    case QueueErrorKind::BufferOutsideRam:
        return "buffer is outside RAM";
    case QueueErrorKind::ReadableAfterWritable:
        return "readable buffer after a writable one";
    case QueueErrorKind::NestedIndirect:
        return "indirect descriptor inside an indirect table";
    case QueueErrorKind::IndirectWithNext:
        return "indirect descriptor with NEXT";
    case QueueErrorKind::IndirectLength:
        return "indirect table length is 0 or not a multiple of 16";
    case QueueErrorKind::IndirectNotNegotiated:
        return "indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC";
    case QueueErrorKind::EmptyChain:
        return "chain carries no bytes";
    case QueueErrorKind::ChainTooLarge:
        return "chain carries more than 128 MiB";
    case QueueErrorKind::UsedIdOutOfRange:
        return "used element id out of range";
    case QueueErrorKind::NotActive:
        return "queue is not active";
    case QueueErrorKind::Broken:
        return "queue is broken by an earlier error";
    }
    return "unknown error";
}

std::string QueueError::describe() const {
    std::string text = fmt::format("virtqueue: chain at head {}: {}", head, to_string(kind));
    if (address != 0 || length != 0) text += fmt::format(" ({:#x}+{:#x})", address, length);
    return text;
}

void DescriptorChain::clear() {
    head = 0;
    readable.clear();
    writable.clear();
    readable_bytes = 0;
    writable_bytes = 0;
    descriptor_count = 0;
}

std::expected<Virtqueue, QueueError> Virtqueue::activate(const GuestMemory& memory, const QueueLayout& layout,
                                                         std::uint64_t features) {
    const std::uint16_t size = layout.size;
    if (size == 0 || size > kMaxQueueSize || !std::has_single_bit(size))
        return std::unexpected(QueueError{QueueErrorKind::BadSize, 0, 0, size});
    struct Ring {
        GuestAddress address;
        std::uint64_t length;
        std::uint64_t alignment;
        std::span<std::byte>* out;
    };
    Virtqueue queue;
    const Ring rings[] = {
        {layout.descriptor_table, kDescriptorSize * size, 16, &queue.descriptors_},
        {layout.available_ring, 6 + 2ULL * size, 2, &queue.available_},
        {layout.used_ring, 6 + kUsedElementSize * size, 4, &queue.used_},
    };
    for (const Ring& ring : rings) {
        if (ring.address.value % ring.alignment != 0)
            return std::unexpected(
                QueueError{QueueErrorKind::Misaligned, 0, ring.address.value, ring.length});
        auto slice = memory.slice(ring.address, ring.length);
        if (!slice)
            return std::unexpected(
                QueueError{QueueErrorKind::RingOutsideRam, 0, ring.address.value, ring.length});
        *ring.out = *slice;
    }
    queue.memory_ = &memory;
    queue.size_ = size;
    queue.indirect_ = (features >> kFeatureRingIndirectDesc) & 1;
    queue.event_index_ = (features >> kFeatureRingEventIdx) & 1;
    return queue;
}

void Virtqueue::set_indices(std::uint16_t next_available, std::uint16_t next_used) {
    next_available_ = next_available;
    next_used_ = next_used;
    signalled_used_ = next_used;
}

std::unexpected<QueueError> Virtqueue::fail(QueueErrorKind kind, std::uint16_t head, std::uint64_t address,
                                            std::uint64_t length) {
    broken_ = true;
    return std::unexpected(QueueError{kind, head, address, length});
}

std::expected<std::uint16_t, QueueError> Virtqueue::available_index() const {
    if (!active()) return std::unexpected(QueueError{QueueErrorKind::NotActive});
    if (broken_) return std::unexpected(QueueError{QueueErrorKind::Broken});
    // Acquire: the ring entries and descriptors the driver published before this index are visible.
    return index_ref(available_).load(std::memory_order_acquire);
}

std::expected<std::uint16_t, QueueError> Virtqueue::pending() const {
    auto index = available_index();
    if (!index) return std::unexpected(index.error());
    const auto count = static_cast<std::uint16_t>(*index - next_available_);
    if (count > size_) return std::unexpected(QueueError{QueueErrorKind::AvailIndexJump, 0, *index, count});
    return count;
}

std::expected<bool, QueueError> Virtqueue::pop(DescriptorChain& chain) {
    chain.clear();
    auto count = pending();
    if (!count) {
        if (count.error().kind == QueueErrorKind::AvailIndexJump) broken_ = true;
        return std::unexpected(count.error());
    }
    if (*count == 0) return false;
    const std::size_t slot = next_available_ & (size_ - 1u);
    const std::uint16_t head = load_u16(available_, kRingEntries + 2 * slot);
    if (auto walked = walk(head, chain); !walked) return std::unexpected(walked.error());
    ++next_available_;
    return true;
}

std::expected<void, QueueError> Virtqueue::add_buffer(std::uint16_t head, std::uint64_t address,
                                                      std::uint32_t length, bool writable,
                                                      DescriptorChain& chain) {
    if (!writable && !chain.writable.empty())
        return fail(QueueErrorKind::ReadableAfterWritable, head, address, length);
    if (length == 0) return {};
    if (chain.readable_bytes + chain.writable_bytes + length > kMaxChainBytes)
        return fail(QueueErrorKind::ChainTooLarge, head, address, length);
    if (!memory_->contains(GuestAddress{address}, length))
        return fail(QueueErrorKind::BufferOutsideRam, head, address, length);
    auto& spans = writable ? chain.writable : chain.readable;
    // A buffer inside one region is one span; one crossing adjacent regions becomes one span per region.
    std::uint64_t done = 0;
    const auto& regions = memory_->regions();
    while (done < length) {
        const GuestAddress at{address + done};
        auto region = std::ranges::upper_bound(regions, at, {}, &GuestMemory::Region::start);
        --region; // contains() guaranteed a region holds `at`
        const std::uint64_t chunk = std::min<std::uint64_t>(length - done, region->end().value - at.value);
        spans.emplace_back(region->host + (at.value - region->start.value), chunk);
        done += chunk;
    }
    (writable ? chain.writable_bytes : chain.readable_bytes) += length;
    return {};
}

std::expected<void, QueueError> Virtqueue::walk(std::uint16_t head, DescriptorChain& chain) {
    chain.head = head;
    if (head >= size_) return fail(QueueErrorKind::DescriptorIndex, head, head, size_);
    std::uint16_t index = head;
    std::uint32_t hops = 0;
    while (true) {
        if (++hops > size_) return fail(QueueErrorKind::ChainTooLong, head);
        const Descriptor descriptor = load_descriptor(descriptors_, index);
        ++chain.descriptor_count;
        if (descriptor.flags & kDescriptorIndirect) {
            if (!indirect_) return fail(QueueErrorKind::IndirectNotNegotiated, head, descriptor.address);
            if (descriptor.flags & kDescriptorNext)
                return fail(QueueErrorKind::IndirectWithNext, head, descriptor.address, descriptor.length);
            if (descriptor.length == 0 || descriptor.length % kDescriptorSize != 0)
                return fail(QueueErrorKind::IndirectLength, head, descriptor.address, descriptor.length);
            const std::uint32_t count = descriptor.length / kDescriptorSize;
            if (count > kMaxQueueSize)
                return fail(QueueErrorKind::IndirectLength, head, descriptor.address, descriptor.length);
            auto table = memory_->slice(GuestAddress{descriptor.address}, descriptor.length);
            if (!table)
                return fail(QueueErrorKind::BufferOutsideRam, head, descriptor.address, descriptor.length);
            // Walk the indirect table: its own hop limit is its length.
            std::uint32_t at = 0;
            for (std::uint32_t indirect_hops = 1;; ++indirect_hops) {
                if (indirect_hops > count) return fail(QueueErrorKind::ChainTooLong, head);
                const Descriptor entry = load_descriptor(*table, static_cast<std::uint16_t>(at));
                ++chain.descriptor_count;
                if (entry.flags & kDescriptorIndirect)
                    return fail(QueueErrorKind::NestedIndirect, head, entry.address, entry.length);
                if (auto added =
                        add_buffer(head, entry.address, entry.length, entry.flags & kDescriptorWrite, chain);
                    !added)
                    return added;
                if (!(entry.flags & kDescriptorNext)) break;
                if (entry.next >= count)
                    return fail(QueueErrorKind::DescriptorIndex, head, entry.next, count);
                at = entry.next;
            }
            break; // an indirect descriptor ends the chain (it cannot have NEXT)
        }
        if (auto added = add_buffer(head, descriptor.address, descriptor.length,
                                    descriptor.flags & kDescriptorWrite, chain);
            !added)
            return added;
        if (!(descriptor.flags & kDescriptorNext)) break;
        if (descriptor.next >= size_)
            return fail(QueueErrorKind::DescriptorIndex, head, descriptor.next, size_);
        index = descriptor.next;
    }
    if (chain.readable_bytes + chain.writable_bytes == 0) return fail(QueueErrorKind::EmptyChain, head);
    return {};
}

std::expected<void, QueueError> Virtqueue::push_used(std::uint16_t head, std::uint32_t written) {
    if (!active()) return std::unexpected(QueueError{QueueErrorKind::NotActive});
    if (head >= size_) return std::unexpected(QueueError{QueueErrorKind::UsedIdOutOfRange, head});
    const std::size_t slot = next_used_ & (size_ - 1u);
    const std::uint32_t element[2] = {head, written};
    std::memcpy(used_.data() + kRingEntries + kUsedElementSize * slot, element, sizeof element);
    ++next_used_;
    // Release: the element is visible before the index that publishes it.
    index_ref(used_).store(next_used_, std::memory_order_release);
    return {};
}

bool Virtqueue::needs_notification() {
    if (!active()) return false;
    // The used index store must be visible before we read the driver's suppression state, or the driver
    // may decide not to be woken while we decide not to wake it (the store-load case needs a full fence).
    std::atomic_thread_fence(std::memory_order_seq_cst);
    const std::uint16_t old_used = signalled_used_;
    if (old_used == next_used_) return false; // nothing pushed since the reference point
    bool notify;
    if (event_index_) {
        const std::uint16_t used_event = load_u16(available_, kRingEntries + 2ULL * size_);
        notify = need_event(used_event, next_used_, old_used);
    } else {
        notify = !(load_u16(available_, kRingFlags) & kAvailNoInterrupt);
    }
    // With EVENT_IDX the reference point moves on every check (as Linux's vhost does): the driver's
    // used_event refers to entries seen since then. Without it, only a notification moves it.
    if (notify || event_index_) signalled_used_ = next_used_;
    return notify;
}

void Virtqueue::disable_notifications() {
    if (!active() || event_index_) return;
    store_u16(used_, kRingFlags, static_cast<std::uint16_t>(load_u16(used_, kRingFlags) | kUsedNoNotify));
}

std::expected<bool, QueueError> Virtqueue::enable_notifications() {
    if (!active()) return std::unexpected(QueueError{QueueErrorKind::NotActive});
    if (event_index_)
        store_u16(used_, kRingEntries + kUsedElementSize * size_, next_available_);
    else
        store_u16(used_, kRingFlags,
                  static_cast<std::uint16_t>(load_u16(used_, kRingFlags) & ~kUsedNoNotify));
    // Publish the request for kicks before re-reading the available index.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    auto count = pending();
    if (!count) return std::unexpected(count.error());
    return *count != 0;
}

void gather(std::span<const std::span<std::byte>> spans, std::uint64_t skip, std::span<std::byte> out) {
    std::size_t done = 0;
    for (const auto& span : spans) {
        if (done == out.size()) break;
        if (skip >= span.size()) {
            skip -= span.size();
            continue;
        }
        const std::size_t chunk = std::min<std::size_t>(span.size() - skip, out.size() - done);
        std::memcpy(out.data() + done, span.data() + skip, chunk);
        done += chunk;
        skip = 0;
    }
}

void scatter(std::span<const std::span<std::byte>> spans, std::span<const std::byte> data) {
    std::size_t done = 0;
    for (const auto& span : spans) {
        if (done == data.size()) break;
        const std::size_t chunk = std::min(span.size(), data.size() - done);
        std::memcpy(span.data(), data.data() + done, chunk);
        done += chunk;
    }
}

} // namespace vmmlab::virtio
