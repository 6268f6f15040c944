// The tiny guest's modern virtio-pci driver core (virtio 1.2, 4.1): PCI configuration mechanism #1 on
// bus 0, the virtio capabilities (common, notify with its multiplier, ISR, device configuration) and
// MSI-X found through the capability list, BAR addresses read from configuration space (the monitor has
// assigned them), the device-status handshake, and split virtqueues in guest RAM (2.7).
//
// Everything a device can get wrong (no capability, a BAR that is not assigned or lies beyond the identity
// map, FEATURES_OK that does not stick, a queue it will not take, a reset that never finishes) is an error
// line for the caller, never a hang: every wait is bounded by the TSC.
#pragma once

#include <stdint.h>

#include "guest/workloads/text.hpp"

namespace vmmlab::guest::kernel {

// PCI configuration mechanism #1 (ports 0xCF8/0xCFC): bus 0, function 0 of `slot`.
uint32_t pci_read32(unsigned slot, uint8_t offset);
uint16_t pci_read16(unsigned slot, uint8_t offset);
uint8_t pci_read8(unsigned slot, uint8_t offset);
void pci_write16(unsigned slot, uint8_t offset, uint16_t value);

inline constexpr uint16_t kVirtioVendor = 0x1af4;
inline constexpr uint16_t kVirtioNetDevice = 0x1041;   // 0x1040 + device type 1
inline constexpr uint16_t kVirtioBlockDevice = 0x1042; // 0x1040 + device type 2

inline constexpr uint8_t kStatusAcknowledge = 1;
inline constexpr uint8_t kStatusDriver = 2;
inline constexpr uint8_t kStatusDriverOk = 4;
inline constexpr uint8_t kStatusFeaturesOk = 8;
inline constexpr uint8_t kStatusNeedsReset = 0x40;
inline constexpr uint8_t kStatusFailed = 0x80;

inline constexpr unsigned kFeatureVersion1 = 32;
inline constexpr uint16_t kNoVector = 0xffff;

// Split virtqueue layout (virtio 1.2, 2.7).
inline constexpr uint16_t kDescNext = 1;
inline constexpr uint16_t kDescWrite = 2;
inline constexpr uint16_t kAvailNoInterrupt = 1;
inline constexpr uint16_t kUsedNoNotify = 1;
inline constexpr uint16_t kQueueMaxSize = 256;

struct VirtqDesc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

struct VirtqAvail {
    uint16_t flags;
    uint16_t idx;
    uint16_t ring[kQueueMaxSize];
    uint16_t used_event; // only with EVENT_IDX, which this driver does not negotiate
};

struct VirtqUsedElem {
    uint32_t id;
    uint32_t len;
};

struct VirtqUsed {
    uint16_t flags;
    uint16_t idx;
    VirtqUsedElem ring[kQueueMaxSize];
    uint16_t avail_event;
};

// The memory of one queue of up to kQueueMaxSize entries; smaller queues use the front of each array
// (the areas start at the same addresses whatever the size, and the tails are unused without EVENT_IDX).
struct alignas(4096) SplitRing {
    VirtqDesc desc[kQueueMaxSize];
    VirtqAvail avail;
    alignas(4) VirtqUsed used;
};

class VirtioPciDevice {
public:
    // Finds the `index`-th function (0-based, in slot order) with vendor 1AF4 and `device_id` on bus 0,
    // turns on memory decoding and bus mastering, and locates its capabilities.
    bool find(uint16_t device_id, unsigned index, Line& error);
    unsigned slot() const { return slot_; }
    // "`prefix`00:SS.0" (SS the slot in hex) into `out`, which holds prefix.size + 8 bytes at least.
    void name_into(Text prefix, char* out) const;

    // Writes 0 to device_status and waits (1 s at most) until it reads 0.
    bool reset(Line& error);
    // ACKNOWLEDGE, DRIVER, then features: `required` must all be offered (else the error names the first
    // missing bit), `optional` is taken where offered; FEATURES_OK must read back. `accepted` is what was
    // written.
    bool negotiate(uint64_t required, uint64_t optional, uint64_t& accepted, Line& error);
    // Programs MSI-X table entry `entry` with a fixed, edge-triggered message for `vector` to the local
    // APIC `apic_id`, unmasks it and enables MSI-X for the function.
    bool enable_msix(uint16_t entry, uint8_t vector, uint32_t apic_id, Line& error);
    // Sets queue `queue` up on `ring` with at most `size_limit` entries (the device's maximum if that is
    // smaller; rounded down to a power of two) and MSI-X vector `msix_vector` (kNoVector for none),
    // enables it and returns its size and notify address.
    bool setup_queue(uint16_t queue, SplitRing& ring, uint16_t size_limit, uint16_t msix_vector,
                     uint16_t& size, uint64_t& notify_address, Line& error);
    // Sets DRIVER_OK and checks the device did not ask for a reset.
    bool driver_ok(Line& error);
    // Writes FAILED (the driver gives up on the device).
    void fail();
    uint8_t status() const;

    // Device-specific configuration, read under the config_generation protocol (4.1.4.3.1).
    uint32_t config_u32(uint32_t offset) const;
    uint64_t config_u64(uint32_t offset) const;
    uint32_t device_config_length() const { return device_length_; }

private:
    volatile uint8_t* common(uint32_t offset) const {
        return reinterpret_cast<volatile uint8_t*>(common_ + offset);
    }
    uint64_t bar_address(uint8_t bar, Line& error) const;
    bool map_capability(uint8_t cap, uint64_t& address, uint32_t& length, Line& error) const;
    void put_device(Line& line) const;

    unsigned slot_ = 0;
    uint64_t common_ = 0;
    uint64_t notify_ = 0;
    uint32_t notify_length_ = 0;
    uint32_t notify_multiplier_ = 0;
    uint64_t device_ = 0;
    uint32_t device_length_ = 0;
    uint8_t msix_capability_ = 0;
    uint16_t msix_table_size_ = 0;
    uint64_t msix_table_ = 0;
};

} // namespace vmmlab::guest::kernel
