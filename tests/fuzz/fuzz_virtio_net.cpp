// Runs guest-built virtio-net rings against the device over a socketpair backend. Input: byte 0 = feature
// flags (bit 0 INDIRECT_DESC, bit 1 EVENT_IDX, bit 2 MRG_RXBUF, bit 3 the host offloads CSUM/HOST_TSO4/6/
// HOST_ECN, bit 4 the guest offloads GUEST_CSUM/GUEST_TSO4/6/GUEST_ECN), bytes 1-2 = the length of a frame
// the backend delivers (little-endian, at most 8192), then that frame (vnet header first), then the first
// bytes of 256 KiB of guest RAM holding two 16-entry queues: receive (descriptors 0x0, available 0x100,
// used 0x200) and transmit (0x1000, 0x1100, 0x1200). The device must transmit, receive, drop or break a
// queue, and never crash or write outside guest RAM.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include <sys/socket.h>

#include "devices/virtio/net.hpp"

namespace {
class NullSignals final : public vmmlab::virtio::DeviceSignals {
public:
    void used_buffers(std::uint16_t) override {}
    void config_changed() override {}
    void needs_reset() override {}
};
} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace vmmlab;
    using namespace vmmlab::virtio;
    static std::vector<std::byte> ram(0x40000);
    static const GuestMemory memory({{GuestAddress{0}, ram.size(), ram.data()}});
    if (size < 3) return 0;
    const std::uint8_t flags = data[0];
    const std::size_t frame_length =
        std::min<std::size_t>({std::size_t{data[1]} | std::size_t{data[2]} << 8, 8192, size - 3});
    const std::uint8_t* frame = data + 3;
    const std::uint8_t* image = frame + frame_length;
    const std::size_t image_length = size - 3 - frame_length;
    std::fill(ram.begin(), ram.end(), std::byte{0});
    std::memcpy(ram.data(), image, std::min(image_length, ram.size()));

    auto owned = std::make_unique<DatagramSocketBackend>(false); // a full socket drops, never blocks
    const int peer = owned->peer();
    VirtioNet device(std::move(owned), NetOptions{.queue_size = 16});
    std::uint64_t features =
        1ULL << kFeatureVersion1 | 1ULL << net::kFeatureMac | 1ULL << net::kFeatureStatus;
    if (flags & 1) features |= 1ULL << kFeatureRingIndirectDesc;
    if (flags & 2) features |= 1ULL << kFeatureRingEventIdx;
    if (flags & 4) features |= 1ULL << net::kFeatureMergeableRxBuffers;
    if (flags & 8)
        features |= 1ULL << net::kFeatureCsum | 1ULL << net::kFeatureHostTso4 |
                    1ULL << net::kFeatureHostTso6 | 1ULL << net::kFeatureHostEcn;
    if (flags & 16)
        features |= 1ULL << net::kFeatureGuestCsum | 1ULL << net::kFeatureGuestTso4 |
                    1ULL << net::kFeatureGuestTso6 | 1ULL << net::kFeatureGuestEcn;
    std::vector<Virtqueue> queues;
    for (std::uint64_t base : {0x0ULL, 0x1000ULL}) {
        auto queue = Virtqueue::activate(
            memory, {16, GuestAddress{base}, GuestAddress{base + 0x100}, GuestAddress{base + 0x200}},
            features);
        if (!queue) __builtin_trap();
        queues.push_back(std::move(*queue));
    }
    NullSignals signals;
    if (!device.activate(Activation{memory, features, std::move(queues), signals})) __builtin_trap();

    // Transmit: what does not fit the socket's queue is dropped.
    device.notify(net::kTransmitQueue);
    std::vector<std::byte> sink(net::kMaxFrameBytes);
    while (::recv(peer, sink.data(), sink.size(), MSG_DONTWAIT) >= 0) {
    }
    // Receive: one frame from the backend, placed on this thread.
    if (::send(peer, frame, frame_length, 0) < 0) __builtin_trap();
    device.notify(net::kReceiveQueue);
    device.receive_now();
    device.reset();
    return 0;
}
