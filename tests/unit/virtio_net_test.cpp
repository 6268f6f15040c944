// VirtioNet against the mock driver, over a socketpair backend: one datagram = one frame with its
// 12-byte virtio_net_hdr_v1. The device's receive side runs on its own thread, so tests wait for what it
// does (used elements, counters) with a generous deadline; none asserts a timing.
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstring>
#include <functional>
#include <mutex>
#include <numeric>
#include <optional>
#include <thread>
#include <vector>

#include <poll.h>
#include <sys/socket.h>

#include "cli/run_command.hpp"
#include "config/vm_config.hpp"
#include "devices/virtio/net.hpp"
#include "devices/virtio/tap.hpp"
#include "virtio_mock_driver.hpp"

using namespace vmmlab;
using namespace vmmlab::virtio;
using vmmlab::testing::MockBuffer;
using vmmlab::testing::MockDriver;
using vmmlab::testing::MockRam;

namespace {

class RecordingSignals final : public DeviceSignals {
public:
    void used_buffers(std::uint16_t queue) override { ++interrupts[queue]; }
    void config_changed() override {}
    void needs_reset() override { ++resets; }
    std::atomic<int> interrupts[2] = {0, 0};
    std::atomic<int> resets = 0;
};

// Polls `condition` until it holds or 10 s pass (then the caller's REQUIRE fails with the state seen).
bool eventually(const std::function<bool()>& condition) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!condition()) {
        if (std::chrono::steady_clock::now() > deadline) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return true;
}

std::uint64_t bit(unsigned feature) {
    return 1ULL << feature;
}

// The next datagram on `fd`, waiting up to 10 s; nothing if none came. (No Catch assertions: threads use it.)
std::optional<std::vector<std::byte>> receive_datagram(int fd) {
    pollfd ready{fd, POLLIN, 0};
    if (::poll(&ready, 1, 10000) != 1) return std::nullopt;
    std::vector<std::byte> frame(net::kMaxFrameBytes);
    const ssize_t got = ::recv(fd, frame.data(), frame.size(), MSG_DONTWAIT);
    if (got < 0) return std::nullopt;
    frame.resize(static_cast<std::size_t>(got));
    return frame;
}

// A frame: a header and `length` payload bytes of a pattern seeded by `seed`.
std::vector<std::byte> make_frame(std::size_t length, unsigned seed, net::Header header = {}) {
    std::vector<std::byte> frame(net::kHeaderBytes + length);
    std::memcpy(frame.data(), &header, sizeof header);
    for (std::size_t i = 0; i < length; ++i)
        frame[net::kHeaderBytes + i] = static_cast<std::byte>((i * 31 + seed * 7 + i / 251) & 0xff);
    return frame;
}

constexpr std::uint64_t kRxBase = 0x1000;    // rx rings: 0x1000-0x2fff
constexpr std::uint64_t kTxBase = 0x4000;    // tx rings: 0x4000-0x5fff (size <= 128)
constexpr std::uint64_t kBuffers = 0x100000; // guest buffers from here

struct NetRig {
    MockRam ram{4 << 20};
    std::unique_ptr<MockDriver> rx_driver, tx_driver;
    RecordingSignals signals;
    DatagramSocketBackend* backend = nullptr;
    std::unique_ptr<VirtioNet> net;
    std::uint64_t features = 0;

    explicit NetRig(std::uint64_t without = 0, std::uint16_t rx_size = 16, std::uint16_t tx_size = 16)
        : rx_driver(std::make_unique<MockDriver>(ram, rx_size, kRxBase)),
          tx_driver(std::make_unique<MockDriver>(ram, tx_size, kTxBase)) {
        auto owned = std::make_unique<DatagramSocketBackend>();
        backend = owned.get();
        net = std::make_unique<VirtioNet>(std::move(owned), NetOptions{});
        features = net->features() & ~without;
        REQUIRE(activate());
    }
    MockDriver& rx() { return *rx_driver; }
    MockDriver& tx() { return *tx_driver; }
    // After a reset: fresh rings in place of the old ones, as a driver sets them up again.
    void new_rings() {
        ram.fill(kRxBase, 0x8000 - kRxBase, std::byte{0});
        rx_driver = std::make_unique<MockDriver>(ram, 16, kRxBase);
        tx_driver = std::make_unique<MockDriver>(ram, 16, kTxBase);
    }
    std::expected<void, std::string> activate() {
        std::vector<Virtqueue> queues;
        for (auto* driver : {rx_driver.get(), tx_driver.get()}) {
            auto queue = Virtqueue::activate(ram.memory(), driver->layout(), features);
            REQUIRE(queue);
            queues.push_back(std::move(*queue));
        }
        return net->activate(Activation{ram.memory(), features, std::move(queues), signals});
    }

