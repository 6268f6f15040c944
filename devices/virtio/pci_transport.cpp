#include "devices/virtio/pci_transport.hpp"

#include <algorithm>
#include <cstring>
#include <stdexcept>

namespace vmmlab::virtio {

namespace {
constexpr std::uint16_t kVirtioVendor = 0x1af4;
constexpr std::uint16_t kVirtioDeviceBase = 0x1040;
constexpr std::uint16_t kSubsystemId = 0x1100;

// Virtio PCI capability types.
constexpr std::uint8_t kCapCommon = 1;
constexpr std::uint8_t kCapNotify = 2;
constexpr std::uint8_t kCapIsr = 3;
constexpr std::uint8_t kCapDevice = 4;
constexpr std::uint8_t kCapPciCfg = 5;

// Common configuration offsets.
constexpr std::uint64_t kDeviceFeatureSelect = 0x00;
constexpr std::uint64_t kDeviceFeature = 0x04;
constexpr std::uint64_t kDriverFeatureSelect = 0x08;
constexpr std::uint64_t kDriverFeature = 0x0c;
constexpr std::uint64_t kConfigMsixVector = 0x10;
constexpr std::uint64_t kNumQueues = 0x12;
constexpr std::uint64_t kDeviceStatus = 0x14;
constexpr std::uint64_t kConfigGeneration = 0x15;
constexpr std::uint64_t kQueueSelect = 0x16;
constexpr std::uint64_t kQueueSize = 0x18;
constexpr std::uint64_t kQueueMsixVector = 0x1a;
constexpr std::uint64_t kQueueEnable = 0x1c;
constexpr std::uint64_t kQueueNotifyOff = 0x1e;
constexpr std::uint64_t kQueueDesc = 0x20;
constexpr std::uint64_t kQueueDriver = 0x28;
constexpr std::uint64_t kQueueDevice = 0x30;

// MSI-X capability: message control bits, table entry layout.
constexpr std::uint16_t kMsixEnable = 0x8000;
constexpr std::uint16_t kMsixFunctionMask = 0x4000;
constexpr std::uint32_t kMsixEntryMasked = 1;

constexpr std::uint8_t kIsrQueue = 1;
constexpr std::uint8_t kIsrConfig = 2;

std::uint64_t load(std::span<const std::byte> data) {
    std::uint64_t value = 0;
    std::memcpy(&value, data.data(), std::min(data.size(), sizeof value));
    return value;
}

std::vector<std::uint8_t> virtio_capability(std::uint8_t type, std::uint32_t offset, std::uint32_t length,
                                            std::size_t size = 16) {
    std::vector<std::uint8_t> body(size, 0);
    body[0] = devices::pci::kCapabilityVendor;
    body[2] = static_cast<std::uint8_t>(size); // cap_len
    body[3] = type;                            // cfg_type
    body[4] = 0;                               // bar
    std::memcpy(body.data() + 8, &offset, 4);
    std::memcpy(body.data() + 12, &length, 4);
    return body;
}
} // namespace

VirtioPciTransport::VirtioPciTransport(std::string name, VirtioDevice& device, const GuestMemory& memory,
                                       MsiSink& msi, InterruptLine& intx, std::uint64_t bar_address,
                                       std::uint8_t irq, std::uint16_t vectors)
    : name_(std::move(name)), device_(device), memory_(memory), msi_(msi), intx_(intx),
      queue_count_(device.queue_count()),
      vectors_(vectors != 0 ? vectors : static_cast<std::uint16_t>(device.queue_count() + 1)),
      space_(kVirtioVendor,
             static_cast<std::uint16_t>(kVirtioDeviceBase + static_cast<std::uint16_t>(device.type())),
             device.pci_class(), 1),
      queues_(device.queue_count()), queue_vectors_(device.queue_count(), kNoVector), msix_table_(vectors_),
      msix_pending_(vectors_) {
    if (vectors_ > kMaxVectors) throw std::invalid_argument(name_ + ": too many MSI-X vectors");
    if (std::uint64_t{queue_count_} * kNotifyMultiplier > kMsixTableOffset - kNotifyOffset)
        throw std::invalid_argument(name_ + ": too many queues for the notify region");
    if (device.config_size() > kDeviceConfigMax)
        throw std::invalid_argument(name_ + ": device configuration too large");
    for (auto& queue : queues_)
        queue.size = device.max_queue_size();
    space_.set_u16(devices::pci::kSubsystemVendorId, kVirtioVendor);
    space_.set_u16(devices::pci::kSubsystemId, kSubsystemId);
    space_.set_u8(devices::pci::kInterruptLine, irq);
    space_.set_u8(devices::pci::kInterruptPin, 1); // INTA#
    space_.add_memory_bar64(0, kBarSize, bar_address);

    space_.add_capability(virtio_capability(kCapCommon, kCommonOffset, kCommonSize));
    auto notify = virtio_capability(kCapNotify, kNotifyOffset, queue_count_ * kNotifyMultiplier, 20);
    std::memcpy(notify.data() + 16, &kNotifyMultiplier, 4);
    space_.add_capability(notify);
    space_.add_capability(virtio_capability(kCapIsr, kIsrOffset, 1));
    space_.add_capability(
        virtio_capability(kCapDevice, kDeviceConfigOffset, static_cast<std::uint32_t>(device.config_size())));
    pci_cfg_capability_ = space_.add_capability(virtio_capability(kCapPciCfg, 0, 0, 20));
    // bar, offset, length and data of the PCI_CFG window are the driver's to write.
    space_.set_write_mask(static_cast<std::uint16_t>(pci_cfg_capability_ + 4), 1, 0xff);
    space_.set_write_mask(static_cast<std::uint16_t>(pci_cfg_capability_ + 8), 12, 0xff);

    std::vector<std::uint8_t> msix(12, 0);
    msix[0] = devices::pci::kCapabilityMsix;
    const auto control = static_cast<std::uint16_t>(vectors_ - 1);
    std::memcpy(msix.data() + 2, &control, 2);
    const auto table = static_cast<std::uint32_t>(kMsixTableOffset); // BIR 0
    const auto pba = static_cast<std::uint32_t>(kMsixPbaOffset);
    std::memcpy(msix.data() + 4, &table, 4);
    std::memcpy(msix.data() + 8, &pba, 4);
    msix_capability_ = space_.add_capability(msix);
    space_.set_write_mask(static_cast<std::uint16_t>(msix_capability_ + 3), 1, 0xc0); // enable, function mask

    for (auto& entry : msix_table_)
        entry = {0, 0, 0, kMsixEntryMasked};
}

VirtioPciTransport::~VirtioPciTransport() {
    std::lock_guard lock(mutex_);
    if (activated_) device_.reset();
}

std::uint64_t VirtioPciTransport::bar_address() const {
    std::lock_guard lock(mutex_);
    return space_.bar_address(0);
}

void VirtioPciTransport::set_notify_hook(std::function<void(std::uint16_t)> hook) {
    std::lock_guard lock(mutex_);
    notify_hook_ = std::move(hook);
}

void VirtioPciTransport::set_kick_fds(std::vector<int> fds) {
    std::lock_guard lock(mutex_);
    kick_fds_ = std::move(fds);
}

bool VirtioPciTransport::kick(std::uint16_t queue) {
    {
        std::lock_guard lock(mutex_);
        if (queue >= queue_count_ || !activated_ || !queues_[queue].enabled) return false;
    }
    device_.notify(queue); // unlocked, as from the MMIO write: the device may signal at once
    return true;
}

std::uint8_t VirtioPciTransport::device_status() const {
    std::lock_guard lock(mutex_);
    std::lock_guard interrupt_lock(interrupt_mutex_);
    return static_cast<std::uint8_t>(status_ | (needs_reset_ ? kStatusNeedsReset : 0));
}

std::uint64_t VirtioPciTransport::ignored_accesses() const {
    std::lock_guard lock(mutex_);
    return ignored_;
}

// --- PCI configuration space --------------------------------------------------------------------------

void VirtioPciTransport::config_read(std::uint16_t offset, std::span<std::byte> data) {
    std::unique_lock lock(mutex_);
    if (offset < pci_cfg_capability_ + 20 && offset + data.size() > pci_cfg_capability_ + 16u)
        pci_cfg_access({}, false, lock); // refresh pci_cfg_data from the BAR first
    space_.read(offset, data);
    // The status register's interrupt bit reflects INTx.
    if (offset <= devices::pci::kStatus && offset + data.size() > devices::pci::kStatus) {
        std::lock_guard interrupt_lock(interrupt_mutex_);
        if (intx_high_) data[devices::pci::kStatus - offset] |= std::byte{devices::pci::kStatusInterrupt};
    }
}

void VirtioPciTransport::config_write(std::uint16_t offset, std::span<const std::byte> data) {
    std::unique_lock lock(mutex_);
    space_.write(offset, data);
    const auto touches = [&](std::uint16_t start, std::size_t length) {
        return offset < start + length && offset + data.size() > start;
    };
    if (touches(devices::pci::kCommand, 2) || touches(static_cast<std::uint16_t>(msix_capability_ + 2), 2)) {
        std::lock_guard interrupt_lock(interrupt_mutex_);
        intx_disabled_ = space_.u16(devices::pci::kCommand) & devices::pci::kCommandIntxDisable;
        const std::uint16_t control = space_.u16(static_cast<std::uint16_t>(msix_capability_ + 2));
        msix_enable_ = control & kMsixEnable;
        msix_function_mask_ = control & kMsixFunctionMask;
        update_intx_locked();
        deliver_pending_locked();
    }
    if (touches(static_cast<std::uint16_t>(pci_cfg_capability_ + 16), 4)) {
        std::array<std::byte, 4> window{};
        space_.read(static_cast<std::uint16_t>(pci_cfg_capability_ + 16), window);
        pci_cfg_access(window, true, lock);
    }
}

// The PCI_CFG capability: an access to pci_cfg_data becomes an access of cap.length bytes at cap.offset
// in BAR cap.bar. Only BAR0, lengths 1, 2 and 4, naturally aligned, inside the BAR; otherwise nothing.
void VirtioPciTransport::pci_cfg_access(std::span<std::byte> data, bool is_write,
                                        std::unique_lock<std::mutex>& lock) {
    const std::uint16_t cap = pci_cfg_capability_;
    const std::uint8_t bar = space_.u8(static_cast<std::uint16_t>(cap + 4));
    const std::uint32_t offset = space_.u32(static_cast<std::uint16_t>(cap + 8));
    const std::uint32_t length = space_.u32(static_cast<std::uint16_t>(cap + 12));
    if (bar != 0 || (length != 1 && length != 2 && length != 4) || offset % length != 0 ||
        std::uint64_t{offset} + length > kBarSize)
        return;
    // The window works whether or not memory decoding is on: that is what it is for.
    const auto data_offset = static_cast<std::uint16_t>(cap + 16);
    if (is_write) {
        bar_write(offset, data.first(length), lock);
    } else {
        std::array<std::byte, 4> window{};
        bar_read(offset, std::span(window).first(length), lock);
        for (std::uint16_t i = 0; i < 4; ++i)
            space_.set_u8(static_cast<std::uint16_t>(data_offset + i),
                          std::to_integer<std::uint8_t>(window[i]));
    }
}

// --- BAR0 ---------------------------------------------------------------------------------------------

ExitAction VirtioPciTransport::read(std::uint64_t offset, std::span<std::byte> data) {
    std::unique_lock lock(mutex_);
    if (!(space_.u16(devices::pci::kCommand) & devices::pci::kCommandMemory)) {
        std::ranges::fill(data, std::byte{0xff});
        return ExitAction::Resume;
    }
    bar_read(offset, data, lock);
    return ExitAction::Resume;
}

ExitAction VirtioPciTransport::write(std::uint64_t offset, std::span<const std::byte> data) {
    std::unique_lock lock(mutex_);
    if (!(space_.u16(devices::pci::kCommand) & devices::pci::kCommandMemory)) {
        ++ignored_;
        return ExitAction::Resume;
    }
    bar_write(offset, data, lock);
    return ExitAction::Resume;
}

void VirtioPciTransport::bar_read(std::uint64_t offset, std::span<std::byte> data,
                                  std::unique_lock<std::mutex>&) {
    std::ranges::fill(data, std::byte{0});
    if (data.empty() || offset >= kBarSize || data.size() > kBarSize - offset) return;
    if (offset >= kCommonOffset && offset < kCommonOffset + kCommonSize) {
        read_common(offset - kCommonOffset, data);
    } else if (offset == kIsrOffset) {
        std::lock_guard interrupt_lock(interrupt_mutex_);
        data[0] = std::byte{isr_};
        isr_ = 0;
        update_intx_locked();
    } else if (offset >= kDeviceConfigOffset && offset < kDeviceConfigOffset + device_.config_size()) {
        const std::uint64_t inside = offset - kDeviceConfigOffset;
        const std::size_t length = std::min<std::size_t>(data.size(), device_.config_size() - inside);
        device_.read_config(inside, data.first(length));
    } else if (offset >= kMsixTableOffset && offset < kMsixPbaOffset) {
        msix_table_access(offset - kMsixTableOffset, data, nullptr);
    } else if (offset >= kMsixPbaOffset && offset < kMsixPbaOffset + (vectors_ + 63u) / 64u * 8u) {
        std::lock_guard interrupt_lock(interrupt_mutex_);
        for (std::size_t i = 0; i < data.size(); ++i) {
            std::uint8_t byte = 0;
            for (unsigned bit = 0; bit < 8; ++bit) {
                const std::uint64_t vector = (offset - kMsixPbaOffset + i) * 8 + bit;
                if (vector < vectors_ && msix_pending_[vector])
                    byte = static_cast<std::uint8_t>(byte | 1u << bit);
            }
            data[i] = std::byte{byte};
        }
    }
}

void VirtioPciTransport::bar_write(std::uint64_t offset, std::span<const std::byte> data,
                                   std::unique_lock<std::mutex>& lock) {
    if (data.empty() || offset >= kBarSize || data.size() > kBarSize - offset) return;
    if (offset >= kCommonOffset && offset < kCommonOffset + kCommonSize) {
        write_common(offset - kCommonOffset, data);
    } else if (offset >= kDeviceConfigOffset && offset < kDeviceConfigOffset + device_.config_size()) {
        const std::uint64_t inside = offset - kDeviceConfigOffset;
        const std::size_t length = std::min<std::size_t>(data.size(), device_.config_size() - inside);
        device_.write_config(inside, data.first(length));
    } else if (offset >= kNotifyOffset &&
               offset < kNotifyOffset + std::uint64_t{queue_count_} * kNotifyMultiplier) {
        const auto queue = static_cast<std::uint16_t>((offset - kNotifyOffset) / kNotifyMultiplier);
        const bool running = activated_ && queues_[queue].enabled;
        if (running && notify_hook_) {
            notify_hook_(queue); // with the register mutex held: the hook only wakes a thread
        } else if (running) {
            lock.unlock(); // the device may process the queue and signal at once
            device_.notify(queue);
            lock.lock();
        }
    } else if (offset >= kMsixTableOffset && offset < kMsixPbaOffset) {
        std::array<std::byte, 8> scratch{};
        msix_table_access(offset - kMsixTableOffset,
                          std::span(scratch).first(data.size() <= 8 ? data.size() : 0), data.data());
    } else {
        ++ignored_;
    }
}

void VirtioPciTransport::msix_table_access(std::uint64_t offset, std::span<std::byte> data,
                                           const std::byte* written) {
    // 4-byte accesses to one field, or 8-byte accesses to the address or the data+control pair.
    if ((data.size() != 4 && data.size() != 8) || offset % data.size() != 0) {
        ++ignored_;
        return;
    }
    const std::uint64_t vector = offset / 16;
    if (vector >= vectors_) return;
    std::lock_guard interrupt_lock(interrupt_mutex_);
    auto& entry = msix_table_[vector];
    const std::size_t first = (offset % 16) / 4;
    const std::size_t count = data.size() / 4;
    bool message_changed = false;
    for (std::size_t i = 0; i < count; ++i) {
        if (written != nullptr) {
            std::uint32_t value;
            std::memcpy(&value, written + 4 * i, 4);
            if (first + i != 3 && entry[first + i] != value) message_changed = true;
            entry[first + i] = first + i == 3 ? (value & kMsixEntryMasked) : value;
        } else {
            std::memcpy(data.data() + 4 * i, &entry[first + i], 4);
        }
    }
    if (message_changed)
        msi_.message_changed(static_cast<std::uint16_t>(vector),
                             {std::uint64_t{entry[0]} | std::uint64_t{entry[1]} << 32, entry[2]});
    if (written != nullptr) deliver_pending_locked();
}

// --- common configuration -----------------------------------------------------------------------------

void VirtioPciTransport::read_common(std::uint64_t offset, std::span<std::byte> data) {
    std::array<std::byte, kCommonSize + 8> image{};
    auto put = [&](std::uint64_t at, std::uint64_t value, std::size_t size) {
        std::memcpy(image.data() + at, &value, size);
    };
    const std::uint64_t features = device_.features();
    put(kDeviceFeatureSelect, device_feature_select_, 4);
    put(kDeviceFeature, device_feature_select_ < 2 ? features >> (32 * device_feature_select_) : 0, 4);
    put(kDriverFeatureSelect, driver_feature_select_, 4);
    put(kDriverFeature, driver_feature_select_ < 2 ? driver_features_ >> (32 * driver_feature_select_) : 0,
        4);
    put(kNumQueues, queue_count_, 2);
    {
        std::lock_guard interrupt_lock(interrupt_mutex_);
        put(kConfigMsixVector, config_vector_, 2);
        put(kDeviceStatus, status_ | (needs_reset_ ? kStatusNeedsReset : 0), 1);
        put(kConfigGeneration, config_generation_, 1);
        if (queue_select_ < queue_count_)
            put(kQueueMsixVector, queue_vectors_[queue_select_], 2);
        else
            put(kQueueMsixVector, kNoVector, 2);
    }
    put(kQueueSelect, queue_select_, 2);
    if (queue_select_ < queue_count_) {
        const QueueRegisters& queue = queues_[queue_select_];
        put(kQueueSize, queue.size, 2);
        put(kQueueEnable, queue.enabled ? 1 : 0, 2);
        put(kQueueNotifyOff, queue_select_, 2);
        put(kQueueDesc, queue.descriptor_table, 8);
        put(kQueueDriver, queue.driver_area, 8);
        put(kQueueDevice, queue.device_area, 8);
    }
    const std::size_t length = std::min<std::size_t>(data.size(), kCommonSize - offset);
    std::memcpy(data.data(), image.data() + offset, length);
}

std::uint16_t VirtioPciTransport::checked_vector(std::uint16_t vector) const {
    return vector < vectors_ ? vector : kNoVector;
}

void VirtioPciTransport::write_common(std::uint64_t offset, std::span<const std::byte> data) {
    const std::uint64_t value = load(data);
    const std::size_t size = data.size();
    QueueRegisters* queue = queue_select_ < queue_count_ ? &queues_[queue_select_] : nullptr;
    // Queue registers can change until the queue is enabled and the driver is not yet running.
    const bool queue_writable = queue != nullptr && !queue->enabled && !(status_ & kStatusDriverOk);
    auto set_half = [&](std::uint64_t& field, std::uint64_t base) {
        if (!queue_writable) return false;
        if (offset == base && size == 8)
            field = value;
        else if (offset == base && size == 4)
            field = (field & ~0xffffffffULL) | (value & 0xffffffffULL);
        else if (offset == base + 4 && size == 4)
            field = (field & 0xffffffffULL) | (value << 32);
        else
            return false;
        return true;
    };
    bool handled = true;
    if (offset == kDeviceFeatureSelect && size == 4) {
        device_feature_select_ = static_cast<std::uint32_t>(value);
    } else if (offset == kDriverFeatureSelect && size == 4) {
        driver_feature_select_ = static_cast<std::uint32_t>(value);
    } else if (offset == kDriverFeature && size == 4) {
        if (driver_feature_select_ < 2 && !(status_ & kStatusFeaturesOk)) {
            const unsigned shift = 32 * driver_feature_select_;
            driver_features_ = (driver_features_ & ~(0xffffffffULL << shift)) | (value & 0xffffffffULL)
                                                                                    << shift;
        } else {
            handled = false;
        }
    } else if (offset == kConfigMsixVector && size == 2) {
        std::lock_guard interrupt_lock(interrupt_mutex_);
        config_vector_ = checked_vector(static_cast<std::uint16_t>(value));
    } else if (offset == kDeviceStatus && size == 1) {
        write_status(static_cast<std::uint8_t>(value));
    } else if (offset == kQueueSelect && size == 2) {
        queue_select_ = static_cast<std::uint16_t>(value);
    } else if (offset == kQueueSize && size == 2 && queue_writable) {
        queue->size = static_cast<std::uint16_t>(value);
    } else if (offset == kQueueMsixVector && size == 2 && queue != nullptr) {
        std::lock_guard interrupt_lock(interrupt_mutex_);
        queue_vectors_[queue_select_] = checked_vector(static_cast<std::uint16_t>(value));
    } else if (offset == kQueueEnable && size == 2 && queue != nullptr) {
        if (value == 1 && !(status_ & kStatusDriverOk))
            queue->enabled = true;
        else
            handled = false; // 0 is not for the driver to write; after DRIVER_OK it is too late
    } else if (offset >= kQueueDesc && offset < kQueueDriver) {
        handled = set_half(queue->descriptor_table, kQueueDesc);
    } else if (offset >= kQueueDriver && offset < kQueueDevice) {
        handled = set_half(queue->driver_area, kQueueDriver);
    } else if (offset >= kQueueDevice && offset < kCommonSize) {
        handled = set_half(queue->device_area, kQueueDevice);
    } else {
        handled = false;
    }
    if (!handled) ++ignored_;
}

void VirtioPciTransport::write_status(std::uint8_t value) {
    if (value == 0) {
        reset_locked();
        return;
    }
    value &= static_cast<std::uint8_t>(~kStatusNeedsReset); // the device's bit, not the driver's
    if ((status_ & ~value) != 0) {                          // the driver may not clear bits
        ++ignored_;
        return;
    }
    const std::uint8_t added = static_cast<std::uint8_t>(value & ~status_);
    std::uint8_t accepted = value;
    if (added & kStatusFeaturesOk) {
        const bool version_1 = (driver_features_ >> kFeatureVersion1) & 1;
        const bool offered = (driver_features_ & ~device_.features()) == 0;
        if (!version_1 || !offered) accepted = static_cast<std::uint8_t>(accepted & ~kStatusFeaturesOk);
    }
    if ((added & kStatusDriverOk) && !(accepted & kStatusFeaturesOk))
        accepted = static_cast<std::uint8_t>(accepted & ~kStatusDriverOk);
    status_ = accepted;
    if ((added & kStatusDriverOk) && (status_ & kStatusDriverOk)) activate_locked();
}

void VirtioPciTransport::activate_locked() {
    std::vector<Virtqueue> queues(queue_count_);
    bool failed = false;
    for (std::uint16_t i = 0; i < queue_count_; ++i) {
        const QueueRegisters& registers = queues_[i];
        if (!registers.enabled) continue;
        if (registers.size > device_.max_queue_size()) {
            failed = true;
            break;
        }
        auto queue =
            Virtqueue::activate(memory_,
                                {registers.size, GuestAddress{registers.descriptor_table},
                                 GuestAddress{registers.driver_area}, GuestAddress{registers.device_area}},
                                driver_features_);
        if (!queue) {
            failed = true;
            break;
        }
        queues[i] = std::move(*queue);
    }
    if (!failed) {
        std::vector<int> kick_fds(queue_count_, -1), call_fds(queue_count_, -1);
        for (std::uint16_t i = 0; i < queue_count_ && i < kick_fds_.size(); ++i)
            kick_fds[i] = kick_fds_[i];
        {
            std::lock_guard interrupt_lock(interrupt_mutex_);
            for (std::uint16_t i = 0; i < queue_count_ && msix_enable_; ++i)
                if (queue_vectors_[i] < vectors_) call_fds[i] = msi_.vector_event_fd(queue_vectors_[i]);
        }
        auto activated = device_.activate(Activation{memory_, driver_features_, std::move(queues), *this,
                                                     std::move(kick_fds), std::move(call_fds)});
        if (activated) {
            activated_ = true;
            return;
        }
    }
    ++ignored_;
    needs_reset();
}

void VirtioPciTransport::reset_locked() {
    if (activated_) device_.reset();
    activated_ = false;
    status_ = 0;
    driver_features_ = 0;
    device_feature_select_ = 0;
    driver_feature_select_ = 0;
    queue_select_ = 0;
    // queue_size reads the device's maximum after reset (virtio 1.2, 4.1.4.3); a driver may lower it.
    for (auto& queue : queues_)
        queue = QueueRegisters{.size = device_.max_queue_size()};
    std::lock_guard interrupt_lock(interrupt_mutex_);
    needs_reset_ = false;
    isr_ = 0;
    config_vector_ = kNoVector;
    std::ranges::fill(queue_vectors_, kNoVector);
    update_intx_locked();
}

// --- interrupts ---------------------------------------------------------------------------------------

bool VirtioPciTransport::msix_enabled_locked() const {
    return msix_enable_;
}

bool VirtioPciTransport::vector_masked_locked(std::uint16_t vector) const {
    return msix_function_mask_ || (msix_table_[vector][3] & kMsixEntryMasked);
}

void VirtioPciTransport::signal_vector_locked(std::uint16_t vector) {
    if (vector >= vectors_) return; // NO_VECTOR: the driver wants no interrupt
    if (vector_masked_locked(vector)) {
        msix_pending_[vector] = true;
        return;
    }
    const auto& entry = msix_table_[vector];
    msi_.deliver(vector, {std::uint64_t{entry[0]} | std::uint64_t{entry[1]} << 32, entry[2]});
}

void VirtioPciTransport::deliver_pending_locked() {
    if (!msix_enable_) return;
    for (std::uint16_t vector = 0; vector < vectors_; ++vector) {
        if (msix_pending_[vector] && !vector_masked_locked(vector)) {
            msix_pending_[vector] = false;
            signal_vector_locked(vector);
        }
    }
}

void VirtioPciTransport::update_intx_locked() {
    const bool high = isr_ != 0 && !intx_disabled_ && !msix_enable_;
    if (high != intx_high_) {
        intx_high_ = high;
        intx_.set_level(high);
    }
}

void VirtioPciTransport::used_buffers(std::uint16_t queue) {
    std::lock_guard interrupt_lock(interrupt_mutex_);
    if (queue >= queue_count_) return;
    if (msix_enable_) {
        signal_vector_locked(queue_vectors_[queue]);
    } else {
        isr_ |= kIsrQueue;
        update_intx_locked();
    }
}

void VirtioPciTransport::config_changed() {
    std::lock_guard interrupt_lock(interrupt_mutex_);
    ++config_generation_;
    if (msix_enable_) {
        signal_vector_locked(config_vector_);
    } else {
        isr_ |= kIsrConfig;
        update_intx_locked();
    }
}

void VirtioPciTransport::needs_reset() {
    {
        std::lock_guard interrupt_lock(interrupt_mutex_);
        needs_reset_ = true;
    }
    config_changed();
}

} // namespace vmmlab::virtio
