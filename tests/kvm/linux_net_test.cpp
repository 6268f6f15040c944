// virtio-net under the stock Debian kernel: in a network namespace the test makes (nothing outside it sees
// the traffic), a tap with an address on the host side, `vmmlab run --net tap=NAME,mac=MAC,vhost=off|on` on
// it; the guest finds its interface by the MAC, takes an address, and sends 1 MiB of random bytes over TCP
// to a peer of the test, which echoes them back; both directions are checked byte-exact (SHA-256 of what
// the guest sent, of what the peer received, of what the guest got back), with the userspace backend and
// with vhost-net.
//
// From the environment (tools/test exports them):
//   VMMLAB_TEST_KERNEL      Debian's vmlinuz (tools/debian-kernel --vmlinuz)
//   VMMLAB_TEST_NET_INITRD  tools/mkinitramfs --boot-marker --modules debian --module virtio_pci
//                           --module virtio_net --script tests/kvm/linux_net_checks.sh
// A missing variable fails the test. Needs CAP_NET_ADMIN, /dev/net/tun and /dev/vhost-net (the sandbox has
// all three).
#include <catch2/catch.hpp>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/unique_fd.hpp"
#include "linux_run.hpp"
#include "net_namespace.hpp"
#include "sha256.hpp"

using namespace vmmlab;
using namespace vmmlab::test;