    // The guest transmits `frame` split into pieces of at most `piece` bytes.
    void transmit(const std::vector<std::byte>& frame, std::size_t piece, std::uint64_t at) {
        std::vector<MockBuffer> chain;
        for (std::size_t done = 0; done < frame.size(); done += piece) {
            const std::size_t length = std::min(piece, frame.size() - done);
            std::memcpy(ram.bytes().data() + at + done * 2, frame.data() + done, length);
            chain.push_back({at + done * 2, static_cast<std::uint32_t>(length), false});
        }
        tx().add_chain(chain);
    }
    // The peer sends one datagram (the device receives it).
    void inject(const std::vector<std::byte>& frame) {
        REQUIRE(::send(backend->peer(), frame.data(), frame.size(), 0) == static_cast<ssize_t>(frame.size()));
    }
    // The next datagram the device sent, waiting up to 10 s.
    std::vector<std::byte> collect() {
        auto frame = receive_datagram(backend->peer());
        REQUIRE(frame);
        return *frame;
    }
    bool peer_has_frame() {
        pollfd fd{backend->peer(), POLLIN, 0};
        return ::poll(&fd, 1, 0) == 1;
    }
    // Posts `count` receive buffers of `size` bytes each (one descriptor per chain) and kicks.
    std::vector<std::uint64_t> post_rx(std::size_t count, std::uint32_t size, std::uint64_t at = kBuffers) {
        std::vector<std::uint64_t> addresses;
        for (std::size_t i = 0; i < count; ++i) {
            const std::uint64_t address = at + i * ((size + 0xfffULL) & ~0xfffULL);
            ram.fill(address, size, std::byte{0xee});
            rx().add_chain({{address, size, true}});
            addresses.push_back(address);
        }
        net->notify(net::kReceiveQueue);
        return addresses;
    }
    std::vector<MockDriver::UsedElement> wait_rx_used(std::size_t count) {
        std::vector<MockDriver::UsedElement> used;
        REQUIRE(eventually([&] {
            auto more = rx().take_used();
            used.insert(used.end(), more.begin(), more.end());
            return used.size() >= count;
        }));
        return used;
    }
    std::vector<std::byte> read(std::uint64_t address, std::size_t length) {
        return {ram.bytes().begin() + static_cast<std::ptrdiff_t>(address),
                ram.bytes().begin() + static_cast<std::ptrdiff_t>(address + length)};
    }
};

net::Header header_of(const std::vector<std::byte>& frame) {
    net::Header header;
    std::memcpy(&header, frame.data(), sizeof header);
    return header;
}

} // namespace

TEST_CASE("virtio-net: configuration space holds the MAC, link up and one queue pair", "[virtio-net]") {
    auto device = VirtioNet(std::make_unique<DatagramSocketBackend>(),
                            NetOptions{.mac = {0x52, 0x54, 0x00, 0xab, 0xcd, 0xef}});
    REQUIRE(device.config_size() == 10);
    std::array<std::byte, 16> bytes{};
    device.read_config(0, bytes);
    const std::uint8_t expected[10] = {0x52, 0x54, 0x00, 0xab, 0xcd, 0xef, 1, 0, 1, 0};
    CHECK(std::memcmp(bytes.data(), expected, 10) == 0);
    for (std::size_t i = 10; i < bytes.size(); ++i)
        CHECK(bytes[i] == std::byte{0}); // beyond the structure: zeros
    std::array<std::byte, 2> status{};
    device.read_config(6, status);
    CHECK(std::to_integer<int>(status[0]) == net::kStatusLinkUp);
    device.write_config(0, std::array<std::byte, 1>{std::byte{0xff}}); // ignored
    device.read_config(0, bytes);
    CHECK(std::to_integer<int>(bytes[0]) == 0x52);
    CHECK(device.type() == DeviceType::Net);
    CHECK(device.queue_count() == 2);
    CHECK(device.pci_class() == 0x020000);
}

