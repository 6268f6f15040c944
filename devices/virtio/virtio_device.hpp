// What a virtio device (block, net) implements, and what it gets from its transport. The transport
// (virtio-pci here; virtio-mmio could be another) owns feature negotiation, the status state machine and
// the queue registers; the device owns its configuration structure and what its queues mean.
//
// Life cycle: the transport calls activate() once the driver sets DRIVER_OK (with the negotiated features
// and one Virtqueue per queue, inactive where the driver did not enable it), then notify(q) for each
// guest kick, and reset() when the driver writes 0 to device_status (or the transport resets otherwise).
// After reset() returns the device must no longer touch guest memory or the queues it was given.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <expected>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "devices/virtio/virtqueue.hpp"
#include "memory/guest_memory.hpp"

namespace vmmlab::virtio {

enum class DeviceType : std::uint16_t { Net = 1, Block = 2 };

// device_status bits (virtio 1.2, 2.1).
inline constexpr std::uint8_t kStatusAcknowledge = 1;
inline constexpr std::uint8_t kStatusDriver = 2;
inline constexpr std::uint8_t kStatusDriverOk = 4;
inline constexpr std::uint8_t kStatusFeaturesOk = 8;
inline constexpr std::uint8_t kStatusNeedsReset = 0x40;
inline constexpr std::uint8_t kStatusFailed = 0x80;

inline constexpr std::uint16_t kNoVector = 0xffff; // VIRTIO_MSI_NO_VECTOR

// How a device tells its transport that something happened. May be called from any thread (an I/O
// completion thread included); implementations only take a leaf lock and raise an interrupt.
class DeviceSignals {
public:
    virtual ~DeviceSignals() = default;
    // New used buffers in `queue`: raise its interrupt (the device already asked
    // Virtqueue::needs_notification()).
    virtual void used_buffers(std::uint16_t queue) = 0;
    // The device configuration changed: bump config_generation, raise the configuration interrupt.
    virtual void config_changed() = 0;
    // The device hit an error it cannot recover from without a reset (a malformed ring): set
    // DEVICE_NEEDS_RESET and raise the configuration interrupt.
    virtual void needs_reset() = 0;
};

struct Activation {
    const GuestMemory& memory;
    std::uint64_t features;        // negotiated: offered by the device and accepted by the driver
    std::vector<Virtqueue> queues; // one per queue the device offers; inactive where not enabled
    DeviceSignals& signals;
    // Per queue, for a device that hands its queues to the kernel (vhost); -1 where the VM has none:
    // kick_fds[q]: the eventfd KVM signals when the guest kicks q (--io-notify ioeventfd);
    // call_fds[q]: an eventfd that injects q's MSI-X vector when written (--io-irq irqfd, MSI-X enabled
    // and q given a vector). Both stay owned by the transport's VM; empty lists mean all -1.
    std::vector<int> kick_fds{};
    std::vector<int> call_fds{};
};

// A read of `data.size()` bytes at `offset` of a device's configuration structure `config`: the bytes that
// lie inside it, zeros past its end (what read_config of every device does).
inline void read_config_bytes(std::span<const std::byte> config, std::uint64_t offset,
                              std::span<std::byte> data) {
    std::fill(data.begin(), data.end(), std::byte{0});
    if (offset >= config.size()) return;
    const std::size_t length = std::min<std::size_t>(data.size(), config.size() - offset);
    std::copy_n(config.begin() + static_cast<std::ptrdiff_t>(offset), length, data.begin());
}

class VirtioDevice {
public:
    virtual ~VirtioDevice() = default;
    virtual std::string_view name() const = 0;
    virtual DeviceType type() const = 0;
    // PCI class code: class << 16 | subclass << 8 | programming interface.
    virtual std::uint32_t pci_class() const = 0;
    // Feature bits offered (VIRTIO_F_VERSION_1 must be among them).
    virtual std::uint64_t features() const = 0;
    virtual std::uint16_t queue_count() const = 0;
    virtual std::uint16_t max_queue_size() const = 0;
    // The device-specific configuration structure: its size, reads and writes at an offset inside it.
    virtual std::size_t config_size() const = 0;
    virtual void read_config(std::uint64_t offset, std::span<std::byte> data) const = 0;
    virtual void write_config(std::uint64_t offset, std::span<const std::byte> data) = 0;

    // The driver set DRIVER_OK. An error (e.g. no usable queue) makes the transport set DEVICE_NEEDS_RESET.
    virtual std::expected<void, std::string> activate(Activation activation) = 0;
    // The driver kicked `queue` (below queue_count(); only while activated).
    virtual void notify(std::uint16_t queue) = 0;
    // Back to the state before activate(); waits for requests in flight.
    virtual void reset() = 0;
    // True for a device that reads its queues' kick eventfds itself (vhost-net hands them to the kernel):
    // then the VM's I/O thread must not poll them.
    virtual bool consumes_kicks() const { return false; }
};

} // namespace vmmlab::virtio
