// The tap backend and vhost-net for real: in a fresh network namespace (unshare(CLONE_NEWNET), so nothing
// on the host changes), Tap::open creates taps, reports its errors, and VirtioNet (userspace, then
// vhost-net) moves UDP datagrams between the mock driver's rings and a host socket through the kernel.
// No /dev/kvm is needed, but root (CAP_SYS_ADMIN for the namespace, CAP_NET_ADMIN for the tap),
// /dev/net/tun and /dev/vhost-net are: that is why these live with the kvm tests, which tools/test runs in
// the nested sandbox as root with the tun and vhost_net modules loaded. Where the process lacks them the
// test says why in a WARN line and makes no passing assertion about the data path.
#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <functional>
#include <thread>

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <linux/capability.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "base/unique_fd.hpp"
#include "devices/virtio/net.hpp"
#include "devices/virtio/tap.hpp"
#include "devices/virtio/vhost_net.hpp"
#include "tests/unit/virtio_mock_driver.hpp"

using namespace vmmlab;
using namespace vmmlab::virtio;
using vmmlab::testing::MockDriver;
using vmmlab::testing::MockRam;

namespace {

// Moves this thread into a new network namespace for the guard's lifetime; why not, if it cannot.
class NetnsGuard {
public:
    NetnsGuard() {
        original_.reset(::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
        if (!original_) {
            why_not_ = fmt::format("/proc/thread-self/ns/net: {}", std::strerror(errno));
            return;
        }
        if (::unshare(CLONE_NEWNET) < 0) {
            why_not_ =
                fmt::format("unshare(CLONE_NEWNET): {} (needs root or CAP_SYS_ADMIN)", std::strerror(errno));
            return;
        }
        if (::access("/dev/net/tun", R_OK | W_OK) < 0) {
            why_not_ = fmt::format("/dev/net/tun: {}", std::strerror(errno));
            return;
        }
        entered_ = true;
    }
    ~NetnsGuard() {
        if (entered_) ::setns(original_.get(), CLONE_NEWNET);
    }
    bool entered() const { return entered_; }
    const std::string& why_not() const { return why_not_; }

private:
    UniqueFd original_;
    bool entered_ = false;
    std::string why_not_;
};

// Drops CAP_NET_ADMIN from this thread's effective set for the guard's lifetime.
class WithoutNetAdmin {
public:
    WithoutNetAdmin() {
        header_.version = _LINUX_CAPABILITY_VERSION_3;
        ::syscall(SYS_capget, &header_, saved_);
        __user_cap_data_struct lowered[2];
        std::memcpy(lowered, saved_, sizeof lowered);
        lowered[CAP_NET_ADMIN / 32].effective &= ~(1U << (CAP_NET_ADMIN % 32));
        ok_ = ::syscall(SYS_capset, &header_, lowered) == 0;
    }
    ~WithoutNetAdmin() { ::syscall(SYS_capset, &header_, saved_); }
    bool ok() const { return ok_; }

private:
    __user_cap_header_struct header_{};
    __user_cap_data_struct saved_[2]{};
    bool ok_ = false;
};

bool link_is_up(const std::string& interface) {
    UniqueFd control(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    ifreq request{};
    std::memcpy(request.ifr_name, interface.data(), interface.size());
    return ::ioctl(control.get(), SIOCGIFFLAGS, &request) == 0 && (request.ifr_flags & IFF_UP);
}

sockaddr_in ipv4(const char* address, std::uint16_t port = 0) {
    sockaddr_in out{};
    out.sin_family = AF_INET;
    out.sin_port = htons(port);
    ::inet_pton(AF_INET, address, &out.sin_addr);
    return out;
}

// Gives `interface` 10.11.12.1/24 and a permanent neighbour entry for the guest (10.11.12.2 at `mac`);
// returns the interface's own MAC.
std::array<std::uint8_t, 6> configure_host_side(const std::string& interface, const net::MacAddress& mac) {
    UniqueFd control(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    ifreq request{};
    std::memcpy(request.ifr_name, interface.data(), interface.size());
    auto address = ipv4("10.11.12.1");
    std::memcpy(&request.ifr_addr, &address, sizeof address);
    REQUIRE(::ioctl(control.get(), SIOCSIFADDR, &request) == 0);
    auto mask = ipv4("255.255.255.0");
    std::memcpy(&request.ifr_netmask, &mask, sizeof mask);
    REQUIRE(::ioctl(control.get(), SIOCSIFNETMASK, &request) == 0);
    arpreq neighbour{};
    auto guest = ipv4("10.11.12.2");
    std::memcpy(&neighbour.arp_pa, &guest, sizeof guest);
    neighbour.arp_ha.sa_family = ARPHRD_ETHER;
    std::memcpy(neighbour.arp_ha.sa_data, mac.data(), mac.size());
    neighbour.arp_flags = ATF_COM | ATF_PERM;
    std::memcpy(neighbour.arp_dev, interface.data(), interface.size());
    REQUIRE(::ioctl(control.get(), SIOCSARP, &neighbour) == 0);
    REQUIRE(::ioctl(control.get(), SIOCGIFHWADDR, &request) == 0);
    std::array<std::uint8_t, 6> own{};
    std::memcpy(own.data(), request.ifr_hwaddr.sa_data, own.size());
    return own;
}

void put16(std::vector<std::byte>& bytes, std::size_t at, std::uint16_t value) {
    bytes[at] = static_cast<std::byte>(value >> 8);
    bytes[at + 1] = static_cast<std::byte>(value & 0xff);
}
std::uint16_t get16(std::span<const std::byte> bytes, std::size_t at) {
    return static_cast<std::uint16_t>(std::to_integer<unsigned>(bytes[at]) << 8 |
                                      std::to_integer<unsigned>(bytes[at + 1]));
}

// A vnet header and an Ethernet/IPv4/UDP frame from 10.11.12.2:6666 to 10.11.12.1:5555.
std::vector<std::byte> udp_frame(const std::array<std::uint8_t, 6>& to, const net::MacAddress& from,
                                 std::span<const std::byte> payload) {
    const std::size_t ip_at = net::kHeaderBytes + 14, udp_at = ip_at + 20, data_at = udp_at + 8;
    std::vector<std::byte> frame(data_at + payload.size());
    std::memcpy(frame.data() + net::kHeaderBytes, to.data(), 6);
    std::memcpy(frame.data() + net::kHeaderBytes + 6, from.data(), 6);
    put16(frame, net::kHeaderBytes + 12, 0x0800);
    frame[ip_at] = std::byte{0x45};
    put16(frame, ip_at + 2, static_cast<std::uint16_t>(20 + 8 + payload.size()));
    frame[ip_at + 8] = std::byte{64}; // TTL
    frame[ip_at + 9] = std::byte{17}; // UDP
    const std::uint8_t addresses[8] = {10, 11, 12, 2, 10, 11, 12, 1};
    std::memcpy(frame.data() + ip_at + 12, addresses, 8);
    std::uint32_t sum = 0;
    for (std::size_t i = 0; i < 20; i += 2)
        sum += get16(frame, ip_at + i);
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    put16(frame, ip_at + 10, static_cast<std::uint16_t>(~sum));
    put16(frame, udp_at, 6666);
    put16(frame, udp_at + 2, 5555);
    put16(frame, udp_at + 4, static_cast<std::uint16_t>(8 + payload.size()));
    // UDP checksum 0: none (allowed over IPv4).
    std::memcpy(frame.data() + data_at, payload.data(), payload.size());
    return frame;
}

class Signals final : public DeviceSignals {
public:
    void used_buffers(std::uint16_t) override { ++interrupts; }
    void config_changed() override {}
    void needs_reset() override { ++resets; }
    std::atomic<int> resets = 0;
    std::atomic<int> interrupts = 0;
};

bool eventually_true(const std::function<bool()>& condition) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!condition()) {
        if (std::chrono::steady_clock::now() > deadline) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return true;
}

std::expected<void, std::string> activate(VirtioNet& device, MockRam& ram, MockDriver& rx, MockDriver& tx,
                                          DeviceSignals& signals, std::vector<int> kicks,
                                          std::vector<int> calls) {
    std::vector<Virtqueue> queues;
    for (auto* driver : {&rx, &tx}) {
        auto queue = Virtqueue::activate(ram.memory(), driver->layout(), device.features());
        REQUIRE(queue);
        queues.push_back(std::move(*queue));
    }
    return device.activate(Activation{ram.memory(), device.features(), std::move(queues), signals,
                                      std::move(kicks), std::move(calls)});
}

// The guest (mock driver) sends a UDP datagram to a host socket, which answers; `kick` kicks a queue.
void udp_round_trip(MockRam& ram, MockDriver& rx, MockDriver& tx, const std::array<std::uint8_t, 6>& host_mac,
                    const net::MacAddress& guest_mac, const std::function<void(std::uint16_t)>& kick) {

    for (std::uint64_t i = 0; i < 32; ++i)
        rx.add_chain({{0x100000 + i * 0x1000, 2048, true}});
    kick(net::kReceiveQueue);

    UniqueFd host(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    auto bound = ipv4("10.11.12.1", 5555);
    REQUIRE(::bind(host.get(), reinterpret_cast<sockaddr*>(&bound), sizeof bound) == 0);

    // Guest -> host.
    std::vector<std::byte> payload(1000);
    for (std::size_t i = 0; i < payload.size(); ++i)
        payload[i] = static_cast<std::byte>(i * 13 + 5);
    const auto frame = udp_frame(host_mac, guest_mac, payload);
    std::memcpy(ram.bytes().data() + 0x200000, frame.data(), frame.size());
    tx.add_chain({{0x200000, static_cast<std::uint32_t>(frame.size()), false}});
    kick(net::kTransmitQueue);
    pollfd ready{host.get(), POLLIN, 0};
    REQUIRE(::poll(&ready, 1, 10000) == 1);
    std::vector<std::byte> got(2000);
    sockaddr_in sender{};
    socklen_t sender_size = sizeof sender;
    const ssize_t length =
        ::recvfrom(host.get(), got.data(), got.size(), 0, reinterpret_cast<sockaddr*>(&sender), &sender_size);
    REQUIRE(length == static_cast<ssize_t>(payload.size()));
    got.resize(payload.size());
    CHECK(got == payload);
    CHECK(ntohs(sender.sin_port) == 6666);

    // Host -> guest: the datagram lands in the receive buffers (other frames, e.g. IPv6 router
    // solicitations from the new link, may come first and are skipped).
    std::vector<std::byte> reply(1200);
    for (std::size_t i = 0; i < reply.size(); ++i)
        reply[i] = static_cast<std::byte>(i * 7 + 1);
    auto guest = ipv4("10.11.12.2", 6666);
    REQUIRE(::sendto(host.get(), reply.data(), reply.size(), 0, reinterpret_cast<sockaddr*>(&guest),
                     sizeof guest) == static_cast<ssize_t>(reply.size()));
    bool found = false;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!found && std::chrono::steady_clock::now() < deadline) {
        for (const auto& used : rx.take_used()) {
            const auto bytes =
                std::span<const std::byte>(ram.bytes()).subspan(0x100000 + used.id * 0x1000ULL, used.length);
            // A one-buffer frame: vnet header, Ethernet, IPv4 (no options), UDP to port 6666.
            const std::size_t ip_at = net::kHeaderBytes + 14;
            if (used.length < ip_at + 28 || get16(bytes, net::kHeaderBytes + 12) != 0x0800 ||
                std::to_integer<int>(bytes[ip_at + 9]) != 17 || get16(bytes, ip_at + 22) != 6666)
                continue;
            CHECK(std::memcmp(bytes.data() + net::kHeaderBytes, guest_mac.data(), 6) == 0);
            CHECK(std::memcmp(bytes.data() + net::kHeaderBytes + 6, host_mac.data(), 6) == 0);
            net::Header header;
            std::memcpy(&header, bytes.data(), sizeof header);
            CHECK(header.num_buffers == 1);
            const auto data = bytes.subspan(ip_at + 28);
            CHECK(data.size() == reply.size());
            CHECK(std::equal(data.begin(), data.end(), reply.begin(), reply.end()));
            found = true;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    CHECK(found);
}

} // namespace

TEST_CASE("tap: created in a network namespace, errors named, frames through the kernel both ways", "[tap]") {
    NetnsGuard netns;
    if (!netns.entered()) {
        WARN("tap test NOT RUN: " << netns.why_not());
        return;
    }

    SECTION("a created tap gets a kernel-chosen name and is up; it goes away with the Tap") {
        auto tap = Tap::open({});
        REQUIRE(tap);
        const std::string name = (*tap)->interface_name();
        CHECK(name.starts_with("vmmlab"));
        CHECK((*tap)->created());
        CHECK(link_is_up(name));
        CHECK((*tap)->name() == "tap " + name);
        tap->reset();
        CHECK(::if_nametoindex(name.c_str()) == 0);
    }
    SECTION("a named tap: created once, busy while open; errors are one line") {
        auto tap = Tap::open({.name = "vmtest0"});
        REQUIRE(tap);
        CHECK((*tap)->interface_name() == "vmtest0");
        auto again = Tap::open({.name = "vmtest0"});
        REQUIRE_FALSE(again);
        CHECK(again.error() ==
              "net tap vmtest0: TUNSETIFF: Device or resource busy (another process has the tap open)");
        CHECK(Tap::open({.name = "a/b"}).error() == "net tap a/b: not a valid interface name");
        CHECK(Tap::open({.name = "sixteen-chars-xx"}).error() ==
              "net tap sixteen-chars-xx: an interface name has at most 15 characters");
        // Offloads follow the features the driver accepted.
        REQUIRE((*tap)->set_guest_offloads(1ULL << net::kFeatureGuestCsum | 1ULL << net::kFeatureGuestTso4));
        CHECK((*tap)->offload_flags() == 0x03);
        REQUIRE((*tap)->set_guest_offloads(0));
        CHECK((*tap)->offload_flags() == 0);
    }
    SECTION("without CAP_NET_ADMIN creating a tap fails with a message that says so") {
        WithoutNetAdmin lowered;
        REQUIRE(lowered.ok());
        auto tap = Tap::open({.name = "vmtest1"});
        REQUIRE_FALSE(tap);
        CHECK(tap.error() == "net tap vmtest1: TUNSETIFF: Operation not permitted (needs CAP_NET_ADMIN)");
    }
    SECTION("VirtioNet on a tap: a guest UDP datagram reaches a host socket, and one comes back") {
        const net::MacAddress guest_mac{0x52, 0x54, 0x00, 0x76, 0x6d, 0x01};
        auto tap = Tap::open({});
        REQUIRE(tap);
        const auto host_mac = configure_host_side((*tap)->interface_name(), guest_mac);
        MockRam ram(4 << 20);
        MockDriver rx(ram, 64, 0x1000), tx(ram, 16, 0x8000);
        Signals signals;
        VirtioNet device(std::move(*tap), NetOptions{.mac = guest_mac});
        REQUIRE(activate(device, ram, rx, tx, signals, {}, {}));
        udp_round_trip(ram, rx, tx, host_mac, guest_mac, [&](std::uint16_t queue) { device.notify(queue); });
        CHECK(device.stats().tx_packets == 1);
        CHECK(device.stats().rx_dropped == 0);
        CHECK(signals.resets == 0);
    }
}

TEST_CASE("vhost-net: the kernel moves the frames between the rings and the tap", "[tap][vhost]") {
    auto vhost = VhostNet::open();
    if (!vhost) {
        // Where the module is missing the error says so; the data path is then not tested here.
        CHECK_THAT(vhost.error(), Catch::StartsWith("vhost-net: /dev/vhost-net: "));
        WARN("vhost-net test NOT RUN: " << vhost.error());
        return;
    }
    NetnsGuard netns;
    if (!netns.entered()) {
        WARN("vhost-net test NOT RUN: " << netns.why_not());
        return;
    }
    CHECK(((*vhost)->features() >> kFeatureVersion1) & 1);
    const net::MacAddress guest_mac{0x52, 0x54, 0x00, 0x76, 0x6d, 0x02};
    auto tap = Tap::open({});
    REQUIRE(tap);
    const auto host_mac = configure_host_side((*tap)->interface_name(), guest_mac);
    MockRam ram(4 << 20);
    MockDriver rx(ram, 64, 0x1000), tx(ram, 16, 0x8000);
    Signals signals;
    VirtioNet device(std::move(*tap), NetOptions{.mac = guest_mac}, std::move(*vhost));
    CHECK(device.uses_vhost());
    CHECK(device.consumes_kicks());

    SECTION("with the transport's eventfds (ioeventfd kicks, irqfd calls)") {
        UniqueFd kicks[2], calls[2];
        for (int q = 0; q < 2; ++q) {
            kicks[q].reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
            calls[q].reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
        }
        REQUIRE(activate(device, ram, rx, tx, signals, {kicks[0].get(), kicks[1].get()},
                         {calls[0].get(), calls[1].get()}));
        udp_round_trip(ram, rx, tx, host_mac, guest_mac, [&](std::uint16_t queue) {
            const std::uint64_t one = 1;
            REQUIRE(::write(kicks[queue].get(), &one, sizeof one) == sizeof one);
        });
        std::uint64_t count = 0;
        CHECK(::read(calls[0].get(), &count, sizeof count) == sizeof count); // the kernel signalled
        CHECK(signals.interrupts == 0); // nothing went through the monitor
    }
    SECTION("without them: the device bridges kicks and calls") {
        REQUIRE(activate(device, ram, rx, tx, signals, {-1, -1}, {-1, -1}));
        udp_round_trip(ram, rx, tx, host_mac, guest_mac, [&](std::uint16_t queue) { device.notify(queue); });
        CHECK(eventually_true([&] { return signals.interrupts > 0; }));
    }
    CHECK(device.stats().tx_packets == 0); // the monitor never saw a frame
    device.reset();
    CHECK(signals.resets == 0);
}