TEST_CASE("virtio-net: features offered and what the negotiated ones turn on", "[virtio-net]") {
    auto device = VirtioNet(std::make_unique<DatagramSocketBackend>(), NetOptions{});
    const std::uint64_t offered = device.features();
    for (unsigned feature :
         {kFeatureVersion1, kFeatureRingIndirectDesc, kFeatureRingEventIdx, net::kFeatureMac,
          net::kFeatureStatus, net::kFeatureMergeableRxBuffers, net::kFeatureCsum, net::kFeatureGuestCsum,
          net::kFeatureHostTso4, net::kFeatureHostTso6, net::kFeatureGuestTso4, net::kFeatureGuestTso6,
          net::kFeatureHostEcn, net::kFeatureGuestEcn})
        CHECK((offered & bit(feature)) != 0);
    // Not offered: MTU (3), GUEST_UFO (10), HOST_UFO (14), CTRL_VQ (17), MQ (22).
    for (unsigned feature : {3u, 10u, 14u, 17u, 22u})
        CHECK((offered & bit(feature)) == 0);

    SECTION("the backend learns the guest offloads at activation and loses them at reset") {
        NetRig rig;
        CHECK(rig.backend->guest_offloads() == rig.features);
        rig.net->reset();
        CHECK(rig.backend->guest_offloads() == 0);
    }
    SECTION("activation needs both queues") {
        NetRig rig;
        rig.net->reset();
        std::vector<Virtqueue> queues(2);
        auto queue = Virtqueue::activate(rig.ram.memory(), rig.rx().layout(), rig.features);
        REQUIRE(queue);
        queues[0] = std::move(*queue); // transmit queue left inactive
        auto activated =
            rig.net->activate(Activation{rig.ram.memory(), rig.features, std::move(queues), rig.signals});
        REQUIRE_FALSE(activated);
        CHECK_THAT(activated.error(), Catch::Contains("did not enable the receive and transmit queues"));
    }
    SECTION("tap offload flags follow the kernel's rules") {
        const std::uint64_t csum = bit(net::kFeatureGuestCsum);
        CHECK(tap_offload_flags(0) == 0);
        CHECK(tap_offload_flags(csum) == 0x01);
        CHECK(tap_offload_flags(csum | bit(net::kFeatureGuestTso4) | bit(net::kFeatureGuestTso6)) == 0x07);
        CHECK(tap_offload_flags(csum | bit(net::kFeatureGuestTso4) | bit(net::kFeatureGuestEcn)) == 0x0b);
        CHECK(tap_offload_flags(csum | bit(net::kFeatureGuestEcn)) == 0x01); // ECN needs a TSO
        CHECK(tap_offload_flags(bit(net::kFeatureGuestTso4)) == 0);          // TSO needs CSUM
    }
}

