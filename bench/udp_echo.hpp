// The UDP peer of the tiny guest's `net` workload (guest/workloads/net.cpp), shared by
// `vmmlab-iobench udp-echo` and the kvm test tests/kvm/tiny_guest_net_test.cpp. Per datagram:
//   "count?"         answered with the payload bytes of the stream datagrams received since the last
//                    "count?" (decimal ASCII), and that count starts again from 0;
//   'S' + anything   a stream datagram: counted, not answered (an echo would only flood the guest);
//   anything else    echoed back to its sender as it is (rr requests).
#pragma once

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include <netinet/in.h>
#include <sys/socket.h>

namespace vmmlab::bench {

struct UdpEchoCounters {
    std::uint64_t echoed = 0;       // datagrams echoed
    std::uint64_t echoed_bytes = 0; // their payload bytes
    std::uint64_t stream_datagrams = 0;
    std::uint64_t stream_bytes = 0;  // payload bytes of stream datagrams, all of them
    std::uint64_t pending_bytes = 0; // ... since the last "count?"
    std::uint64_t queries = 0;
};

// Receives one datagram on `fd` (a bound UDP socket) and handles it. False when recvfrom failed (errno
// says why: EAGAIN after SO_RCVTIMEO, EINTR) or an answer could not be sent.
inline bool udp_echo_once(int fd, UdpEchoCounters& counters) {
    unsigned char buffer[65536];
    sockaddr_in from{};
    socklen_t from_length = sizeof from;
    const ssize_t got =
        ::recvfrom(fd, buffer, sizeof buffer, 0, reinterpret_cast<sockaddr*>(&from), &from_length);
    if (got < 0) return false;
    const auto bytes = static_cast<std::size_t>(got);
    const auto* peer = reinterpret_cast<const sockaddr*>(&from);
    if (bytes == 6 && std::memcmp(buffer, "count?", 6) == 0) {
        char answer[24];
        const int length = std::snprintf(answer, sizeof answer, "%llu",
                                         static_cast<unsigned long long>(counters.pending_bytes));
        counters.pending_bytes = 0;
        ++counters.queries;
        return ::sendto(fd, answer, static_cast<std::size_t>(length), 0, peer, from_length) == length;
    }
    if (bytes > 0 && buffer[0] == 'S') {
        ++counters.stream_datagrams;
        counters.stream_bytes += bytes;
        counters.pending_bytes += bytes;
        return true;
    }
    ++counters.echoed;
    counters.echoed_bytes += bytes;
    return ::sendto(fd, buffer, bytes, 0, peer, from_length) == got;
}

} // namespace vmmlab::bench
