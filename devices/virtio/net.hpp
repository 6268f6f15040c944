// virtio-net (virtio 1.2, 5.1) over a NetBackend (a tap device, or a datagram socket in tests).
//
// Features offered: VERSION_1, RING_INDIRECT_DESC, RING_EVENT_IDX, MAC, STATUS, MRG_RXBUF, and the
// offloads the kernel does for us behind a tap: CSUM, HOST_TSO4/6, HOST_ECN (the guest may send
// partially checksummed and TCP-segmentation frames; the tap's kernel side finishes them) and
// GUEST_CSUM, GUEST_TSO4/6, GUEST_ECN (the tap hands us such frames once TUNSETOFFLOAD allows it, which
// follows what the driver accepted). Not offered: UFO/USO, MTU, CTRL_VQ (so no runtime offload, filter
// or MAC changes), MQ. Configuration: mac, status (LINK_UP), max_virtqueue_pairs = 1; 10 bytes, and
// writes to it are ignored.
//
// Queues: 0 receive, 1 transmit. Every frame has a 12-byte virtio_net_hdr_v1 in front, passed to and
// from the backend as it is, except num_buffers, which the device sets on receive.
//
// Transmit: notify(1) runs on the caller's thread (a vCPU or an I/O thread): it pops chains, checks the
// header against the negotiated features (a gso_type or NEEDS_CSUM the driver did not negotiate is a
// bad frame), writes header and data to the backend straight from guest memory, returns each chain with
// used length 0 and raises one interrupt per batch (when the driver wants it). At most kTxBurst chains
// per call; if more are waiting the internal thread carries on, so a guest cannot hold its vCPU in the
// device forever and no kick is lost. A frame the backend has no room for is dropped and counted
// (tx_dropped); one it refuses (EINVAL: a header the host stack rejects) is counted as tx_errors.
//
// Receive: an internal thread polls the backend, a stop eventfd and a kick eventfd (notify(0) writes
// it). It reads a frame into a bounce buffer (up to 64 KiB + header) and places it in the receive ring:
// with MRG_RXBUF, in as many chains as it needs, num_buffers set to their count; without it, in one
// chain, num_buffers = 1 (the driver then posts 64 KiB chains when it accepts GUEST_TSO, 1526 bytes
// otherwise). When the ring has no chain left the frame waits in the bounce buffer and the thread stops
// reading the backend (frames wait in the tap's queue, none is dropped here) until the driver adds
// buffers and kicks. A frame larger than the chain it gets (without MRG_RXBUF), or one that would need
// more chains than the ring can ever hold, is dropped and counted (rx_dropped), its chains returned
// with used length 0. Interrupts are batched: one check per round of at most kRxBurst frames.
//
// vhost-net (vhost=on): at activation the kernel gets the memory map, the rings, a kick and a call eventfd
// per queue and the tap (devices/virtio/vhost_net.hpp), and does all of the above itself; the features
// offered drop any ring feature the kernel's vhost lacks. The kick and call eventfds are the transport's
// (Activation::kick_fds, call_fds: ioeventfd and irqfd, consumes_kicks() is true) where it has them;
// where it has not (-1), the device bridges with eventfds of its own: notify(q) signals q's kick
// eventfd, and its thread turns a call into DeviceSignals::used_buffers(q). So vhost works with every
// I/O-path knob, and with ioeventfd + irqfd no exit and no monitor thread is on the data path. reset()
// closes the vhost descriptor (the kernel stops and flushes its worker); the next activation opens a
// new one.
//
// A malformed ring (any Virtqueue error) is counted, logged rate-limited, and the device asks the
// transport for DEVICE_NEEDS_RESET; it stops serving that queue until reset. Nothing a guest writes can
// make the device crash, hang, or touch memory outside guest RAM.
//
// Threads and locks: tx_mutex_ guards the transmit queue and its counters, rx_mutex_ the receive queue,
// the receive state and its counters; activate() and reset() take both (tx first). DeviceSignals calls
// happen with one of them held.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "base/rate_limit.hpp"
#include "base/unique_fd.hpp"
#include "devices/virtio/net_backend.hpp"
#include "devices/virtio/vhost_net.hpp"
#include "devices/virtio/virtio_device.hpp"

namespace vmmlab::virtio {

namespace net {
inline constexpr std::uint16_t kStatusLinkUp = 1;
inline constexpr std::uint16_t kReceiveQueue = 0;
inline constexpr std::uint16_t kTransmitQueue = 1;
// A frame from the backend: header + up to 64 KiB of GSO frame (65535 + Ethernet and VLAN headers).
inline constexpr std::size_t kMaxFrameBytes = kHeaderBytes + 65535 + 14 + 4;
inline constexpr unsigned kTxBurst = 256;
inline constexpr unsigned kRxBurst = 256;

// struct virtio_net_config, the fields this device has.
struct Config {
    std::uint8_t mac[6];
    std::uint16_t status;
    std::uint16_t max_virtqueue_pairs;
};
inline constexpr std::size_t kConfigBytes = 10;
static_assert(sizeof(Config) == kConfigBytes);
} // namespace net

struct NetOptions {
    net::MacAddress mac{0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
    std::uint16_t queue_size = 256;
};

struct NetStats {
    std::uint64_t tx_packets = 0;
    std::uint64_t tx_bytes = 0;   // frame bytes, headers not counted
    std::uint64_t tx_dropped = 0; // the backend had no room
    std::uint64_t tx_errors = 0;  // bad chains (no header, too large, header not negotiated) or refused
    std::uint64_t rx_packets = 0;
    std::uint64_t rx_bytes = 0;
    std::uint64_t rx_dropped = 0; // did not fit the guest's buffers, or were in hand at a reset
    std::uint64_t rx_errors = 0;  // runt frames from the backend, read errors, unusable rx chains
    std::uint64_t rx_waits = 0;   // times receive stopped because the driver had no buffers
    std::uint64_t ring_errors = 0;
};

class VirtioNet final : public VirtioDevice {
public:
    // Throws SystemError when its eventfds or thread cannot be made. With `vhost` (an opened
    // /dev/vhost-net; the backend must then be a tap) the kernel moves the frames: see "vhost-net" above.
    VirtioNet(std::unique_ptr<NetBackend> backend, const NetOptions& options,
              std::unique_ptr<VhostNet> vhost = nullptr);
    ~VirtioNet() override;