TEST_CASE("virtio-net: transmitted frames reach the backend byte-exact with their header", "[virtio-net]") {
    NetRig rig;
    net::Header header{};
    header.flags = net::kHeaderNeedsCsum;
    header.csum_start = 34;
    header.csum_offset = 16;
    header.num_buffers = 0x5555; // meaningless on transmit: the device sends 0
    const auto frame = make_frame(1514, 1, header);
    rig.transmit(frame, 500, kBuffers); // header and data across four buffers
    rig.net->notify(net::kTransmitQueue);

    auto sent = rig.collect();
    REQUIRE(sent.size() == frame.size());
    CHECK(std::equal(sent.begin() + net::kHeaderBytes, sent.end(), frame.begin() + net::kHeaderBytes));
    const auto got = header_of(sent);
    CHECK(got.flags == net::kHeaderNeedsCsum);
    CHECK(got.csum_start == 34);
    CHECK(got.csum_offset == 16);
    CHECK(got.num_buffers == 0);
    auto used = rig.tx().take_used();
    REQUIRE(used.size() == 1);
    CHECK(used[0].length == 0);
    CHECK(rig.signals.interrupts[1] == 1);
    const auto stats = rig.net->stats();
    CHECK(stats.tx_packets == 1);
    CHECK(stats.tx_bytes == 1514);
    CHECK(stats.tx_errors == 0);

    SECTION("several chains per kick: all sent in order, one interrupt") {
        for (unsigned i = 0; i < 5; ++i)
            rig.transmit(make_frame(60 + i, 10 + i), 4096, kBuffers + 0x10000 * (i + 1));
        rig.tx().set_used_event(1); // with EVENT_IDX: interrupt once the used index passes 1
        rig.net->notify(net::kTransmitQueue);
        for (unsigned i = 0; i < 5; ++i) {
            auto next = rig.collect();
            CHECK(next == make_frame(60 + i, 10 + i));
        }
        CHECK(rig.tx().take_used().size() == 5);
        CHECK(rig.signals.interrupts[1] == 2);
        CHECK(rig.net->stats().tx_packets == 6);
    }
    SECTION("a chain too short for a header, or asking for offloads not negotiated, is not sent") {
        rig.tx().add_chain({{kBuffers, 8, false}});
        net::Header tso{};
        tso.gso_type = 0x03; // UDP fragmentation: never offered
        rig.transmit(make_frame(100, 2, tso), 4096, kBuffers + 0x10000);
        rig.net->notify(net::kTransmitQueue);
        CHECK(rig.tx().take_used().size() == 2);
        CHECK_FALSE(rig.peer_has_frame());
        CHECK(rig.net->stats().tx_errors == 2);
        CHECK(rig.signals.resets == 0);
    }
}

TEST_CASE("virtio-net: transmit checks the header against the negotiated features", "[virtio-net]") {
    NetRig rig(bit(net::kFeatureCsum) | bit(net::kFeatureHostTso4));
    net::Header csum{};
    csum.flags = net::kHeaderNeedsCsum;
    net::Header tso4{};
    tso4.gso_type = net::kGsoTcp4;
    net::Header tso6{};
    tso6.gso_type = net::kGsoTcp6;
    rig.transmit(make_frame(100, 1, csum), 4096, kBuffers);
    rig.transmit(make_frame(100, 2, tso4), 4096, kBuffers + 0x10000);
    rig.transmit(make_frame(100, 3, tso6), 4096, kBuffers + 0x20000);
    rig.net->notify(net::kTransmitQueue);
    auto sent = rig.collect(); // only the TSO6 frame: HOST_TSO6 was negotiated
    CHECK(sent == make_frame(100, 3, tso6));
    CHECK_FALSE(rig.peer_has_frame());
    CHECK(rig.net->stats().tx_errors == 2);
}

TEST_CASE("virtio-net: more transmit chains than one burst are all sent", "[virtio-net]") {
    NetRig rig(0, 16, 512);
    const unsigned count = net::kTxBurst + 44;
    for (unsigned i = 0; i < count; ++i)
        rig.transmit(make_frame(64, i), 4096, kBuffers + 0x1000 * i);
    std::vector<std::vector<std::byte>> received;
    std::thread reader([&, peer = rig.backend->peer()] {
        for (unsigned i = 0; i < count; ++i) {
            auto frame = receive_datagram(peer);
            if (!frame) return;
            received.push_back(std::move(*frame));
        }
    });
    rig.net->notify(net::kTransmitQueue); // the device's thread sends what is left after the burst
    reader.join();
    REQUIRE(received.size() == count);
    for (unsigned i = 0; i < count; ++i)
        CHECK(received[i] == make_frame(64, i));
    std::size_t used = 0;
    CHECK(eventually([&] {
        used += rig.tx().take_used().size();
        return used == count;
    }));
}

