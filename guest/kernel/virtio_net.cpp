// The tiny guest's virtio-net driver (virtio 1.2, 5.1) behind guest/workloads/platform.hpp's net_*
// functions: the first virtio-net function, VERSION_1 (+ MAC where offered) and nothing else, so every
// buffer starts with the 12-byte virtio_net_hdr_v1 and each received frame arrives in one buffer. Receive
// queue 0 holds kRxBuffers single-descriptor buffers of kBufferBytes (descriptor i is buffer i; a consumed
// buffer is posted again at once); transmit queue 1 uses descriptor s for slot s, one descriptor with the
// zeroed header and the frame. No interrupts: both used rings are polled, every wait is bounded by the TSC.
#include "guest/kernel/kernel.hpp"
#include "guest/kernel/virtio_pci.hpp"
#include "guest/workloads/cpu.hpp"
#include "guest/workloads/platform.hpp"

namespace vmmlab::guest::platform {
namespace {

using kernel::VirtioPciDevice;

constexpr unsigned kFeatureMac = 5;
constexpr uint32_t kHeaderBytes = 12; // virtio_net_hdr_v1: flags, gso_type, hdr_len, gso_size, csum_*,
                                      // num_buffers
constexpr uint32_t kBufferBytes = 2048;
constexpr uint16_t kRxBuffers = 32;
constexpr uint16_t kTxSlots = 32;

alignas(4096) kernel::SplitRing g_rx_ring;
alignas(4096) kernel::SplitRing g_tx_ring;
alignas(64) uint8_t g_rx_buffers[kRxBuffers][kBufferBytes];
alignas(64) uint8_t g_tx_buffers[kTxSlots][kBufferBytes];

struct Driver {
    VirtioPciDevice pci;
    bool open = false;
    uint16_t rx_size = 0;
    uint16_t tx_size = 0;
    uint16_t rx_buffers = 0;
    uint16_t rx_avail = 0;     // the driver's copy of the receive avail.idx
    uint16_t rx_used_seen = 0; // receive used entries consumed
    uint16_t tx_avail = 0;
    uint16_t tx_used_seen = 0;
    uint16_t tx_slots = 0;
    uint64_t rx_notify = 0;
    uint64_t tx_notify = 0;
    uint64_t sent = 0;
    char name[sizeof("virtio-net 00:1f.0")] = {};
};

constinit Driver g_driver;

void compiler_barrier() {
    asm volatile("" ::: "memory");
}

uint16_t read_index(const uint16_t& index) {
    return *reinterpret_cast<const volatile uint16_t*>(&index);
}

void kick(const kernel::SplitRing& ring, uint64_t notify_address, uint16_t queue) {
    asm volatile("mfence" ::: "memory"); // the index store before the suppression flag is read
    if ((read_index(ring.used.flags) & kernel::kUsedNoNotify) != 0) return;
    *reinterpret_cast<volatile uint16_t*>(notify_address) = queue;
}

[[noreturn]] void device_panic(Text what, uint64_t value) {
    Line line;
    line.put(Text{g_driver.name, sizeof(g_driver.name) - 1}).put(": ").put(what).put(' ').put_u64(value);
    line.put(" (device_status ").put_hex(g_driver.pci.status()).put(", rx used idx ");
    line.put_u64(read_index(g_rx_ring.used.idx))
        .put(", tx used idx ")
        .put_u64(read_index(g_tx_ring.used.idx));
    line.put(", tx avail idx ").put_u64(g_driver.tx_avail).put(')');
    kernel::panic(line.text());
}

void post_rx(uint16_t buffer) {
    g_rx_ring.avail.ring[g_driver.rx_avail % g_driver.rx_size] = buffer;
    ++g_driver.rx_avail;
    compiler_barrier(); // the ring entry before the index (x86 keeps stores in order)
    *reinterpret_cast<volatile uint16_t*>(&g_rx_ring.avail.idx) = g_driver.rx_avail;
}

// Transmit slots the device has finished with.
void harvest_tx() {
    const uint16_t produced = read_index(g_tx_ring.used.idx);
    compiler_barrier();
    const auto pending = static_cast<uint16_t>(produced - g_driver.tx_used_seen);
    const auto in_flight = static_cast<uint16_t>(g_driver.tx_avail - g_driver.tx_used_seen);
    if (pending > in_flight) device_panic("transmit used index ran ahead of the frames sent by", pending);
    for (; g_driver.tx_used_seen != produced; ++g_driver.tx_used_seen) {
        const uint32_t id = g_tx_ring.used.ring[g_driver.tx_used_seen % g_driver.tx_size].id;
        if (id >= g_driver.tx_slots) device_panic("transmit used ring returned descriptor id", id);
    }
}

} // namespace

bool net_supported() {
    return true;
}

bool net_open(NetInfo& info, Line& error) {
    if (g_driver.open) net_close();
    g_driver = Driver{};
    VirtioPciDevice& pci = g_driver.pci;
    if (!pci.find(kernel::kVirtioNetDevice, 0, error)) return false;
    pci.name_into("virtio-net ", g_driver.name);
    if (!pci.reset(error)) return false;
    uint64_t features = 0;
    if (!pci.negotiate(1ULL << kernel::kFeatureVersion1, 1ULL << kFeatureMac, features, error)) return false;
    __builtin_memset(&g_rx_ring, 0, sizeof g_rx_ring); // a device opened before left its indices here
    __builtin_memset(&g_tx_ring, 0, sizeof g_tx_ring);
    if (!pci.setup_queue(0, g_rx_ring, kRxBuffers, kernel::kNoVector, g_driver.rx_size, g_driver.rx_notify,
                         error) ||
        !pci.setup_queue(1, g_tx_ring, kTxSlots, kernel::kNoVector, g_driver.tx_size, g_driver.tx_notify,
                         error)) {
        pci.fail();
        return false;
    }
    g_rx_ring.avail.flags = kernel::kAvailNoInterrupt;
    g_tx_ring.avail.flags = kernel::kAvailNoInterrupt;
    g_driver.rx_buffers = g_driver.rx_size;
    g_driver.tx_slots = g_driver.tx_size;
    for (uint16_t i = 0; i < g_driver.rx_buffers; ++i)
        g_rx_ring.desc[i] = {reinterpret_cast<uint64_t>(g_rx_buffers[i]), kBufferBytes, kernel::kDescWrite,
                             0};
    for (uint16_t i = 0; i < g_driver.tx_slots; ++i)
        g_tx_ring.desc[i] = {reinterpret_cast<uint64_t>(g_tx_buffers[i]), 0, 0, 0};
    for (uint16_t i = 0; i < g_driver.rx_buffers; ++i)
        post_rx(i);
    if (!pci.driver_ok(error)) return false;
    kick(g_rx_ring, g_driver.rx_notify, 0);
    g_driver.open = true;

    info.device_mac = (features >> kFeatureMac) & 1;
    if (info.device_mac && pci.device_config_length() >= 8) {
        const uint32_t low = pci.config_u32(0);
        const uint32_t high = pci.config_u32(4);
        for (unsigned i = 0; i < 4; ++i)
            info.mac[i] = static_cast<uint8_t>(low >> (8 * i));
        info.mac[4] = static_cast<uint8_t>(high);
        info.mac[5] = static_cast<uint8_t>(high >> 8);
    } else {
        info.device_mac = false;
        constexpr uint8_t kFallback[6] = {0x02, 0x00, 0x00, 0x00, 0x00, 0x01}; // locally administered
        for (unsigned i = 0; i < 6; ++i)
            info.mac[i] = kFallback[i];
    }
    info.queue_size = g_driver.rx_size < g_driver.tx_size ? g_driver.rx_size : g_driver.tx_size;
    info.transport = Text{g_driver.name, sizeof(g_driver.name) - 1};
    return true;
}

void net_send(const void* frame, size_t bytes, uint64_t timeout_ticks) {
    if (!g_driver.open || bytes > kNetMaxFrameBytes)
        kernel::panic("net_send: no device open, or a frame longer than 1514 bytes");
    const uint64_t deadline = read_ticks() + timeout_ticks;
    for (;;) {
        harvest_tx();
        if (static_cast<uint16_t>(g_driver.tx_avail - g_driver.tx_used_seen) < g_driver.tx_slots) break;
        if (read_ticks() > deadline)
            device_panic("no transmit slot came free; frames in flight",
                         static_cast<uint16_t>(g_driver.tx_avail - g_driver.tx_used_seen));
        cpu_relax();
    }
    const uint16_t slot = static_cast<uint16_t>(g_driver.tx_avail % g_driver.tx_slots);
    uint8_t* buffer = g_tx_buffers[slot];
    __builtin_memset(buffer, 0, kHeaderBytes);
    __builtin_memcpy(buffer + kHeaderBytes, frame, bytes);
    g_tx_ring.desc[slot].len = static_cast<uint32_t>(kHeaderBytes + bytes);
    g_tx_ring.avail.ring[g_driver.tx_avail % g_driver.tx_size] = slot;
    ++g_driver.tx_avail;
    compiler_barrier();
    *reinterpret_cast<volatile uint16_t*>(&g_tx_ring.avail.idx) = g_driver.tx_avail;
    kick(g_tx_ring, g_driver.tx_notify, 1);
    ++g_driver.sent;
}

size_t net_receive(void* buffer, size_t capacity, uint64_t timeout_ticks) {
    if (!g_driver.open) kernel::panic("net_receive: no device open");
    const uint64_t deadline = read_ticks() + timeout_ticks;
    for (;;) {
        const uint16_t produced = read_index(g_rx_ring.used.idx);
        compiler_barrier();
        const auto pending = static_cast<uint16_t>(produced - g_driver.rx_used_seen);
        if (pending > g_driver.rx_size) device_panic("receive used index ran ahead of the ring by", pending);
        if (pending != 0) {
            const auto& element = g_rx_ring.used.ring[g_driver.rx_used_seen % g_driver.rx_size];
            const uint32_t id = *reinterpret_cast<const volatile uint32_t*>(&element.id);
            const uint32_t len = *reinterpret_cast<const volatile uint32_t*>(&element.len);
            if (id >= g_driver.rx_buffers) device_panic("receive used ring returned descriptor id", id);
            if (len > kBufferBytes) device_panic("receive used length beyond the buffer:", len);
            ++g_driver.rx_used_seen;
            size_t frame = len > kHeaderBytes ? len - kHeaderBytes : 0;
            if (frame > capacity) frame = capacity;
            __builtin_memcpy(buffer, g_rx_buffers[id] + kHeaderBytes, frame);
            post_rx(static_cast<uint16_t>(id));
            kick(g_rx_ring, g_driver.rx_notify, 0);
            if (frame > 0) return frame;
            continue; // an empty buffer: nothing for the caller
        }
        if (read_ticks() > deadline) return 0;
        cpu_relax();
    }
}

uint64_t net_frames_sent() {
    return g_driver.sent;
}

void net_close() {
    if (!g_driver.open) return;
    Line ignored;
    (void)g_driver.pci.reset(ignored);
    g_driver.open = false;
}

} // namespace vmmlab::guest::platform
