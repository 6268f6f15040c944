// vmmlab-iobench: the block and network load a Linux guest runs for bench/io, the same program under every
// monitor (vmmlab, QEMU) and natively. Statically linked, so tools/mkinitramfs can put it into a busybox
// initramfs as it is.
//
//   vmmlab-iobench blk DEVICE [--mode read|write|randread|randwrite] [--bs BYTES] [--ops N] [--qd N]
//                             [--size BYTES] [--buffered] [--label TEXT]
//       N requests of BS bytes (O_DIRECT unless --buffered) at sequential or random BS-aligned offsets
//       inside the first SIZE bytes (default: the device's size), with QD threads each keeping one request
//       in flight. Reports MB/s, IOPS and the latency percentiles p50/p99 (microseconds).
//   vmmlab-iobench net-server [--port P] [--connections N]
//       A TCP peer: per connection, one mode byte, then 's' (stream): reads until the client shuts its side
//       down and answers the byte count as 8 bytes; 'r' (request/response): echoes every byte it reads;
//       'e' (echo): echoes everything until EOF. Serves N connections (default: forever), then exits.
//   vmmlab-iobench net-client HOST [--port P] [--mode stream|rr] [--bytes N] [--ops N] [--label TEXT]
//       stream: sends N bytes, reports MB/s (checks the server's count); rr: N one-byte round trips,
//       reports transactions/s and p50/p99 latency (us).
//   vmmlab-iobench udp-echo [--port P] [--datagrams N]
//       The UDP peer of the tiny guest's `net` workload (bench/udp_echo.hpp): echoes rr requests, counts
//       stream datagrams and answers "count?" with their bytes. Serves N datagrams (default: forever).
//
// Results leave as "@result workload=W metric=M value=V unit=U" lines on stdout, the tiny guest's format,
// so bench/io and `vmmlab compare` read them the same way. Errors: one line on stderr, exit status 1.
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bench/udp_echo.hpp"