TEST_CASE("virtio-net: a received frame spans mergeable buffers with num_buffers set", "[virtio-net]") {
    NetRig rig;
    auto buffers = rig.post_rx(4, 512);
    net::Header header{};
    header.flags = net::kHeaderDataValid;
    const auto frame = make_frame(1400, 3, header); // 1412 bytes: 512 + 512 + 388
    rig.inject(frame);
    auto used = rig.wait_rx_used(3);
    REQUIRE(used.size() == 3);
    CHECK(used[0].length == 512);
    CHECK(used[1].length == 512);
    CHECK(used[2].length == 388);
    std::vector<std::byte> landed;
    for (std::size_t i = 0; i < 3; ++i) {
        auto part = rig.read(buffers[i], used[i].length);
        landed.insert(landed.end(), part.begin(), part.end());
    }
    const auto got = header_of(landed);
    CHECK(got.num_buffers == 3);
    CHECK(got.flags == net::kHeaderDataValid);
    CHECK(std::equal(landed.begin() + net::kHeaderBytes, landed.end(), frame.begin() + net::kHeaderBytes));
    CHECK(rig.read(buffers[2] + 388, 4) == std::vector<std::byte>(4, std::byte{0xee})); // nothing past it
    CHECK(rig.signals.interrupts[0] >= 1);
    auto stats = rig.net->stats();
    CHECK(stats.rx_packets == 1);
    CHECK(stats.rx_bytes == 1400);

    SECTION("a small frame takes one buffer, num_buffers 1") {
        const auto small = make_frame(60, 4);
        rig.inject(small);
        auto next = rig.wait_rx_used(1);
        REQUIRE(next.size() == 1);
        CHECK(next[0].length == small.size());
        auto bytes = rig.read(buffers[3], small.size());
        CHECK(header_of(bytes).num_buffers == 1);
        CHECK(std::equal(bytes.begin() + 12, bytes.end(), small.begin() + 12));
    }
}

TEST_CASE("virtio-net: receive waits for buffers instead of dropping, and resumes on a kick",
          "[virtio-net]") {
    NetRig rig;
    std::vector<std::vector<std::byte>> frames;
    for (unsigned i = 0; i < 3; ++i) {
        frames.push_back(make_frame(200 + i, 20 + i));
        rig.inject(frames.back());
    }
    // No buffers: the device takes the first frame in hand and stops reading the backend.
    REQUIRE(eventually([&] { return rig.net->stats().rx_waits == 1; }));
    CHECK(rig.net->stats().rx_dropped == 0);
    CHECK(rig.rx().used_index() == 0);

    // One buffer: one frame lands, the device waits again.
    auto first = rig.post_rx(1, 2048);
    auto used = rig.wait_rx_used(1);
    CHECK(used[0].length == frames[0].size());
    REQUIRE(eventually([&] { return rig.net->stats().rx_waits == 2; }));

    auto rest = rig.post_rx(2, 2048, kBuffers + 0x10000);
    used = rig.wait_rx_used(2);
    REQUIRE(used.size() == 2);
    for (std::size_t i = 0; i < 2; ++i) {
        auto bytes = rig.read(rest[i], used[i].length);
        CHECK(std::equal(bytes.begin() + 12, bytes.end(), frames[i + 1].begin() + 12, frames[i + 1].end()));
    }
    const auto stats = rig.net->stats();
    CHECK(stats.rx_packets == 3);
    CHECK(stats.rx_dropped == 0);
}

TEST_CASE("virtio-net: a frame waits across kicks until enough mergeable buffers arrive", "[virtio-net]") {
    NetRig rig;
    const auto frame = make_frame(3000, 5); // needs three 1024-byte buffers
    rig.inject(frame);
    auto buffers = rig.post_rx(2, 1024);
    REQUIRE(eventually([&] { return rig.net->stats().rx_waits == 1; }));
    CHECK(rig.rx().used_index() == 0); // nothing is returned until the frame is whole
    auto more = rig.post_rx(1, 1024, kBuffers + 0x10000);
    auto used = rig.wait_rx_used(3);
    std::vector<std::byte> landed;
    buffers.push_back(more[0]);
    for (std::size_t i = 0; i < 3; ++i) {
        auto part = rig.read(buffers[i], used[i].length);
        landed.insert(landed.end(), part.begin(), part.end());
    }
    CHECK(header_of(landed).num_buffers == 3);
    CHECK(landed.size() == frame.size());
    CHECK(std::equal(landed.begin() + 12, landed.end(), frame.begin() + 12));
}

