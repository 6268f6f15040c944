// The tiny guest's virtio-net driver and `net` workload on a real /dev/kvm: in a network namespace the test
// makes, a tap with an address on the host side and the tiny guest on it (in this process); a UDP peer
// thread of the test (bench/udp_echo.hpp, the code of `vmmlab-iobench udp-echo`) echoes the guest's rr
// requests and counts its stream bytes. Checked: exit status 0, the results present, the peer echoed exactly
// the requests and counted exactly the bytes the guest sent; with the userspace backend and with vhost-net.
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include <sys/time.h>

#include "base/unique_fd.hpp"
#include "bench/udp_echo.hpp"
#include "guest/embedded_image.hpp"
#include "net_namespace.hpp"
#include "tiny_guest_run.hpp"
#include "vm/vm.hpp"

using namespace vmmlab;
using namespace vmmlab::test;

namespace {
constexpr const char* kTap = "vmmlabg0"; // only inside the test's namespace
constexpr const char* kHostAddress = "10.200.9.1";
constexpr const char* kGuestAddress = "10.200.9.2";
constexpr std::uint16_t kPort = 7777;
constexpr std::uint64_t kRrOps = 2000;
constexpr std::uint64_t kRrBytes = 64;
constexpr std::uint64_t kStreamBytes = 4ULL << 20; // 2996 datagrams of 1400 bytes, and a shorter last one

// The peer: a UDP socket on the tap's address and a thread serving it until stopped.
class Peer {
public:
    Peer() {
        socket_ = UniqueFd(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
        REQUIRE(socket_.get() >= 0);
        const int buffer_bytes = 16 << 20; // the whole stream fits: no datagram is dropped for want of room
        if (::setsockopt(socket_.get(), SOL_SOCKET, SO_RCVBUFFORCE, &buffer_bytes, sizeof buffer_bytes) != 0)
            REQUIRE(::setsockopt(socket_.get(), SOL_SOCKET, SO_RCVBUF, &buffer_bytes, sizeof buffer_bytes) ==
                    0);
        const timeval wake{0, 100000}; // the thread looks at `stop_` every 100 ms
        REQUIRE(::setsockopt(socket_.get(), SOL_SOCKET, SO_RCVTIMEO, &wake, sizeof wake) == 0);
        sockaddr_in in{};
        in.sin_family = AF_INET;
        in.sin_port = htons(kPort);
        REQUIRE(::inet_pton(AF_INET, kHostAddress, &in.sin_addr) == 1);
        INFO(errno_text("bind the peer's UDP socket"));
        REQUIRE(::bind(socket_.get(), reinterpret_cast<const sockaddr*>(&in), sizeof in) == 0);
        thread_ = std::thread([this] {
            while (!stop_.load())
                if (!bench::udp_echo_once(socket_.get(), counters_) && errno != EAGAIN && errno != EINTR)
                    ++errors_;
        });
    }
    ~Peer() { stop(); }
    // Stops the thread; the counters are stable afterwards.
    void stop() {
        stop_.store(true);
        if (thread_.joinable()) thread_.join();
    }
    const bench::UdpEchoCounters& counters() const { return counters_; }
    int errors() const { return errors_; }

private:
    UniqueFd socket_;
    std::atomic<bool> stop_{false};
    std::thread thread_;
    bench::UdpEchoCounters counters_;
    int errors_ = 0;
};

using testing::GuestRun;

GuestRun boot(const std::string& cmdline, bool vhost) {
    VmConfig config;
    config.memory = 128ULL << 20;
    config.guest_cmdline = cmdline;
    config.nets.push_back(NetConfig{kTap, std::nullopt, vhost});
    if (vhost) {
        config.io_notify = IoNotify::Ioeventfd;
        config.io_irq = IoIrq::Irqfd;
        config.io_thread = true;
    }
    return testing::run_tiny_guest(config, std::chrono::seconds(120));
}

double value_of(const RunReport& report, std::string_view metric) {
    for (const auto& result : report.results)
        if (result.workload == "net" && result.metric == metric) return result.value;
    INFO("metric net." << metric);
    FAIL("missing");
    return 0;
}
} // namespace

TEST_CASE("net: the tiny guest resolves a peer on the host side of a tap with ARP, runs UDP request/response "
          "and a stream against it, and the peer saw exactly the guest's bytes",
          "[kvm][guest][net]") {
    const bool vhost = GENERATE(false, true);
    CAPTURE(vhost);
    PrivateNetNamespace namespace_of_test; // the tap, the peer's socket and the VM's tap fd live in it
    make_tap(kTap, kHostAddress);
    Peer peer;
    const std::string common = fmt::format("net peer={} addr={} port={}", kHostAddress, kGuestAddress, kPort);

    const GuestRun rr = boot(fmt::format("{} mode=rr ops={} bytes={}", common, kRrOps, kRrBytes), vhost);
    CHECK(rr.report.exit_status == 0);
    CHECK(value_of(rr.report, "ops") == kRrOps);
    CHECK(value_of(rr.report, "transactions_per_s") > 0);
    CHECK(value_of(rr.report, "latency_p50") > 0);
    CHECK(value_of(rr.report, "latency_p99") >= value_of(rr.report, "latency_p50"));
    CHECK(value_of(rr.report, "latency_max") >= value_of(rr.report, "latency_p99"));

    const GuestRun stream = boot(fmt::format("{} mode=stream bytes={}", common, kStreamBytes), vhost);
    CHECK(stream.report.exit_status == 0);
    CHECK(value_of(stream.report, "bytes_sent") == kStreamBytes);
    CHECK(value_of(stream.report, "peer_bytes") == kStreamBytes);
    CHECK(value_of(stream.report, "mbit_per_s") > 0);

    peer.stop();
    CHECK(peer.errors() == 0);
    CHECK(peer.counters().echoed == kRrOps); // no request lost, none sent twice
    CHECK(peer.counters().echoed_bytes == kRrOps * kRrBytes);
    CHECK(peer.counters().stream_bytes == kStreamBytes);
    CHECK(peer.counters().stream_datagrams == (kStreamBytes + 1399) / 1400);
    CHECK(peer.counters().queries == 2); // one before the stream (the count starts at 0), one after
}

TEST_CASE(
    "net: the tiny guest without a virtio-net device, or without an answer to its ARP requests, says so "
    "and exits 1",
    "[kvm][guest][net]") {
    VmConfig config;
    config.memory = 128ULL << 20;
    config.guest_cmdline = "net peer=10.200.9.1 addr=10.200.9.2";
    std::string console;
    ConsoleOptions options{[&console](std::span<const std::byte> bytes) {
                               console.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
                           },
                           -1};
    Vm vm(config, embedded_guest_image(), std::move(options));
    const RunReport report = vm.run(std::chrono::seconds(60));
    INFO(console);
    CHECK(report.exit_status == 1);
    CHECK_THAT(console, Catch::Contains("error: net:"));
    CHECK_THAT(console, Catch::Contains("1041"));

    PrivateNetNamespace namespace_of_test;
    make_tap(kTap, kHostAddress);
    const GuestRun silent = boot("net peer=10.200.9.3 addr=10.200.9.2", false); // nobody has .3
    CHECK(silent.report.exit_status == 1);
    CHECK_THAT(silent.console, Catch::Contains("no ARP reply from 10.200.9.3 after 3 requests"));
}