namespace {

[[noreturn]] void fail(const std::string& message) {
    std::fprintf(stderr, "vmmlab-iobench: %s\n", message.c_str());
    std::exit(1);
}

[[noreturn]] void fail_errno(const std::string& what) {
    fail(what + ": " + std::strerror(errno));
}

std::uint64_t parse_number(std::string_view flag, std::string_view text) {
    std::uint64_t value = 0, unit = 1;
    if (!text.empty()) {
        switch (text.back()) {
        case 'k':
        case 'K':
            unit = 1ULL << 10;
            break;
        case 'm':
        case 'M':
            unit = 1ULL << 20;
            break;
        case 'g':
        case 'G':
            unit = 1ULL << 30;
            break;
        default:
            break;
        }
        if (unit != 1) text.remove_suffix(1);
    }
    if (text.empty()) fail(std::string(flag) + ": a number is needed");
    for (char c : text) {
        if (c < '0' || c > '9') fail(std::string(flag) + ": '" + std::string(text) + "' is not a number");
        value = value * 10 + static_cast<std::uint64_t>(c - '0');
    }
    return value * unit;
}

double now_seconds() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void result(const std::string& workload, const char* metric, double value, const char* unit) {
    std::printf("@result workload=%s metric=%s value=%.3f unit=%s\n", workload.c_str(), metric, value, unit);
}

double percentile(std::vector<double>& samples, double fraction) {
    if (samples.empty()) return 0;
    const auto index = static_cast<std::size_t>(fraction * static_cast<double>(samples.size() - 1) + 0.5);
    std::nth_element(samples.begin(), samples.begin() + static_cast<std::ptrdiff_t>(index), samples.end());
    return samples[index];
}

// Arguments after the positional ones: --flag value pairs (and bare switches), looked up by name.
struct Flags {
    std::vector<std::string_view> args;
    std::string_view value(std::string_view name, std::string_view fallback) const {
        for (std::size_t i = 0; i + 1 < args.size(); ++i)
            if (args[i] == name) return args[i + 1];
        return fallback;
    }
    bool has(std::string_view name) const { return std::find(args.begin(), args.end(), name) != args.end(); }
    std::uint64_t number(std::string_view name, std::uint64_t fallback) const {
        const auto text = value(name, {});
        return text.empty() ? fallback : parse_number(name, text);
    }
};

// --- block --------------------------------------------------------------------------------------------

int run_blk(const std::string& device, const Flags& flags) {
    const std::string mode(flags.value("--mode", "randread"));
    const bool write = mode == "write" || mode == "randwrite";
    const bool random = mode == "randread" || mode == "randwrite";
    if (!write && !random && mode != "read")
        fail("--mode: '" + mode + "'; one of read write randread randwrite");
    const std::uint64_t block = flags.number("--bs", 4096);
    const std::uint64_t ops = flags.number("--ops", 1000);
    const auto depth = static_cast<unsigned>(flags.number("--qd", 1));
    const bool direct = !flags.has("--buffered");
    if (block == 0 || block % 512 != 0) fail("--bs: must be a non-zero multiple of 512");
    if (depth == 0 || depth > 64) fail("--qd: 1 to 64");

    const int fd = ::open(device.c_str(), (write ? O_RDWR : O_RDONLY) | (direct ? O_DIRECT : 0) | O_CLOEXEC);
    if (fd < 0) fail_errno(device);
    std::uint64_t size = 0;
    struct stat st {};
    if (::fstat(fd, &st) != 0) fail_errno(device);
    if (S_ISBLK(st.st_mode)) {
        if (::ioctl(fd, BLKGETSIZE64, &size) != 0) fail_errno(device + ": BLKGETSIZE64");
    } else {
        size = static_cast<std::uint64_t>(st.st_size);
    }
    size = std::min(size, flags.number("--size", size));
    const std::uint64_t blocks = size / block;
    if (blocks == 0) fail(device + ": smaller than one block of " + std::to_string(block) + " bytes");

    std::atomic<std::uint64_t> next{0};
    std::atomic<bool> failed{false};
    std::vector<std::vector<double>> latencies(depth);
    const double start = now_seconds();
    std::vector<std::thread> workers;
    for (unsigned worker = 0; worker < depth; ++worker)
        workers.emplace_back([&, worker] {
            void* raw = nullptr;
            if (::posix_memalign(&raw, 4096, block) != 0) return failed.store(true);
            auto* buffer = static_cast<unsigned char*>(raw);
            std::memset(buffer, 0xa5 ^ static_cast<int>(worker), block);
            std::uint64_t state = 0x9e3779b97f4a7c15ULL * (worker + 1);
            auto& mine = latencies[worker];
            mine.reserve(ops / depth + 1);
            for (std::uint64_t i; (i = next.fetch_add(1)) < ops;) {
                std::uint64_t index = i % blocks;
                if (random) { // xorshift64
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    index = state % blocks;
                }
                const auto offset = static_cast<off_t>(index * block);
                const double before = now_seconds();
                const ssize_t done =
                    write ? ::pwrite(fd, buffer, block, offset) : ::pread(fd, buffer, block, offset);
                mine.push_back((now_seconds() - before) * 1e6);
                if (done != static_cast<ssize_t>(block)) {
                    std::fprintf(stderr, "vmmlab-iobench: %s: %s at offset %lld: %s\n", device.c_str(),
                                 write ? "write" : "read", static_cast<long long>(offset),
                                 done < 0 ? std::strerror(errno) : "short transfer");
                    failed.store(true);
                    break;
                }
            }
            std::free(raw);
        });
    for (auto& worker : workers)
        worker.join();
    if (write && ::fdatasync(fd) != 0) fail_errno(device + ": fdatasync");
    const double elapsed = now_seconds() - start;
    ::close(fd);
    if (failed) return 1;

    std::vector<double> all;
    for (auto& part : latencies)
        all.insert(all.end(), part.begin(), part.end());
    const std::string workload(flags.value("--label", "blk-" + mode));
    result(workload, "iops", static_cast<double>(ops) / elapsed, "ops/s");
    result(workload, "bandwidth", static_cast<double>(ops * block) / elapsed / 1e6, "MB/s");
    result(workload, "p50", percentile(all, 0.50), "us");
    result(workload, "p99", percentile(all, 0.99), "us");
    return 0;
}

// --- network ------------------------------------------------------------------------------------------

bool read_exact(int fd, void* data, std::size_t size) {
    auto* bytes = static_cast<unsigned char*>(data);
    while (size > 0) {
        const ssize_t done = ::read(fd, bytes, size);
        if (done < 0 && errno == EINTR) continue;
        if (done <= 0) return false;
        bytes += done;
        size -= static_cast<std::size_t>(done);
    }
    return true;
}

bool write_all(int fd, const void* data, std::size_t size) {
    const auto* bytes = static_cast<const unsigned char*>(data);
    while (size > 0) {
        const ssize_t done = ::write(fd, bytes, size);
        if (done < 0 && errno == EINTR) continue;
        if (done <= 0) return false;
        bytes += done;
        size -= static_cast<std::size_t>(done);
    }
    return true;
}

void no_delay(int fd) {
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

void serve(int fd) {
    char mode = 0;
    if (!read_exact(fd, &mode, 1)) return;
    std::vector<unsigned char> buffer(1 << 16);
    if (mode == 's') {
        std::uint64_t total = 0;
        for (ssize_t done; (done = ::read(fd, buffer.data(), buffer.size())) > 0;)
            total += static_cast<std::uint64_t>(done);
        write_all(fd, &total, sizeof total);
    } else if (mode == 'r' || mode == 'e') {
        no_delay(fd);
        for (ssize_t done; (done = ::read(fd, buffer.data(), buffer.size())) > 0;)
            if (!write_all(fd, buffer.data(), static_cast<std::size_t>(done))) break;
    }
}

int run_server(const Flags& flags) {
    const auto port = static_cast<std::uint16_t>(flags.number("--port", 5201));
    const std::uint64_t connections = flags.number("--connections", 0);
    const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listener < 0) fail_errno("socket");
    const int one = 1;
    ::setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_ANY);
    if (::bind(listener, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0)
        fail_errno("bind port " + std::to_string(port));
    if (::listen(listener, 16) != 0) fail_errno("listen");
    std::printf("vmmlab-iobench: listening on port %u\n", port);
    std::fflush(stdout);
    for (std::uint64_t served = 0; connections == 0 || served < connections; ++served) {
        const int fd = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR) continue;
            fail_errno("accept");
        }
        serve(fd);
        ::close(fd);
    }
    ::close(listener);
    return 0;
}