TEST_CASE("virtio-net: without MRG_RXBUF a frame takes one chain", "[virtio-net]") {
    NetRig rig(bit(net::kFeatureMergeableRxBuffers));
    // One chain of two descriptors (header buffer + data buffer), as older drivers post.
    rig.rx().add_chain({{kBuffers, 12, true}, {kBuffers + 0x1000, 2048, true}});
    rig.net->notify(net::kReceiveQueue);
    const auto frame = make_frame(1000, 6);
    rig.inject(frame);
    auto used = rig.wait_rx_used(1);
    CHECK(used[0].length == frame.size());
    auto header = rig.read(kBuffers, 12);
    CHECK(header_of(header).num_buffers == 1);
    CHECK(rig.read(kBuffers + 0x1000, 1000) == std::vector<std::byte>(frame.begin() + 12, frame.end()));

    SECTION("a frame larger than the chain is dropped and counted, the chain returned empty") {
        rig.post_rx(1, 512);
        rig.inject(make_frame(1000, 7));
        auto next = rig.wait_rx_used(1);
        CHECK(next[0].length == 0);
        CHECK(rig.net->stats().rx_dropped == 1);
        rig.post_rx(1, 2048, kBuffers + 0x10000);
        rig.inject(make_frame(100, 8));
        CHECK(rig.wait_rx_used(1)[0].length == 112);
    }
}

TEST_CASE("virtio-net: received headers are held to the negotiated offloads", "[virtio-net]") {
    NetRig rig(bit(net::kFeatureGuestCsum) | bit(net::kFeatureGuestTso4) | bit(net::kFeatureGuestTso6) |
               bit(net::kFeatureGuestEcn));
    auto buffers = rig.post_rx(2, 2048);
    net::Header gso{};
    gso.gso_type = net::kGsoTcp4;
    rig.inject(make_frame(100, 1, gso)); // the driver cannot take it: dropped
    net::Header valid{};
    valid.flags = net::kHeaderDataValid;
    rig.inject(make_frame(100, 2, valid)); // DATA_VALID cleared without GUEST_CSUM
    auto used = rig.wait_rx_used(1);
    auto bytes = rig.read(buffers[0], used[0].length);
    CHECK(header_of(bytes).flags == 0);
    CHECK(std::equal(bytes.begin() + 12, bytes.end(), make_frame(100, 2).begin() + 12));
    CHECK(rig.net->stats().rx_dropped == 1);
}

TEST_CASE("virtio-net: a frame that can never fit the ring is dropped, not waited for", "[virtio-net]") {
    NetRig rig(0, 4);
    rig.post_rx(4, 64);
    rig.inject(make_frame(1000, 1));
    auto used = rig.wait_rx_used(4);
    for (const auto& element : used)
        CHECK(element.length == 0);
    CHECK(rig.net->stats().rx_dropped == 1);
    // The ring still works for frames that fit.
    auto buffers = rig.post_rx(2, 64, kBuffers + 0x10000);
    const auto frame = make_frame(80, 2);
    rig.inject(frame);
    used = rig.wait_rx_used(2);
    CHECK(used[0].length + used[1].length == frame.size());
}

TEST_CASE("virtio-net: runt frames from the backend are counted and skipped", "[virtio-net]") {
    NetRig rig;
    auto buffers = rig.post_rx(1, 2048);
    rig.inject(std::vector<std::byte>(5, std::byte{1}));
    const auto frame = make_frame(64, 3);
    rig.inject(frame);
    auto used = rig.wait_rx_used(1);
    CHECK(used[0].length == frame.size());
    CHECK(rig.net->stats().rx_errors == 1);
}

