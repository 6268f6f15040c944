// The virtio-pci transport (virtio 1.2, 4.1), modern (non-transitional) only.
//
// Config space: vendor 0x1AF4, device 0x1040 + device type (blk 0x1042, net 0x1041), revision 1,
// subsystem 0x1AF4:0x1100, the device's class code, interrupt pin A, BAR0 a 64-bit memory BAR of
// kBarSize (16 KiB), and this capability list (from 0x40): common (cfg_type 1), notify (2, multiplier
// 4), ISR (3), device (4), PCI_CFG access window (5), MSI-X (table and PBA in BAR0).
//
// BAR0 layout:
//   0x0000  common configuration (0x38 bytes, the 1.0 fields)
//   0x0800  ISR status (1 byte; reading returns and clears it, and lowers INTx)
//   0x1000  device-specific configuration (the device's config_size() bytes, forwarded to it)
//   0x2000  notify: queue q at 0x2000 + 4 * q (queue_notify_off = q); a write of any width kicks q
//   0x3000  MSI-X table (16 bytes per vector), 0x3800 MSI-X PBA
// Reads of anything else return 0, writes are ignored; with the command register's memory-space bit
// clear, BAR reads return all ones and writes are ignored.
//
// Common configuration: fields are accessed with their own width (64-bit queue addresses also as two
// 32-bit halves); other accesses read 0 / are ignored. device_status follows the state machine:
// writing 0 resets the device and the transport (features, queues, vectors, ISR); otherwise bits can
// only be added; FEATURES_OK sticks only if the driver accepted VIRTIO_F_VERSION_1 and nothing the
// device did not offer; DRIVER_OK (only after FEATURES_OK) activates the enabled queues (each layout
// checked by Virtqueue::activate) and the device; a failure there sets DEVICE_NEEDS_RESET. Driver
// features and queue registers are frozen once FEATURES_OK respectively DRIVER_OK (or queue_enable) is set.
//
// Interrupts: with MSI-X enabled, a queue (or configuration) interrupt sends its vector's message
// through MsiSink unless the vector is masked (function or entry mask): then its PBA bit is set and
// the message goes out when it is unmasked. NO_VECTOR means no interrupt. With MSI-X disabled, the ISR
// bit is set and INTx (the InterruptLine) is raised until the driver reads the ISR (or sets the
// command register's INTx-disable bit). A vector written to config_msix_vector / queue_msix_vector that
// the table does not have reads back as NO_VECTOR.
//
// I/O path: a notify write runs device.notify(q) on the vCPU thread, or only calls the notify hook (the
// device's I/O thread then calls kick(q)); with ioeventfds the kernel signals an eventfd instead and
// the write never reaches this object. MSI-X table changes are passed to MsiSink::message_changed so an
// irqfd route is current before the kernel itself signals the vector.
//
// Threads: guest accesses (vCPU threads) and DeviceSignals calls (any thread) may race; a mutex guards
// the registers and a separate leaf mutex the interrupt state. The device's activate/reset are called
// with the register mutex held, notify() without any lock; MsiSink and InterruptLine are called with the
// interrupt mutex held and must not call back into the transport.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "bus/device.hpp"
#include "bus/interrupt_line.hpp"
#include "devices/legacy/pci_host.hpp"
#include "devices/virtio/virtio_device.hpp"

namespace vmmlab::virtio {

struct MsiMessage {
    std::uint64_t address;
    std::uint32_t data;
};

// Where MSI-X messages go: KVM_SIGNAL_MSI, or an irqfd routed for `vector`, or a test's recorder. The
// transport calls every method with its interrupt mutex held.
class MsiSink {
public:
    virtual ~MsiSink() = default;
    virtual void deliver(std::uint16_t vector, const MsiMessage& message) = 0;
    // The guest changed `vector`'s MSI-X table entry (its address or data): a sink that routes vectors
    // (irqfd) updates the route now, before anything (vhost in the kernel) signals the vector directly.
    virtual void message_changed(std::uint16_t /*vector*/, const MsiMessage& /*message*/) {}
    // An eventfd that injects `vector` when written, or -1 (Activation::call_fds).
    virtual int vector_event_fd(std::uint16_t /*vector*/) const { return -1; }
};

class VirtioPciTransport final : public Device, public devices::PciFunction, private DeviceSignals {
public:
    static constexpr std::uint64_t kBarSize = 0x4000;
    static constexpr std::uint64_t kCommonOffset = 0x0000;
    static constexpr std::uint64_t kCommonSize = 0x38;
    static constexpr std::uint64_t kIsrOffset = 0x0800;
    static constexpr std::uint64_t kDeviceConfigOffset = 0x1000;
    static constexpr std::uint64_t kDeviceConfigMax = 0x1000;
    static constexpr std::uint64_t kNotifyOffset = 0x2000;
    static constexpr std::uint32_t kNotifyMultiplier = 4;
    static constexpr std::uint64_t kMsixTableOffset = 0x3000;
    static constexpr std::uint64_t kMsixPbaOffset = 0x3800;
    static constexpr std::uint16_t kMaxVectors = 128;

