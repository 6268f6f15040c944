// Pops descriptor chains from a split virtqueue whose guest memory and indices come from the fuzzer.
// Input: byte 0 = log2 of the queue size (0..7), byte 1 = feature flags (bit 0 INDIRECT_DESC, bit 1
// EVENT_IDX), bytes 2-3 = the device's starting index, the rest = the first bytes of 64 KiB of guest RAM.
// Rings: descriptor table at 0x0, available ring at 0x800, used ring at 0x1000. Every popped span is
// touched at both ends (ASan checks it lies in RAM); popping stops at an empty ring or an error, and an
// error must break the queue.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "devices/virtio/virtqueue.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace vmmlab;
    static std::vector<std::byte> ram(0x10000);
    static const GuestMemory memory({{GuestAddress{0}, ram.size(), ram.data()}});
    if (size < 4) return 0;
    const auto queue_size = static_cast<std::uint16_t>(1u << (data[0] & 7));
    std::uint64_t features = 0;
    if (data[1] & 1) features |= 1ULL << virtio::kFeatureRingIndirectDesc;
    if (data[1] & 2) features |= 1ULL << virtio::kFeatureRingEventIdx;
    std::uint16_t start;
    std::memcpy(&start, data + 2, 2);
    std::fill(ram.begin(), ram.end(), std::byte{0});
    std::memcpy(ram.data(), data + 4, std::min(size - 4, ram.size()));

    auto queue = virtio::Virtqueue::activate(
        memory, {queue_size, GuestAddress{0}, GuestAddress{0x800}, GuestAddress{0x1000}}, features);
    if (!queue) __builtin_trap(); // this layout always fits
    queue->set_indices(start, start);
    virtio::DescriptorChain chain;
    for (int round = 0; round < 2 * queue_size + 2; ++round) {
        auto popped = queue->pop(chain);
        if (!popped) {
            if (!queue->broken() || popped.error().describe().empty()) __builtin_trap();
            break;
        }
        if (!*popped) break;
        if (chain.readable_bytes + chain.writable_bytes == 0 ||
            chain.readable_bytes + chain.writable_bytes > virtio::kMaxChainBytes)
            __builtin_trap();
        for (const auto& span : chain.readable) {
            volatile std::byte first = span.front();
            volatile std::byte last = span.back();
            (void)first;
            (void)last;
        }
        for (const auto& span : chain.writable) {
            span.front() = std::byte{0xa5};
            span.back() = std::byte{0x5a};
        }
        if (!queue->push_used(chain.head, static_cast<std::uint32_t>(chain.writable_bytes))) __builtin_trap();
        (void)queue->needs_notification();
    }
    (void)queue->enable_notifications();
    return 0;
}
