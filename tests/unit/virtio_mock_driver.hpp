// A mock virtio driver for unit tests: it owns a vector-backed guest RAM and lays out a split virtqueue
// the way Linux's virtio_ring does (descriptor table, then the available ring right after it, the used
// ring at the next 4 KiB boundary), allocates descriptors from a free list, chains buffers with NEXT,
// publishes heads in the available ring and reads back the used ring. Raw writers let tests build
// malformed rings on purpose.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <span>
#include <stdexcept>
#include <vector>

#include "devices/virtio/virtqueue.hpp"
#include "memory/guest_memory.hpp"

namespace vmmlab::testing {

struct MockBuffer {
    std::uint64_t address;
    std::uint32_t length;
    bool writable;
};

struct MockDescriptor {
    std::uint64_t address;
    std::uint32_t length;
    std::uint16_t flags;
    std::uint16_t next;
};

class MockRam {
public:
    // Page-aligned host memory, zeroed, like an anonymous mapping (O_DIRECT tests rely on the alignment).
    explicit MockRam(std::size_t size = 1 << 20)
        : storage_(new (std::align_val_t{4096}) std::byte[size]()), bytes_(storage_.get(), size),
          memory_({{GuestAddress{0}, size, bytes_.data()}}) {}
    const GuestMemory& memory() const { return memory_; }
    std::span<std::byte> bytes() { return bytes_; }
    template <typename T>
    void put(std::uint64_t address, const T& value) {
        if (address + sizeof(T) > bytes_.size()) throw std::out_of_range("MockRam::put");
        std::memcpy(bytes_.data() + address, &value, sizeof(T));
    }
    template <typename T>
    T get(std::uint64_t address) const {
        if (address + sizeof(T) > bytes_.size()) throw std::out_of_range("MockRam::get");
        T value;
        std::memcpy(&value, bytes_.data() + address, sizeof(T));
        return value;
    }
    void fill(std::uint64_t address, std::size_t length, std::byte value) {
        std::memset(bytes_.data() + address, static_cast<int>(value), length);
    }

private:
    struct AlignedDelete {
        void operator()(std::byte* pointer) const { ::operator delete[](pointer, std::align_val_t{4096}); }
    };
    std::unique_ptr<std::byte[], AlignedDelete> storage_;
    std::span<std::byte> bytes_;
    GuestMemory memory_;
};

class MockDriver {
public:
    MockDriver(MockRam& ram, std::uint16_t size, std::uint64_t base = 0x1000) : ram_(ram), size_(size) {
        layout_.size = size;
        layout_.descriptor_table = GuestAddress{base};
        layout_.available_ring = GuestAddress{base + 16ULL * size};
        const std::uint64_t available_end = layout_.available_ring.value + 6 + 2ULL * size;
        layout_.used_ring = GuestAddress{(available_end + 0xfff) & ~0xfffULL};
        for (std::uint16_t i = 0; i < size; ++i)
            free_.push_back(static_cast<std::uint16_t>(size - 1 - i));
    }

    const virtio::QueueLayout& layout() const { return layout_; }
    std::uint64_t end() const { return layout_.used_ring.value + 6 + 8ULL * size_; }

    // Both rings start at `index` (as after many round trips); call Virtqueue::set_indices(index, index).
    void start_at(std::uint16_t index) {
        available_index_ = index;
        ram_.put<std::uint16_t>(layout_.available_ring.value + 2, index);
        ram_.put<std::uint16_t>(layout_.used_ring.value + 2, index);
        last_used_ = index;
    }

    void write_descriptor(std::uint16_t index, const MockDescriptor& descriptor) {
        ram_.put(layout_.descriptor_table.value + 16ULL * index, descriptor);
    }
    // Publishes `head` in the next available slot and bumps the available index.
    void publish(std::uint16_t head) {
        ram_.put<std::uint16_t>(layout_.available_ring.value + 4 + 2ULL * (available_index_ % size_), head);
        ++available_index_;
        ram_.put<std::uint16_t>(layout_.available_ring.value + 2, available_index_);
    }
    void set_available_index(std::uint16_t index) {
        available_index_ = index;
        ram_.put<std::uint16_t>(layout_.available_ring.value + 2, index);
    }