namespace {
constexpr auto kRunTimeout = std::chrono::seconds(240); // nested boots take 20-60 s; a wedged one must fail
constexpr const char* kTap = "vmmlabt0";                // only inside the test's namespace
constexpr const char* kHostAddress = "10.200.7.1";
constexpr const char* kGuestAddress = "10.200.7.2/24";
constexpr const char* kGuestMac = "52:54:00:c8:07:02";
constexpr std::uint16_t kPort = 5201;
constexpr std::size_t kPayloadBytes = 1 << 20;

UniqueFd listen_on(const char* address, std::uint16_t port) {
    UniqueFd socket_fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    REQUIRE(socket_fd.get() >= 0);
    const int one = 1;
    REQUIRE(::setsockopt(socket_fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0);
    sockaddr_in in{};
    in.sin_family = AF_INET;
    in.sin_port = htons(port);
    REQUIRE(::inet_pton(AF_INET, address, &in.sin_addr) == 1);
    INFO(errno_text("bind/listen"));
    REQUIRE(::bind(socket_fd.get(), reinterpret_cast<const sockaddr*>(&in), sizeof in) == 0);
    REQUIRE(::listen(socket_fd.get(), 1) == 0);
    return socket_fd;
}

// The host side's TCP peer: accepts one connection, echoes every byte back as it arrives, and after
// kPayloadBytes closes its sending half. Driven by the test's poll loop, never blocks.
struct EchoPeer {
    UniqueFd listener, connection;
    std::vector<std::byte> received;
    std::vector<std::byte> unsent; // received, not yet echoed
    bool finished = false;         // everything echoed and the sending half closed
    bool guest_closed = false;     // the guest closed its sending half
    std::string error;

    void on_listener() { // one connection: the listener closes once it is accepted (poll ignores fd -1)
        connection = UniqueFd(::accept4(listener.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
        if (connection.get() < 0 && errno == EAGAIN) return;
        if (connection.get() < 0) error = errno_text("accept");
        listener = UniqueFd{};
    }
    void on_connection() {
        std::byte buffer[65536];
        for (;;) {
            const ssize_t got = ::read(connection.get(), buffer, sizeof buffer);
            if (got > 0) {
                received.insert(received.end(), buffer, buffer + got);
                unsent.insert(unsent.end(), buffer, buffer + got);
                continue;
            }
            if (got == 0) guest_closed = true;
            if (got < 0 && errno != EAGAIN && errno != EWOULDBLOCK) error = errno_text("read from the guest");
            break;
        }
        while (!unsent.empty()) {
            const ssize_t sent = ::write(connection.get(), unsent.data(), unsent.size());
            if (sent < 0) {
                if (errno != EAGAIN && errno != EWOULDBLOCK) error = errno_text("write to the guest");
                break;
            }
            unsent.erase(unsent.begin(), unsent.begin() + sent);
        }
        if (!finished && unsent.empty() && received.size() >= kPayloadBytes) {
            ::shutdown(connection.get(), SHUT_WR); // the guest's nc ends on this
            finished = true;
        }
        // Done with it (else poll would report the end of the stream again and again).
        if ((guest_closed && unsent.empty()) || !error.empty()) connection = UniqueFd{};
    }
};
} // namespace

TEST_CASE("Linux takes an address on a tap in the test's network namespace and exchanges 1 MiB over TCP "
          "with a peer on the host side, byte-exact both ways",
          "[kvm][linux][linux-net]") {
    // The userspace backend on the untuned I/O path (kicks exit, KVM_SIGNAL_MSI, vCPU thread), and vhost-net
    // on the tuned one (ioeventfd kicks and irqfd interrupts go straight between KVM and the kernel's
    // vhost worker: no monitor thread on the data path; needs /dev/vhost-net).
    const std::string vhost = GENERATE(as<std::string>{}, "off", "on");
    CAPTURE(vhost);
    auto arguments = vmmlab_run_linux(
        "VMMLAB_TEST_NET_INITRD",
        fmt::format(
            "vmmlab_net.mac={} vmmlab_net.addr={} vmmlab_net.peer={} vmmlab_net.port={} vmmlab_net.bytes={}",
            kGuestMac, kGuestAddress, kHostAddress, kPort, kPayloadBytes),
        kRunTimeout);
    arguments.push_back("--net");
    arguments.push_back(fmt::format("tap={},mac={},vhost={}", kTap, kGuestMac, vhost));
    if (vhost == "on")
        for (const char* flag : {"--io-notify", "ioeventfd", "--io-irq", "irqfd", "--io-thread", "on"})
            arguments.push_back(flag);

    EchoPeer peer;
    ConsoleChild vmmlab;
    {
        PrivateNetNamespace namespace_of_test; // the tap, the peer's socket and vmmlab live in it
        make_tap(kTap, kHostAddress);
        peer.listener = listen_on(kHostAddress, kPort);
        vmmlab = spawn_with_console(arguments);
    }

    std::string console;
    const auto deadline = std::chrono::steady_clock::now() + kRunTimeout + std::chrono::seconds(30);
    while (vmmlab.console.get() >= 0 && std::chrono::steady_clock::now() < deadline) {
        std::vector<pollfd> fds = {{vmmlab.console.get(), POLLIN, 0}, {peer.listener.get(), POLLIN, 0}};
        if (peer.connection.get() >= 0)
            fds.push_back(
                {peer.connection.get(), static_cast<short>(POLLIN | (peer.unsent.empty() ? 0 : POLLOUT)), 0});
        if (::poll(fds.data(), fds.size(), 1000) <= 0) continue;
        if (fds[0].revents != 0) {
            char buffer[4096];
            const ssize_t got = ::read(vmmlab.console.get(), buffer, sizeof buffer);
            if (got <= 0)
                vmmlab.console = UniqueFd{}; // vmmlab ended
            else
                console.append(buffer, static_cast<std::size_t>(got));
        }
        if (fds[1].revents != 0) peer.on_listener();
        if (fds.size() > 2 && fds[2].revents != 0) peer.on_connection();
    }
    if (vmmlab.console.get() >= 0) ::kill(vmmlab.pid, SIGKILL); // past the deadline
    int status = 0;
    REQUIRE(::waitpid(vmmlab.pid, &status, 0) == vmmlab.pid);
    std::printf("--- guest console (vmmlab run --net, vhost=%s)\n%s\n--- vmmlab status %d; peer received %zu "
                "bytes%s%s\n",
                vhost.c_str(), console.c_str(), WIFEXITED(status) ? WEXITSTATUS(status) : -1,
                peer.received.size(), peer.error.empty() ? "" : ", error: ", peer.error.c_str());
    std::fflush(stdout);

    const auto checks = parse_checks(console);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
    CHECK(peer.error.empty());
    CHECK(check_value(checks, "iface") != "none");
    CHECK(check_value(checks, "driver") == "virtio_net");
    CHECK(check_value(checks, "addr") == kGuestAddress);
    CHECK_THAT(check_value(checks, "ping"), Catch::StartsWith("0 "));
    REQUIRE(check_value(checks, "net-checks-done").empty());
    CHECK(check_value(checks, "nc") == "0");

    // What the guest sent is what the peer received, and what it got back is the same again.
    CHECK(peer.received.size() == kPayloadBytes);
    CHECK(peer.finished);
    const std::string sent = check_value(checks, "payload-sha256");
    CHECK(sha256_hex(peer.received) == sent);
    CHECK(check_value(checks, "echo-bytes") == std::to_string(kPayloadBytes));
    CHECK(check_value(checks, "echo-sha256") == sent);
    CHECK(std::stoull(check_value(checks, "rx-bytes")) >= kPayloadBytes);
    CHECK(std::stoull(check_value(checks, "tx-bytes")) >= kPayloadBytes);
}