    // `bar_address` must be aligned to kBarSize; the caller inserts this object into the MMIO bus there
    // (and the host bridge attaches it as a PCI function). `vectors` MSI-X vectors (default: one per
    // queue plus one for configuration changes), at most kMaxVectors.
    VirtioPciTransport(std::string name, VirtioDevice& device, const GuestMemory& memory, MsiSink& msi,
                       InterruptLine& intx, std::uint64_t bar_address, std::uint8_t irq = 0,
                       std::uint16_t vectors = 0);
    ~VirtioPciTransport() override;

    // MMIO (BAR0): offset relative to bar_address().
    std::string_view name() const override { return name_; }
    ExitAction read(std::uint64_t offset, std::span<std::byte> data) override;
    ExitAction write(std::uint64_t offset, std::span<const std::byte> data) override;

    // PCI configuration space.
    void config_read(std::uint16_t offset, std::span<std::byte> data) override;
    void config_write(std::uint16_t offset, std::span<const std::byte> data) override;

    std::uint64_t bar_address() const;
    // The guest-physical address a driver writes to kick `queue` (for an ioeventfd).
    std::uint64_t notify_address(std::uint16_t queue) const {
        return bar_address() + kNotifyOffset + std::uint64_t{kNotifyMultiplier} * queue;
    }
    std::uint8_t device_status() const;

    // The I/O path (set before the guest runs). With a notify hook, a guest's MMIO write to a running
    // queue's notify address calls hook(queue) (e.g. waking the device's I/O thread, which then calls
    // kick(queue)) instead of the device's notify() on the writing vCPU thread.
    void set_notify_hook(std::function<void(std::uint16_t queue)> hook);
    // The eventfds KVM signals for each queue's kick (ioeventfd on notify_address(q)), for
    // Activation::kick_fds; -1 or a shorter list where there are none.
    void set_kick_fds(std::vector<int> fds);
    // A kick of `queue` that did not come through the MMIO notify write (an ioeventfd, or the notify
    // hook): the device's notify(queue) when the device is activated and the queue enabled, exactly as
    // the MMIO write would; otherwise nothing. Returns whether the device was notified.
    bool kick(std::uint16_t queue);
    std::uint16_t vector_count() const { return vectors_; }
    // Counts of what the guest did wrong (accesses ignored), for statistics.
    std::uint64_t ignored_accesses() const;

private:
    struct QueueRegisters {
        std::uint16_t size = 0;
        std::uint16_t vector = kNoVector;
        bool enabled = false;
        std::uint64_t descriptor_table = 0;
        std::uint64_t driver_area = 0;
        std::uint64_t device_area = 0;
    };

    // DeviceSignals
    void used_buffers(std::uint16_t queue) override;
    void config_changed() override;
    void needs_reset() override;

    void read_common(std::uint64_t offset, std::span<std::byte> data);
    void write_common(std::uint64_t offset, std::span<const std::byte> data);
    void write_status(std::uint8_t value);
    void reset_locked();
    void activate_locked();
    std::uint16_t checked_vector(std::uint16_t vector) const;

    // Interrupt side (interrupt_mutex_ held).
    void signal_vector_locked(std::uint16_t vector);
    void update_intx_locked();
    void deliver_pending_locked();
    bool msix_enabled_locked() const;
    bool vector_masked_locked(std::uint16_t vector) const;
    void msix_table_access(std::uint64_t offset, std::span<std::byte> data, const std::byte* written);

    // BAR0 accesses without the memory-decode check (mutex_ held through `lock`; notify drops it).
    void bar_read(std::uint64_t offset, std::span<std::byte> data, std::unique_lock<std::mutex>& lock);
    void bar_write(std::uint64_t offset, std::span<const std::byte> data, std::unique_lock<std::mutex>& lock);
    // PCI_CFG capability window: pci_cfg_data to or from BAR0.
    void pci_cfg_access(std::span<std::byte> data, bool is_write, std::unique_lock<std::mutex>& lock);

    const std::string name_;
    VirtioDevice& device_;
    const GuestMemory& memory_;
    MsiSink& msi_;
    InterruptLine& intx_;
    const std::uint16_t queue_count_;
    const std::uint16_t vectors_;

    mutable std::mutex mutex_; // registers below
    devices::PciConfigSpace space_;
    std::uint16_t msix_capability_ = 0;
    std::uint16_t pci_cfg_capability_ = 0;
    std::uint32_t device_feature_select_ = 0;
    std::uint32_t driver_feature_select_ = 0;
    std::uint64_t driver_features_ = 0;
    std::uint8_t status_ = 0;
    std::uint16_t queue_select_ = 0;
    std::vector<QueueRegisters> queues_;
    bool activated_ = false;
    std::function<void(std::uint16_t)> notify_hook_;
    std::vector<int> kick_fds_;
    std::uint64_t ignored_ = 0;

    mutable std::mutex interrupt_mutex_; // interrupt state below
    std::uint8_t isr_ = 0;
    bool intx_high_ = false;
    bool intx_disabled_ = false;
    bool msix_enable_ = false;
    bool msix_function_mask_ = false;
    std::uint16_t config_vector_ = kNoVector;
    std::vector<std::uint16_t> queue_vectors_;
    std::vector<std::array<std::uint32_t, 4>> msix_table_; // address low, address high, data, control
    std::vector<bool> msix_pending_;
    std::uint8_t config_generation_ = 0;
    bool needs_reset_ = false;
};

} // namespace vmmlab::virtio
