// The kernel's vhost-net as the data path of a VirtioNet: /dev/vhost-net is given the guest's memory map
// (VHOST_SET_MEM_TABLE: guest-physical ranges and where they lie in this process), both rings of both
// queues (VHOST_SET_VRING_NUM/BASE/ADDR), an eventfd per queue that the guest's kicks signal
// (VHOST_SET_VRING_KICK) and one it signals for interrupts (VHOST_SET_VRING_CALL), and the tap
// (VHOST_NET_SET_BACKEND); from then on the kernel moves frames between the rings and the tap, and the
// monitor sees neither. The tap keeps its 12-byte vnet header (so vhost adds none:
// VHOST_NET_F_VIRTIO_NET_HDR is not negotiated) and vhost fills num_buffers.
//
// One VhostNet serves one activation: start() once, and the descriptor's close (the destructor) stops
// the kernel's worker and waits for it, after which guest memory is no longer touched.
#pragma once

#include <cstdint>
#include <expected>
#include <memory>
#include <span>
#include <string>

#include "base/unique_fd.hpp"
#include "devices/virtio/virtqueue.hpp"
#include "memory/guest_memory.hpp"

namespace vmmlab::virtio {

class VhostNet {
public:
    // Opens /dev/vhost-net and takes ownership (VHOST_SET_OWNER). Errors are one line, e.g.
    // "vhost-net: /dev/vhost-net: No such file or directory (is the vhost_net module loaded?)".
    static std::expected<std::unique_ptr<VhostNet>, std::string> open();

    // The feature bits the kernel's vhost-net handles (ring layout, MRG_RXBUF, VERSION_1...).
    std::uint64_t features() const { return features_; }

    // Hands the data path to the kernel: `features` as negotiated (only those vhost handles are passed
    // on), the queues (receive 0, transmit 1) as activated, one kick and one call eventfd per queue, and
    // the tap's descriptor.
    std::expected<void, std::string> start(const GuestMemory& memory, std::uint64_t features,
                                           std::span<const Virtqueue> queues, std::span<const int> kick_fds,
                                           std::span<const int> call_fds, int tap_fd);

private:
    VhostNet(UniqueFd fd, std::uint64_t features) : fd_(std::move(fd)), features_(features) {}
    UniqueFd fd_;
    std::uint64_t features_;
};

} // namespace vmmlab::virtio