    std::string_view name() const override { return name_; }
    DeviceType type() const override { return DeviceType::Net; }
    std::uint32_t pci_class() const override { return 0x020000; } // network, Ethernet
    std::uint64_t features() const override { return features_; }
    std::uint16_t queue_count() const override { return 2; }
    std::uint16_t max_queue_size() const override { return options_.queue_size; }
    std::size_t config_size() const override { return net::kConfigBytes; }
    void read_config(std::uint64_t offset, std::span<std::byte> data) const override;
    void write_config(std::uint64_t, std::span<const std::byte>) override {}
    std::expected<void, std::string> activate(Activation activation) override;
    void notify(std::uint16_t queue) override;
    void reset() override;
    bool consumes_kicks() const override { return vhost_mode_; }

    // Places the frames waiting in the backend now, on the caller's thread (what the device's thread does
    // when the backend polls readable): afterwards every frame sent to the backend before the call has
    // been placed, dropped, or is waiting for buffers. For tests and fuzzing, which want a settled state.
    void receive_now();
    // Counters of the userspace data path (all zero with vhost-net, whose frames the monitor never sees).
    NetStats stats() const;
    bool uses_vhost() const { return vhost_mode_; }
    NetBackend& backend() { return *backend_; }
    const net::MacAddress& mac() const { return options_.mac; }

private:
    enum class Placed { Done, NoBuffers, Broken };

    void io_loop();
    std::expected<void, std::string> activate_vhost_locked(Activation& activation);
    // Receive: true while the backend should be polled (activated, ring usable, not waiting for buffers).
    bool process_rx_locked();
    Placed place_frame_locked();
    void return_held_locked(bool drop);
    void ring_error_locked(std::uint16_t queue, const QueueError& error, NetStats& side_stats,
                           DeviceSignals& signals);
    // Transmit: true when chains are left for another round.
    bool process_tx_locked();
    void transmit_locked(const DescriptorChain& chain);
    void wake(int eventfd);

    const NetOptions options_;
    const std::string name_;
    std::unique_ptr<NetBackend> backend_;
    net::Config config_{};
    std::uint64_t features_ = 0;

    // Receive side.
    mutable std::mutex rx_mutex_;
    Virtqueue rx_queue_;
    bool rx_broken_ = false;
    bool mergeable_ = false;
    bool rx_waiting_ = false; // for buffers, with the frame in hand
    std::uint64_t rx_features_ = 0;
    DeviceSignals* rx_signals_ = nullptr;
    NetStats rx_stats_;
    std::vector<std::byte> rx_frame_; // the frame in hand
    std::size_t rx_length_ = 0;       // its length with the header; 0: none
    std::size_t rx_placed_ = 0;       // bytes of it already copied into held chains
    struct Held {
        std::uint16_t head;
        std::uint32_t length;
    };
    std::vector<Held> rx_held_;             // chains popped for the frame in hand, not yet used
    std::uint32_t rx_held_descriptors_ = 0; // descriptors those chains occupy
    std::byte* rx_num_buffers_[2] = {};     // where num_buffers lies in the first held chain
    DescriptorChain rx_chain_;

    // Transmit side.
    mutable std::mutex tx_mutex_;
    Virtqueue tx_queue_;
    bool tx_broken_ = false;
    std::uint64_t tx_features_ = 0;
    DeviceSignals* tx_signals_ = nullptr;
    NetStats tx_stats_;
    net::Header tx_header_{};
    DescriptorChain tx_chain_;
    std::vector<iovec> tx_pieces_;
    std::vector<std::byte> tx_bounce_; // for chains of more pieces than writev takes

    RateLimiter log_limit_;

    UniqueFd stop_;    // ends the thread
    UniqueFd rx_kick_; // the driver added receive buffers (or the device was activated)
    UniqueFd tx_more_; // transmit chains are left after a burst

    // vhost-net: the kernel's data path (guarded by both mutexes, like activation), and the eventfds that
    // stand in for ioeventfd kicks and irqfd calls the transport does not provide.
    const bool vhost_mode_;
    std::unique_ptr<VhostNet> vhost_;
    UniqueFd own_kicks_[2];
    UniqueFd own_calls_[2];
    int vhost_kicks_[2] = {-1, -1}; // what the kernel was given
    std::thread io_thread_;
};

} // namespace vmmlab::virtio
