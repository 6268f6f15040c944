#include "guest/kernel/virtio_pci.hpp"

#include "guest/kernel/kernel.hpp"
#include "guest/workloads/cpu.hpp"

namespace vmmlab::guest::kernel {
namespace {

constexpr uint16_t kConfigAddress = 0xcf8;
constexpr uint16_t kConfigData = 0xcfc;

uint32_t config_address(unsigned slot, uint8_t offset) {
    return 0x80000000U | (static_cast<uint32_t>(slot & 31) << 11) | (offset & 0xfcU);
}

// PCI header.
constexpr uint8_t kVendorId = 0x00;
constexpr uint8_t kCommand = 0x04;
constexpr uint8_t kStatus = 0x06;
constexpr uint8_t kBar0 = 0x10;
constexpr uint8_t kCapabilityPointer = 0x34;
constexpr uint16_t kCommandMemory = 0x0002;
constexpr uint16_t kCommandBusMaster = 0x0004;
constexpr uint16_t kCommandIntxDisable = 0x0400;
constexpr uint16_t kStatusCapabilities = 0x0010;
constexpr uint8_t kCapabilityVendor = 0x09;
constexpr uint8_t kCapabilityMsix = 0x11;
constexpr uint16_t kMsixEnable = 0x8000;
constexpr uint16_t kMsixFunctionMask = 0x4000;

// Virtio capability types (cfg_type).
constexpr uint8_t kCapCommon = 1;
constexpr uint8_t kCapNotify = 2;
constexpr uint8_t kCapDevice = 4;

// Common configuration (virtio 1.2, 4.1.4.3).
constexpr uint32_t kDeviceFeatureSelect = 0x00;
constexpr uint32_t kDeviceFeature = 0x04;
constexpr uint32_t kDriverFeatureSelect = 0x08;
constexpr uint32_t kDriverFeature = 0x0c;
constexpr uint32_t kConfigMsixVector = 0x10;
constexpr uint32_t kNumQueues = 0x12;
constexpr uint32_t kDeviceStatus = 0x14;
constexpr uint32_t kConfigGeneration = 0x15;
constexpr uint32_t kQueueSelect = 0x16;
constexpr uint32_t kQueueSize = 0x18;
constexpr uint32_t kQueueMsixVector = 0x1a;
constexpr uint32_t kQueueEnable = 0x1c;
constexpr uint32_t kQueueNotifyOff = 0x1e;
constexpr uint32_t kQueueDesc = 0x20;
constexpr uint32_t kQueueDriver = 0x28;
constexpr uint32_t kQueueDevice = 0x30;
constexpr uint32_t kCommonLength = 0x38;

constexpr uint64_t kIdentityMapEnd = 1ULL << 32; // the guest maps at least [0, 4 GiB)

void write8(volatile uint8_t* at, uint8_t value) {
    *at = value;
}
void write16(volatile uint8_t* at, uint16_t value) {
    *reinterpret_cast<volatile uint16_t*>(at) = value;
}
void write32(volatile uint8_t* at, uint32_t value) {
    *reinterpret_cast<volatile uint32_t*>(at) = value;
}
uint8_t read8(volatile uint8_t* at) {
    return *at;
}
uint16_t read16(volatile uint8_t* at) {
    return *reinterpret_cast<volatile uint16_t*>(at);
}
uint32_t read32(volatile uint8_t* at) {
    return *reinterpret_cast<volatile uint32_t*>(at);
}

} // namespace

uint32_t pci_read32(unsigned slot, uint8_t offset) {
    outl(kConfigAddress, config_address(slot, offset));
    return inl(kConfigData);
}

uint16_t pci_read16(unsigned slot, uint8_t offset) {
    return static_cast<uint16_t>(pci_read32(slot, offset) >> (8 * (offset & 2)));
}

uint8_t pci_read8(unsigned slot, uint8_t offset) {
    return static_cast<uint8_t>(pci_read32(slot, offset) >> (8 * (offset & 3)));
}

void pci_write16(unsigned slot, uint8_t offset, uint16_t value) {
    outl(kConfigAddress, config_address(slot, offset));
    outw(static_cast<uint16_t>(kConfigData + (offset & 2)), value);
}

void VirtioPciDevice::put_device(Line& line) const {
    line.put("virtio-pci 00:");
    if (slot_ < 16) line.put('0');
    constexpr char kHex[] = "0123456789abcdef";
    line.put(kHex[slot_ & 15]).put(".0");
    if (slot_ >= 16) line.put(" (slot ").put_u64(slot_).put(')');
}

uint64_t VirtioPciDevice::bar_address(uint8_t bar, Line& error) const {
    if (bar > 5) {
        put_device(error);
        error.put(": a capability names BAR ").put_u64(bar);
        return 0;
    }
    const auto offset = static_cast<uint8_t>(kBar0 + 4 * bar);
    const uint32_t low = pci_read32(slot_, offset);
    if ((low & 1) != 0) {
        put_device(error);
        error.put(": BAR ").put_u64(bar).put(" is an I/O BAR; only memory BARs are supported");
        return 0;
    }
    uint64_t address = low & ~0xfULL;
    if (((low >> 1) & 3) == 2 && bar < 5)
        address |= static_cast<uint64_t>(pci_read32(slot_, offset + 4)) << 32;
    if (address == 0) {
        put_device(error);
        error.put(": BAR ").put_u64(bar).put(" is not assigned (address 0)");
    }
    return address;
}

bool VirtioPciDevice::map_capability(uint8_t cap, uint64_t& address, uint32_t& length, Line& error) const {
    const uint8_t bar = pci_read8(slot_, static_cast<uint8_t>(cap + 4));
    const uint32_t offset = pci_read32(slot_, static_cast<uint8_t>(cap + 8));
    length = pci_read32(slot_, static_cast<uint8_t>(cap + 12));
    const uint64_t base = bar_address(bar, error);
    if (base == 0) return false;
    address = base + offset;
    if (address + length > kIdentityMapEnd || address + length < address) {
        put_device(error);
        error.put(": a capability's region ").put_hex(address).put("+").put_hex(length);
        error.put(" lies beyond the guest's identity map (4 GiB)");
        return false;
    }
    return true;
}

bool VirtioPciDevice::find(uint16_t device_id, unsigned index, Line& error) {
    unsigned seen = 0;
    unsigned found_any = 0;
    for (unsigned slot = 0; slot < 32; ++slot) {
        const uint32_t ids = pci_read32(slot, kVendorId);
        if ((ids & 0xffff) != kVirtioVendor || (ids >> 16) != device_id) continue;
        ++found_any;
        if (seen++ != index) continue;
        slot_ = slot;
        // Memory decoding for BAR0, bus mastering for the device's DMA, INTx off (MSI-X or polling only).
        const uint16_t command = pci_read16(slot, kCommand);
        pci_write16(
            slot, kCommand,
            static_cast<uint16_t>(command | kCommandMemory | kCommandBusMaster | kCommandIntxDisable));
        if ((pci_read16(slot, kStatus) & kStatusCapabilities) == 0) {
            put_device(error);
            error.put(": no capability list (status bit 4 clear): not a modern virtio device");
            return false;
        }
        bool have_common = false;
        bool have_notify = false;
        bool have_device = false;
        uint8_t cap = static_cast<uint8_t>(pci_read8(slot, kCapabilityPointer) & 0xfc);
        for (unsigned hops = 0; cap != 0 && hops < 48; ++hops) {
            const uint8_t id = pci_read8(slot, cap);
            if (id == kCapabilityVendor) {
                const uint8_t type = pci_read8(slot, static_cast<uint8_t>(cap + 3));
                uint32_t length = 0;
                // The first capability of each type is the one to use (4.1.4).
                if (type == kCapCommon && !have_common) {
                    if (!map_capability(cap, common_, length, error)) return false;
                    if (length < kCommonLength) {
                        put_device(error);
                        error.put(": common configuration of ").put_u64(length).put(" bytes (needs 0x38)");
                        return false;
                    }
                    have_common = true;
                } else if (type == kCapNotify && !have_notify) {
                    if (!map_capability(cap, notify_, notify_length_, error)) return false;
                    notify_multiplier_ = pci_read32(slot, static_cast<uint8_t>(cap + 16));
                    have_notify = true;
                } else if (type == kCapDevice && !have_device) {
                    if (!map_capability(cap, device_, device_length_, error)) return false;
                    have_device = true;
                }
            } else if (id == kCapabilityMsix && msix_capability_ == 0) {
                msix_capability_ = cap;
                msix_table_size_ =
                    static_cast<uint16_t>((pci_read16(slot, static_cast<uint8_t>(cap + 2)) & 0x7ff) + 1);
                const uint32_t table = pci_read32(slot, static_cast<uint8_t>(cap + 4));
                const uint64_t base = bar_address(static_cast<uint8_t>(table & 7), error);
                if (base == 0) return false;
                msix_table_ = base + (table & ~7U);
            }
            cap = static_cast<uint8_t>(pci_read8(slot, static_cast<uint8_t>(cap + 1)) & 0xfc);
        }
        if (!have_common || !have_notify || !have_device) {
            put_device(error);
            error.put(": missing virtio capability:");
            if (!have_common) error.put(" common");
            if (!have_notify) error.put(" notify");
            if (!have_device) error.put(" device");
            return false;
        }
        return true;
    }
    constexpr char kHex[] = "0123456789abcdef";
    error.put("no virtio device 1af4:");
    for (int shift = 12; shift >= 0; shift -= 4)
        error.put(kHex[(device_id >> shift) & 15]);
    error.put(" number ").put_u64(index).put(" on PCI bus 0 (");
    error.put_u64(found_any).put(device_id == kVirtioNetDevice ? " found; does the VM have --net?)"
                                                               : " found; does the VM have --disk?)");
    return false;
}

uint8_t VirtioPciDevice::status() const {
    return read8(common(kDeviceStatus));
}

bool VirtioPciDevice::reset(Line& error) {
    write8(common(kDeviceStatus), 0);
    const uint64_t deadline = read_ticks() + tick_hz();
    while (read8(common(kDeviceStatus)) != 0) {
        if (read_ticks() > deadline) {
            put_device(error);
            error.put(": device_status still ").put_hex(status()).put(" 1 s after a reset");
            return false;
        }
        cpu_relax();
    }
    return true;
}

void VirtioPciDevice::fail() {
    write8(common(kDeviceStatus), static_cast<uint8_t>(status() | kStatusFailed));
}

bool VirtioPciDevice::negotiate(uint64_t required, uint64_t optional, uint64_t& accepted, Line& error) {
    write8(common(kDeviceStatus), kStatusAcknowledge);
    write8(common(kDeviceStatus), kStatusAcknowledge | kStatusDriver);
    uint64_t offered = 0;
    for (uint32_t select = 0; select < 2; ++select) {
        write32(common(kDeviceFeatureSelect), select);
        offered |= static_cast<uint64_t>(read32(common(kDeviceFeature))) << (32 * select);
    }
    const uint64_t missing = required & ~offered;
    if (missing != 0) {
        put_device(error);
        error.put(": the device does not offer feature bit ")
            .put_u64(static_cast<uint64_t>(__builtin_ctzll(missing)));
        error.put(" (offered ").put_hex(offered).put(')');
        fail();
        return false;
    }
    accepted = required | (optional & offered);
    for (uint32_t select = 0; select < 2; ++select) {
        write32(common(kDriverFeatureSelect), select);
        write32(common(kDriverFeature), static_cast<uint32_t>(accepted >> (32 * select)));
    }
    write8(common(kDeviceStatus), kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
    if ((status() & kStatusFeaturesOk) == 0) {
        put_device(error);
        error.put(": FEATURES_OK did not stick (features ").put_hex(accepted).put(", status ");
        error.put_hex(status()).put(')');
        fail();
        return false;
    }
    return true;
}

bool VirtioPciDevice::enable_msix(uint16_t entry, uint8_t vector, uint32_t apic_id, Line& error) {
    if (msix_capability_ == 0 || entry >= msix_table_size_) {
        put_device(error);
        error.put(": no MSI-X table entry ").put_u64(entry).put(" (table of ").put_u64(msix_table_size_);
        error.put(" entries); use wait=poll");
        return false;
    }
    auto* slot = reinterpret_cast<volatile uint8_t*>(msix_table_ + 16ULL * entry);
    write32(slot + 0, 0xfee00000U | ((apic_id & 0xff) << 12)); // fixed delivery, physical destination
    write32(slot + 4, 0);
    write32(slot + 8, vector); // edge, fixed
    write32(slot + 12, 0);     // unmasked
    const auto control_offset = static_cast<uint8_t>(msix_capability_ + 2);
    const uint16_t control = pci_read16(slot_, control_offset);
    pci_write16(slot_, control_offset, static_cast<uint16_t>((control | kMsixEnable) & ~kMsixFunctionMask));
    if ((pci_read16(slot_, control_offset) & kMsixEnable) == 0) {
        put_device(error);
        error.put(": MSI-X enable did not stick");
        return false;
    }
    write16(common(kConfigMsixVector), kNoVector); // no configuration-change interrupts
    return true;
}

bool VirtioPciDevice::setup_queue(uint16_t queue, SplitRing& ring, uint16_t size_limit, uint16_t msix_vector,
                                  uint16_t& size, uint64_t& notify_address, Line& error) {
    if (queue >= read16(common(kNumQueues))) {
        put_device(error);
        error.put(": no queue ")
            .put_u64(queue)
            .put(" (num_queues ")
            .put_u64(read16(common(kNumQueues)))
            .put(')');
        return false;
    }
    write16(common(kQueueSelect), queue);
    const uint16_t maximum = read16(common(kQueueSize));
    if (maximum == 0) {
        put_device(error);
        error.put(": queue ").put_u64(queue).put(" is not available (queue_size 0)");
        return false;
    }
    uint16_t wanted = maximum < size_limit ? maximum : size_limit;
    if (wanted > kQueueMaxSize) wanted = kQueueMaxSize;
    size = 1;
    while (static_cast<uint32_t>(size) * 2 <= wanted)
        size = static_cast<uint16_t>(size * 2);
    write16(common(kQueueSize), size);
    const auto put64 = [this](uint32_t offset, const void* address) {
        const auto value = reinterpret_cast<uint64_t>(address);
        write32(common(offset), static_cast<uint32_t>(value));
        write32(common(offset + 4), static_cast<uint32_t>(value >> 32));
    };
    put64(kQueueDesc, &ring.desc[0]);
    put64(kQueueDriver, &ring.avail);
    put64(kQueueDevice, &ring.used);
    write16(common(kQueueMsixVector), msix_vector);
    if (read16(common(kQueueMsixVector)) != msix_vector) {
        put_device(error);
        error.put(": queue ").put_u64(queue).put(" refused MSI-X vector ").put_u64(msix_vector);
        return false;
    }
    const uint16_t notify_off = read16(common(kQueueNotifyOff));
    const uint64_t notify_offset = static_cast<uint64_t>(notify_off) * notify_multiplier_;
    if (notify_offset + 2 > notify_length_) {
        put_device(error);
        error.put(": queue ").put_u64(queue).put("'s notify offset ").put_hex(notify_offset);
        error.put(" lies outside the notify region of ").put_u64(notify_length_).put(" bytes");
        return false;
    }
    notify_address = notify_ + notify_offset;
    write16(common(kQueueEnable), 1);
    return true;
}

bool VirtioPciDevice::driver_ok(Line& error) {
    write8(common(kDeviceStatus), kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk);
    const uint8_t now = status();
    if ((now & kStatusDriverOk) == 0 || (now & kStatusNeedsReset) != 0) {
        put_device(error);
        error.put(": the device did not accept DRIVER_OK (status ").put_hex(now).put(')');
        return false;
    }
    return true;
}

uint32_t VirtioPciDevice::config_u32(uint32_t offset) const {
    return read32(reinterpret_cast<volatile uint8_t*>(device_ + offset));
}

uint64_t VirtioPciDevice::config_u64(uint32_t offset) const {
    for (unsigned attempt = 0; attempt < 100; ++attempt) {
        const uint8_t before = read8(common(kConfigGeneration));
        const uint64_t value = config_u32(offset) | static_cast<uint64_t>(config_u32(offset + 4)) << 32;
        if (read8(common(kConfigGeneration)) == before) return value;
    }
    return config_u32(offset) | static_cast<uint64_t>(config_u32(offset + 4)) << 32;
}

void VirtioPciDevice::name_into(Text prefix, char* out) const {
    constexpr char kHex[] = "0123456789abcdef";
    size_t at = 0;
    for (size_t i = 0; i < prefix.size; ++i)
        out[at++] = prefix[i];
    const char tail[] = {'0', '0', ':', kHex[(slot_ >> 4) & 1], kHex[slot_ & 15], '.', '0'};
    for (char c : tail)
        out[at++] = c;
    out[at] = '\0';
}

} // namespace vmmlab::guest::kernel
