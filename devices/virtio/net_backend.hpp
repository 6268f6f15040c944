// Where a VirtioNet's frames go and come from: a tap device (devices/virtio/tap.hpp) in production, a
// datagram socket in tests. Every frame travels with its 12-byte virtio_net_hdr_v1 in front (flags,
// gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers), exactly as the guest's driver
// writes it on transmit and reads it on receive; one read or write moves exactly one frame.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <expected>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include <sys/uio.h>

#include "base/unique_fd.hpp"

namespace vmmlab::virtio {

namespace net {
// Feature bits (virtio 1.2, 5.1.3).
inline constexpr unsigned kFeatureCsum = 0;      // the device takes frames with a partial checksum
inline constexpr unsigned kFeatureGuestCsum = 1; // the driver takes frames with a partial checksum
inline constexpr unsigned kFeatureMac = 5;
inline constexpr unsigned kFeatureGuestTso4 = 7;
inline constexpr unsigned kFeatureGuestTso6 = 8;
inline constexpr unsigned kFeatureGuestEcn = 9;
inline constexpr unsigned kFeatureHostTso4 = 11;
inline constexpr unsigned kFeatureHostTso6 = 12;
inline constexpr unsigned kFeatureHostEcn = 13;
inline constexpr unsigned kFeatureMergeableRxBuffers = 15;
inline constexpr unsigned kFeatureStatus = 16;

// struct virtio_net_hdr_v1 (the header of every frame with VIRTIO_F_VERSION_1).
struct Header {
    std::uint8_t flags;
    std::uint8_t gso_type;
    std::uint16_t header_length;
    std::uint16_t gso_size;
    std::uint16_t csum_start;
    std::uint16_t csum_offset;
    std::uint16_t num_buffers;
};
inline constexpr std::size_t kHeaderBytes = 12;
static_assert(sizeof(Header) == kHeaderBytes);
inline constexpr std::uint8_t kHeaderNeedsCsum = 1;
inline constexpr std::uint8_t kHeaderDataValid = 2;
inline constexpr std::uint8_t kGsoNone = 0;
inline constexpr std::uint8_t kGsoTcp4 = 1;
inline constexpr std::uint8_t kGsoTcp6 = 4;
inline constexpr std::uint8_t kGsoEcn = 0x80;

using MacAddress = std::array<std::uint8_t, 6>;
// "52:54:00:12:34:56" (hex digits in either case) -> bytes; nothing for anything else.
std::optional<MacAddress> parse_mac(std::string_view text);
// Lower-case hex, colon-separated: what parse_mac reads back.
std::string to_string(const MacAddress& mac);
} // namespace net

class NetBackend {
public:
    virtual ~NetBackend() = default;
    // What the backend is, for messages: "tap vmmlab0", "socket".
    virtual std::string_view name() const = 0;
    // A descriptor that polls readable (POLLIN) while a frame is waiting.
    virtual int fd() const = 0;
    // Reads one frame (header first) into `buffer`, without blocking: its length, or the errno (EAGAIN
    // when no frame is waiting). A frame longer than `buffer` is truncated to it.
    virtual std::expected<std::size_t, int> read_frame(std::span<std::byte> buffer) = 0;
    // Writes one frame (header first) gathered from `pieces`: nothing, or the errno (EAGAIN or ENOBUFS
    // when the backend has no room right now, EINVAL for a header the host stack refuses).
    virtual std::expected<void, int> write_frame(std::span<const iovec> pieces) = 0;
    // The driver accepted these features (VIRTIO_NET_F_GUEST_* among them): from now on send only frames
    // the guest can take (a tap: TUNSETOFFLOAD). Called at activation; 0 (no offloads) after a reset.
    virtual std::expected<void, std::string> set_guest_offloads(std::uint64_t features) = 0;
};

// One end of a socketpair(AF_UNIX, SOCK_DGRAM): one datagram is one frame with its header. Reads never
// block; writes block while the peer's queue is full (the peer is a test that reads them), or with
// `blocking_writes` false fail with EAGAIN (the device drops the frame). Tests keep the other end
// (peer()) to inject and collect frames.
class DatagramSocketBackend final : public NetBackend {
public:
    // Throws SystemError when the socket pair cannot be made.
    explicit DatagramSocketBackend(bool blocking_writes = true);
    std::string_view name() const override { return "socket"; }
    int fd() const override { return device_end_.get(); }
    std::expected<std::size_t, int> read_frame(std::span<std::byte> buffer) override;
    std::expected<void, int> write_frame(std::span<const iovec> pieces) override;
    std::expected<void, std::string> set_guest_offloads(std::uint64_t features) override {
        offloads_ = features;
        return {};
    }
    // The test's end: send() a datagram to have the device receive it, recv() what the device sent.
    int peer() const { return peer_end_.get(); }
    std::uint64_t guest_offloads() const { return offloads_; }

private:
    UniqueFd device_end_;
    UniqueFd peer_end_;
    std::uint64_t offloads_ = 0;
    int write_flags_;
};

} // namespace vmmlab::virtio