    // Chains `buffers` through free descriptors and publishes the head; returns it.
    std::uint16_t add_chain(const std::vector<MockBuffer>& buffers) {
        if (buffers.size() > free_.size()) throw std::runtime_error("MockDriver: ring full");
        std::vector<std::uint16_t> indices;
        for (std::size_t i = 0; i < buffers.size(); ++i) {
            indices.push_back(free_.back());
            free_.pop_back();
        }
        for (std::size_t i = 0; i < buffers.size(); ++i) {
            const bool last = i + 1 == buffers.size();
            write_descriptor(
                indices[i], {buffers[i].address, buffers[i].length,
                             static_cast<std::uint16_t>((buffers[i].writable ? virtio::kDescriptorWrite : 0) |
                                                        (last ? 0 : virtio::kDescriptorNext)),
                             last ? std::uint16_t{0} : indices[i + 1]});
        }
        publish(indices.front());
        return indices.front();
    }

    // Writes an indirect table for `buffers` at `table` and publishes one INDIRECT descriptor for it.
    std::uint16_t add_indirect_chain(std::uint64_t table, const std::vector<MockBuffer>& buffers) {
        for (std::size_t i = 0; i < buffers.size(); ++i) {
            const bool last = i + 1 == buffers.size();
            ram_.put(table + 16 * i, MockDescriptor{buffers[i].address, buffers[i].length,
                                                    static_cast<std::uint16_t>(
                                                        (buffers[i].writable ? virtio::kDescriptorWrite : 0) |
                                                        (last ? 0 : virtio::kDescriptorNext)),
                                                    static_cast<std::uint16_t>(last ? 0 : i + 1)});
        }
        const std::uint16_t head = free_.back();
        free_.pop_back();
        write_descriptor(
            head, {table, static_cast<std::uint32_t>(16 * buffers.size()), virtio::kDescriptorIndirect, 0});
        publish(head);
        return head;
    }

    struct UsedElement {
        std::uint32_t id;
        std::uint32_t length;
    };
    std::uint16_t used_index() const { return ram_.get<std::uint16_t>(layout_.used_ring.value + 2); }
    std::uint16_t used_flags() const { return ram_.get<std::uint16_t>(layout_.used_ring.value); }
    std::uint16_t avail_event() const {
        return ram_.get<std::uint16_t>(layout_.used_ring.value + 4 + 8ULL * size_);
    }
    UsedElement used_element(std::uint16_t index) const {
        return ram_.get<UsedElement>(layout_.used_ring.value + 4 + 8ULL * (index % size_));
    }
    // Collects used elements the device added since the last call, returning their descriptors to the free
    // list.
    std::vector<UsedElement> take_used() {
        std::vector<UsedElement> out;
        while (last_used_ != used_index()) {
            const UsedElement element = used_element(last_used_++);
            out.push_back(element);
            release(static_cast<std::uint16_t>(element.id));
        }
        return out;
    }
    void set_used_event(std::uint16_t value) {
        ram_.put<std::uint16_t>(layout_.available_ring.value + 4 + 2ULL * size_, value);
    }
    void set_available_flags(std::uint16_t flags) {
        ram_.put<std::uint16_t>(layout_.available_ring.value, flags);
    }

private:
    void release(std::uint16_t head) {
        std::uint16_t index = head;
        for (std::uint16_t hops = 0; hops < size_; ++hops) {
            const auto descriptor = ram_.get<MockDescriptor>(layout_.descriptor_table.value + 16ULL * index);
            free_.push_back(index);
            if (!(descriptor.flags & virtio::kDescriptorNext)) break;
            index = descriptor.next;
        }
    }

    MockRam& ram_;
    std::uint16_t size_;
    virtio::QueueLayout layout_;
    std::vector<std::uint16_t> free_;
    std::uint16_t available_index_ = 0;
    std::uint16_t last_used_ = 0;
};

} // namespace vmmlab::testing