TEST_CASE("virtio-net: malformed rings are rejected without a crash and need a reset", "[virtio-net]") {
    NetRig rig;
    SECTION("a descriptor loop in the receive ring") {
        rig.rx().write_descriptor(0, {kBuffers, 2048, kDescriptorWrite | kDescriptorNext, 1});
        rig.rx().write_descriptor(1, {kBuffers + 4096, 2048, kDescriptorWrite | kDescriptorNext, 0});
        rig.rx().publish(0);
        rig.net->notify(net::kReceiveQueue);
        rig.inject(make_frame(100, 1));
        REQUIRE(eventually([&] { return rig.signals.resets == 1; }));
        CHECK(rig.net->stats().ring_errors == 1);
        CHECK(rig.rx().used_index() == 0);
    }
    SECTION("a transmit buffer outside guest RAM") {
        rig.tx().add_chain({{(4ULL << 20) - 8, 64, false}});
        rig.net->notify(net::kTransmitQueue);
        CHECK(rig.signals.resets == 1);
        CHECK(rig.net->stats().ring_errors == 1);
        rig.transmit(make_frame(60, 1), 4096, kBuffers);
        rig.net->notify(net::kTransmitQueue); // broken until reset: nothing more is sent
        CHECK_FALSE(rig.peer_has_frame());
    }
    SECTION("a receive chain with a device-readable buffer is returned unused") {
        rig.rx().add_chain({{kBuffers, 2048, false}});
        auto buffers = rig.post_rx(1, 2048, kBuffers + 0x10000);
        const auto frame = make_frame(64, 2);
        rig.inject(frame);
        auto used = rig.wait_rx_used(2);
        CHECK(used[0].length == 0);
        CHECK(used[1].length == frame.size());
        CHECK(rig.net->stats().rx_errors == 1);
    }
    // After a reset the device serves freshly set-up rings again.
    rig.net->reset();
    rig.new_rings();
    REQUIRE(rig.activate());
    while (rig.peer_has_frame())
        rig.collect(); // frames injected above and still queued
    auto buffers = rig.post_rx(1, 2048, kBuffers + 0x20000);
    const auto frame = make_frame(90, 9);
    rig.inject(frame);
    auto used = rig.wait_rx_used(1);
    auto bytes = rig.read(buffers[0], used[0].length);
    CHECK(std::equal(bytes.begin() + 12, bytes.end(), frame.begin() + 12, frame.end()));
}

TEST_CASE("virtio-net: --net text parses, prints back and names what is wrong", "[virtio-net][config]") {
    auto net = parse_net("tap=tap0,mac=52:54:00:12:34:56,vhost=on");
    REQUIRE(net);
    CHECK(net->tap == "tap0");
    CHECK(net->mac == net::MacAddress{0x52, 0x54, 0x00, 0x12, 0x34, 0x56});
    CHECK(net->vhost);
    CHECK(to_string(*net) == "tap=tap0,mac=52:54:00:12:34:56,vhost=on");
    CHECK(parse_net(to_string(*net)) == net);

    auto created = parse_net("tap=");
    REQUIRE(created);
    CHECK(created->tap.empty());
    CHECK_FALSE(created->mac);
    CHECK(parse_net(to_string(*created)) == created);
    CHECK(parse_net("") == created);
    CHECK(parse_net("mac=52:54:00:AA:bb:0C")->mac == net::MacAddress{0x52, 0x54, 0x00, 0xaa, 0xbb, 0x0c});

    CHECK(parse_net("tap0").error() == "'tap0' is not KEY=VALUE (tap, mac, vhost)");
    CHECK(parse_net("tap=a,mac=52:54:00:12:34").error() ==
          "mac='52:54:00:12:34' is not a MAC address (e.g. 52:54:00:12:34:56)");
    CHECK(parse_net("mac=01:00:5e:00:00:01").error() ==
          "mac='01:00:5e:00:00:01' is a multicast address; a NIC needs a unicast one");
    CHECK(parse_net("mac=00:00:00:00:00:00").error() == "mac='00:00:00:00:00:00' is all zeros");
    CHECK(parse_net("mac=52-54-00-12-34-56").has_value() == false);
    CHECK(parse_net("tap=a,vhost=yes").error() == "vhost='yes' is not on or off");
    CHECK(parse_net("tap=a,queues=2").error() == "unknown key 'queues' (tap, mac, vhost)");
    CHECK(parse_net("tap=a,tap=b").error() == "tap given twice");
    CHECK(parse_net("tap=averyverylongname").error() ==
          "tap='averyverylongname' is longer than 15 characters (an interface name)");
    CHECK(parse_net("tap=a/b").error() == "tap='a/b' is not an interface name");

    CHECK(default_mac(0) == net::MacAddress{0x52, 0x54, 0x00, 0x76, 0x6d, 0x00});
    CHECK(default_mac(3) == net::MacAddress{0x52, 0x54, 0x00, 0x76, 0x6d, 0x03});
}