int connect_to(const std::string& host, std::uint16_t port, char mode) {
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    if (::inet_pton(AF_INET, host.c_str(), &address.sin_addr) != 1)
        fail("'" + host + "' is not an IPv4 address");
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) fail_errno("socket");
    // The peer may still be starting: retry for a few seconds.
    for (int attempt = 0;; ++attempt) {
        if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0) break;
        if (attempt == 50) fail_errno("connect " + host + ":" + std::to_string(port));
        ::usleep(100000);
    }
    if (!write_all(fd, &mode, 1)) fail_errno("send");
    return fd;
}

int run_client(const std::string& host, const Flags& flags) {
    const auto port = static_cast<std::uint16_t>(flags.number("--port", 5201));
    const std::string mode(flags.value("--mode", "stream"));
    if (mode == "stream") {
        const std::uint64_t bytes = flags.number("--bytes", 64ULL << 20);
        const int fd = connect_to(host, port, 's');
        std::vector<unsigned char> buffer(1 << 16, 0x5a);
        const double start = now_seconds();
        for (std::uint64_t left = bytes; left > 0;) {
            const auto chunk = static_cast<std::size_t>(std::min<std::uint64_t>(left, buffer.size()));
            if (!write_all(fd, buffer.data(), chunk)) fail_errno("send");
            left -= chunk;
        }
        ::shutdown(fd, SHUT_WR);
        std::uint64_t counted = 0;
        if (!read_exact(fd, &counted, sizeof counted)) fail("the server did not answer the byte count");
        const double elapsed = now_seconds() - start;
        ::close(fd);
        if (counted != bytes)
            fail("the server counted " + std::to_string(counted) + " bytes of " + std::to_string(bytes));
        result(std::string(flags.value("--label", "net-stream")), "throughput",
               static_cast<double>(bytes) * 8 / elapsed / 1e6, "Mbit/s");
        return 0;
    }
    if (mode == "rr") {
        const std::uint64_t ops = flags.number("--ops", 1000);
        const int fd = connect_to(host, port, 'r');
        no_delay(fd);
        std::vector<double> latencies;
        latencies.reserve(ops);
        const double start = now_seconds();
        for (std::uint64_t i = 0; i < ops; ++i) {
            const auto sent = static_cast<unsigned char>(i);
            unsigned char got = 0;
            const double before = now_seconds();
            if (!write_all(fd, &sent, 1) || !read_exact(fd, &got, 1)) fail_errno("round trip");
            latencies.push_back((now_seconds() - before) * 1e6);
            if (got != sent) fail("the server echoed a different byte");
        }
        const double elapsed = now_seconds() - start;
        ::close(fd);
        const std::string workload(flags.value("--label", "net-rr"));
        result(workload, "transactions", static_cast<double>(ops) / elapsed, "trans/s");
        result(workload, "p50", percentile(latencies, 0.50), "us");
        result(workload, "p99", percentile(latencies, 0.99), "us");
        return 0;
    }
    fail("--mode: '" + mode + "'; one of stream rr");
}

// --- UDP echo (the tiny guest's net workload) -----------------------------------------------------------

int run_udp_echo(const Flags& flags) {
    const auto port = static_cast<std::uint16_t>(flags.number("--port", 7777));
    const std::uint64_t datagrams = flags.number("--datagrams", 0);
    const int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) fail_errno("socket");
    const int buffer_bytes = 16 << 20; // a stream arrives faster than one thread may drain it
    if (::setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &buffer_bytes, sizeof buffer_bytes) != 0)
        ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buffer_bytes, sizeof buffer_bytes);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_ANY);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0)
        fail_errno("bind UDP port " + std::to_string(port));
    std::printf("vmmlab-iobench: UDP echo on port %u\n", port);
    vmmlab::bench::UdpEchoCounters counters;
    for (std::uint64_t served = 0; datagrams == 0 || served < datagrams; ++served)
        if (!vmmlab::bench::udp_echo_once(fd, counters) && errno != EINTR) fail_errno("udp-echo");
    ::close(fd);
    std::printf("vmmlab-iobench: echoed %llu datagrams, counted %llu stream bytes\n",
                static_cast<unsigned long long>(counters.echoed),
                static_cast<unsigned long long>(counters.stream_bytes));
    return 0;
}

} // namespace

int main(int argc, char** argv) {
    const std::string usage =
        "usage: vmmlab-iobench blk DEVICE [...] | net-server [...] | net-client HOST [...] | udp-echo [...]";
    if (argc < 2) fail(usage);
    const std::string_view command = argv[1];
    Flags flags;
    const int first_flag = command == "net-server" || command == "udp-echo" ? 2 : 3;
    if (argc < first_flag) fail(usage);
    for (int i = first_flag; i < argc; ++i)
        flags.args.emplace_back(argv[i]);
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    if (command == "blk") return run_blk(argv[2], flags);
    if (command == "net-server") return run_server(flags);
    if (command == "net-client") return run_client(argv[2], flags);
    if (command == "udp-echo") return run_udp_echo(flags);
    fail(usage);
}