TEST_CASE("virtio-net: nets in JSON, to_json, describe and validation", "[virtio-net][config]") {
    auto config = apply_json(VmConfig{}, nlohmann::json::parse(R"({"nets": ["tap=tap0,vhost=on",
        {"tap": "tap1", "mac": "52:54:00:00:00:09", "vhost": false}, {}]})"));
    REQUIRE(config);
    REQUIRE(config->nets.size() == 3);
    CHECK(config->nets[0].tap == "tap0");
    CHECK(config->nets[0].vhost);
    CHECK(config->nets[1].mac == net::MacAddress{0x52, 0x54, 0x00, 0x00, 0x00, 0x09});
    CHECK(config->nets[2].tap.empty());
    auto back = apply_json(VmConfig{}, to_json(*config));
    REQUIRE(back);
    CHECK(back->nets == config->nets);
    const auto text = describe(*config);
    CHECK_THAT(text, Catch::Contains("net tap=tap0,mac=52:54:00:76:6d:00,vhost=on"));
    CHECK_THAT(text, Catch::Contains("net tap=,mac=52:54:00:76:6d:02,vhost=off"));

    CHECK(apply_json(VmConfig{}, nlohmann::json::parse(R"({"nets": "tap=a"})")).error() ==
          "config: nets: must be an array of nets");
    CHECK(apply_json(VmConfig{}, nlohmann::json::parse(R"({"nets": [{"vhost": "maybe"}]})")).error() ==
          "config: nets: vhost='maybe' is not on or off");

    VmConfig many;
    many.disks.resize(5, DiskConfig{.path = "a"});
    many.nets.resize(4);
    CHECK(validate(many, true).error() == "disks and nets: 5 + 4 virtio devices; at most 8 in all");
    VmConfig twice;
    twice.nets = {NetConfig{.tap = "tap0"}, NetConfig{.tap = "tap0"}};
    CHECK(validate(twice, true).error() == "net: tap tap0 given twice (one tap serves one NIC)");
    VmConfig two_created;
    two_created.nets.resize(2);
    CHECK(validate(two_created, true));
}

TEST_CASE("cli: --net is repeatable and its errors are one line naming --net", "[virtio-net][cli]") {
    cli::KnobFlags flags;
    flags.nets = {"tap=tap0", "mac=52:54:00:00:00:01,vhost=on"};
    auto config = cli::build_config(flags, 2);
    REQUIRE(config.has_value());
    REQUIRE(config->nets.size() == 2);
    CHECK(config->nets[0].tap == "tap0");
    CHECK(config->nets[1].tap.empty());
    CHECK(config->nets[1].vhost);

    flags.nets = {"tap=a,vhost=maybe"};
    auto bad = cli::build_config(flags, 2);
    REQUIRE_FALSE(bad.has_value());
    CHECK(bad.error() == "--net: vhost='maybe' is not on or off");

    CLI::App app;
    cli::KnobFlags parsed;
    cli::add_linux_flags(app, parsed);
    // CLI::App::parse(vector) takes the arguments last first, as the --disk test does.
    app.parse(std::vector<std::string>{"tap=b", "--net", "tap=a", "--net"});
    CHECK(parsed.nets == std::vector<std::string>{"tap=a", "tap=b"});
}
