// net: UDP over the guest's virtio-net device (platform.hpp's net_* functions) against a peer on the host
// side of the tap (bench/iobench udp-echo, or the kvm test's echo thread).
//
//   net peer=A.B.C.D addr=A.B.C.D [port=7777] [mode=rr|stream] [ops=N] [bytes=N]
//
// Minimal Ethernet/ARP/IPv4/UDP: the guest answers ARP requests for `addr`, resolves `peer` with ARP
// requests, and sends UDP datagrams from port 7777 to `port` (UDP checksum 0, legal for IPv4).
//   rr      `ops` (default 1000) request/response round trips of `bytes` (default 64) each, one at a time;
//           every reply must carry the request's bytes (the first of which is 'R'). Results:
//           transactions_per_s, latency_p50, latency_p99, latency_max (us), ops.
//   stream  `bytes` (default 16M) in 1400-byte datagrams (the first payload byte 'S' marks them as stream
//           data, which the peer counts without answering), between two datagrams "count?", which the peer
//           answers with the payload bytes it counted since the last one (decimal). Results: mbit_per_s
//           (what the peer received over the time from the first datagram to its answer), bytes_sent,
//           peer_bytes (status 1 when they differ: datagrams were lost).
// No answer within a second (three ARP tries, a missing reply, a missing count) is status 1 with a line
// saying what was missing.
#include "guest/workloads/blk.hpp"
#include "guest/workloads/cpu.hpp"
#include "guest/workloads/platform.hpp"
#include "guest/workloads/workloads.hpp"

namespace vmmlab::guest {
namespace {

constexpr uint16_t kEtherArp = 0x0806;
constexpr uint16_t kEtherIpv4 = 0x0800;
constexpr size_t kEthernetBytes = 14;
constexpr size_t kIpBytes = 20;
constexpr size_t kUdpBytes = 8;
constexpr size_t kHeadersBytes = kEthernetBytes + kIpBytes + kUdpBytes;
constexpr size_t kStreamDatagram = 1400;
constexpr size_t kMaxPayload = platform::kNetMaxFrameBytes - kHeadersBytes;
constexpr uint16_t kLocalPort = 7777;

constinit blk::LatencyHistogram g_latency;

struct Endpoint {
    uint8_t mac[6] = {};
    uint32_t addr = 0; // host order
};

struct Session {
    Endpoint self;
    Endpoint peer;
    uint16_t port = 0;
    uint16_t ip_id = 0;
    uint64_t ignored = 0; // frames that were none of ours
    alignas(8) uint8_t frame[platform::kNetMaxFrameBytes + 2] = {};
    alignas(8) uint8_t out[platform::kNetMaxFrameBytes + 2] = {};
};

constinit Session g_session;

bool parse_ipv4(Text text, uint32_t& out) {
    uint32_t value = 0;
    unsigned parts = 0;
    size_t i = 0;
    while (parts < 4) {
        uint32_t part = 0;
        size_t digits = 0;
        while (i < text.size && text[i] >= '0' && text[i] <= '9' && digits < 4) {
            part = part * 10 + static_cast<uint32_t>(text[i] - '0');
            ++i;
            ++digits;
        }
        if (digits == 0 || part > 255) return false;
        value = value << 8 | part;
        ++parts;
        if (parts < 4) {
            if (i >= text.size || text[i] != '.') return false;
            ++i;
        }
    }
    out = value;
    return i == text.size;
}

void put16(uint8_t* p, uint16_t v) {
    p[0] = static_cast<uint8_t>(v >> 8);
    p[1] = static_cast<uint8_t>(v);
}
void put32(uint8_t* p, uint32_t v) {
    put16(p, static_cast<uint16_t>(v >> 16));
    put16(p + 2, static_cast<uint16_t>(v));
}
uint16_t get16(const uint8_t* p) {
    return static_cast<uint16_t>(p[0] << 8 | p[1]);
}
uint32_t get32(const uint8_t* p) {
    return static_cast<uint32_t>(get16(p)) << 16 | get16(p + 2);
}

void put_ethernet(uint8_t* p, const uint8_t* destination, uint16_t type) {
    for (unsigned i = 0; i < 6; ++i) {
        p[i] = destination[i];
        p[6 + i] = g_session.self.mac[i];
    }
    put16(p + 12, type);
}

void send_arp(uint16_t operation, const uint8_t* target_mac, uint32_t target_addr) {
    static constexpr uint8_t kBroadcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    uint8_t* p = g_session.out;
    put_ethernet(p, operation == 1 ? kBroadcast : target_mac, kEtherArp);
    uint8_t* a = p + kEthernetBytes;
    put16(a, 1);          // Ethernet
    put16(a + 2, 0x0800); // IPv4
    a[4] = 6;
    a[5] = 4;
    put16(a + 6, operation);
    for (unsigned i = 0; i < 6; ++i) {
        a[8 + i] = g_session.self.mac[i];
        a[18 + i] = operation == 1 ? 0 : target_mac[i];
    }
    put32(a + 14, g_session.self.addr);
    put32(a + 24, target_addr);
    platform::net_send(p, kEthernetBytes + 28, 10 * platform::tick_hz());
}

// Sends `payload` (at most kMaxPayload bytes) to the peer's port.
void send_udp(const uint8_t* payload, size_t bytes) {
    uint8_t* p = g_session.out;
    put_ethernet(p, g_session.peer.mac, kEtherIpv4);
    uint8_t* ip = p + kEthernetBytes;
    ip[0] = 0x45;
    ip[1] = 0;
    put16(ip + 2, static_cast<uint16_t>(kIpBytes + kUdpBytes + bytes));
    put16(ip + 4, g_session.ip_id++);
    put16(ip + 6, 0x4000); // don't fragment
    ip[8] = 64;
    ip[9] = 17; // UDP
    put16(ip + 10, 0);
    put32(ip + 12, g_session.self.addr);
    put32(ip + 16, g_session.peer.addr);
    uint32_t sum = 0;
    for (size_t i = 0; i < kIpBytes; i += 2)
        sum += get16(ip + i);
    while (sum > 0xffff)
        sum = (sum & 0xffff) + (sum >> 16);
    put16(ip + 10, static_cast<uint16_t>(~sum));
    uint8_t* udp = ip + kIpBytes;
    put16(udp, kLocalPort);
    put16(udp + 2, g_session.port);
    put16(udp + 4, static_cast<uint16_t>(kUdpBytes + bytes));
    put16(udp + 6, 0); // no checksum
    __builtin_memcpy(udp + kUdpBytes, payload, bytes);
    platform::net_send(p, kHeadersBytes + bytes, 10 * platform::tick_hz());
}

struct Received {
    bool arp_reply = false;       // an ARP reply from the peer's address (its MAC is now known)
    const uint8_t* udp = nullptr; // a datagram from the peer's address and port to ours: its payload
    size_t udp_bytes = 0;
};

// Waits up to `timeout_ticks` for an ARP reply from the peer or a datagram from it, answering ARP
// requests for our address on the way. False on timeout.
bool receive(uint64_t timeout_ticks, Received& got) {
    got = {};
    const uint64_t deadline = read_ticks() + timeout_ticks;
    for (;;) {
        const uint64_t now = read_ticks();
        if (now >= deadline) return false;
        const size_t bytes = platform::net_receive(g_session.frame, sizeof g_session.frame, deadline - now);
        if (bytes == 0) return false;
        const uint8_t* p = g_session.frame;
        if (bytes < kEthernetBytes) {
            ++g_session.ignored;
            continue;
        }
        const uint16_t type = get16(p + 12);
        if (type == kEtherArp && bytes >= kEthernetBytes + 28) {
            const uint8_t* a = p + kEthernetBytes;
            const uint16_t operation = get16(a + 6);
            const uint32_t sender = get32(a + 14);
            const uint32_t target = get32(a + 24);
            if (get16(a) != 1 || get16(a + 2) != 0x0800 || a[4] != 6 || a[5] != 4 ||
                target != g_session.self.addr) {
                ++g_session.ignored;
                continue;
            }
            if (operation == 1) {
                send_arp(2, a + 8, sender);
                continue;
            }
            if (operation == 2 && sender == g_session.peer.addr) {
                for (unsigned i = 0; i < 6; ++i)
                    g_session.peer.mac[i] = a[8 + i];
                got.arp_reply = true;
                return true;
            }
            ++g_session.ignored;
            continue;
        }
        if (type == kEtherIpv4 && bytes >= kHeadersBytes) {
            const uint8_t* ip = p + kEthernetBytes;
            const size_t header = static_cast<size_t>(ip[0] & 15) * 4;
            const size_t total = get16(ip + 2);
            const bool fragment = (get16(ip + 6) & 0x3fff) != 0;
            if ((ip[0] >> 4) == 4 && header >= kIpBytes && ip[9] == 17 && !fragment &&
                total <= bytes - kEthernetBytes && total >= header + kUdpBytes &&
                get32(ip + 12) == g_session.peer.addr && get32(ip + 16) == g_session.self.addr) {
                const uint8_t* udp = ip + header;
                const size_t length = get16(udp + 4);
                if (get16(udp) == g_session.port && get16(udp + 2) == kLocalPort && length >= kUdpBytes &&
                    length <= total - header) {
                    got.udp = udp + kUdpBytes;
                    got.udp_bytes = length - kUdpBytes;
                    return true;
                }
            }
        }
        ++g_session.ignored;
    }
}

bool resolve_peer(uint64_t second) {
    for (unsigned attempt = 0; attempt < 3; ++attempt) {
        send_arp(1, nullptr, g_session.peer.addr);
        const uint64_t deadline = read_ticks() + second;
        Received got;
        for (uint64_t now = read_ticks(); now < deadline; now = read_ticks())
            if (receive(deadline - now, got) && got.arp_reply) return true;
    }
    return false;
}

void put_ipv4(Line& line, uint32_t addr) {
    line.put_u64(addr >> 24).put('.').put_u64((addr >> 16) & 255).put('.').put_u64((addr >> 8) & 255);
    line.put('.').put_u64(addr & 255);
}

double microseconds(uint64_t ticks) {
    return ticks_to_seconds(ticks) * 1e6;
}

int run_rr(uint64_t ops, size_t bytes, uint64_t second) {
    uint8_t payload[kMaxPayload];
    Received got;
    const uint64_t start = read_ticks();
    for (uint64_t op = 0; op < ops; ++op) {
        for (size_t i = 0; i < bytes; ++i)
            payload[i] = static_cast<uint8_t>(op * 131 + i);
        payload[0] = 'R'; // not 'S' (a stream datagram) for the peer
        const uint64_t sent_at = read_ticks();
        send_udp(payload, bytes);
        bool answered = false;
        while (!answered) {
            if (!receive(second, got)) break;
            answered = got.udp != nullptr && got.udp_bytes == bytes &&
                       __builtin_memcmp(got.udp, payload, bytes) == 0;
        }
        if (!answered) {
            Line line;
            line.put("error: net: no echo of request ").put_u64(op).put(" (").put_u64(bytes);
            line.put(" bytes) within 1 s");
            print_line(line);
            return kExitFailed;
        }
        g_latency.add(read_ticks() - sent_at);
    }
    const double seconds = ticks_to_seconds(read_ticks() - start);
    const double rate = static_cast<double>(ops) / seconds;
    const double p50 = microseconds(g_latency.percentile(0.50));
    const double p99 = microseconds(g_latency.percentile(0.99));
    const double max = microseconds(g_latency.max());
    Line line;
    line.put("net: rr ").put_fixed(rate, 0).put(" transactions/s, latency p50 ").put_fixed(p50, 1);
    line.put(" us, p99 ").put_fixed(p99, 1).put(" us, max ").put_fixed(max, 1).put(" us");
    print_line(line);
    report("net", "transactions_per_s", ResultValue::fixed(rate, 0), "transactions/s");
    report("net", "latency_p50", ResultValue::fixed(p50, 1), "us");
    report("net", "latency_p99", ResultValue::fixed(p99, 1), "us");
    report("net", "latency_max", ResultValue::fixed(max, 1), "us");
    report("net", "ops", ResultValue::whole(ops), "transactions");
    return kExitOk;
}

bool parse_decimal(const uint8_t* text, size_t bytes, uint64_t& out) {
    if (bytes == 0 || bytes > 19) return false;
    out = 0;
    for (size_t i = 0; i < bytes; ++i) {
        if (text[i] < '0' || text[i] > '9') return false;
        out = out * 10 + static_cast<uint64_t>(text[i] - '0');
    }
    return true;
}

// Sends "count?" (up to three times) and parses the peer's decimal answer.
bool query_count(const uint8_t* query, size_t bytes, uint64_t second, uint64_t& count) {
    for (unsigned attempt = 0; attempt < 3; ++attempt) {
        send_udp(query, bytes);
        Received got;
        while (receive(second, got))
            if (got.udp != nullptr && parse_decimal(got.udp, got.udp_bytes, count)) return true;
    }
    return false;
}

int run_stream(uint64_t total, uint64_t second) {
    uint64_t peer_bytes = 0;
    uint8_t payload[kStreamDatagram];
    for (size_t i = 0; i < kStreamDatagram; ++i)
        payload[i] = static_cast<uint8_t>(i);
    payload[0] = 'S'; // a stream datagram: the peer counts it and does not answer
    static constexpr uint8_t kQuery[] = {'c', 'o', 'u', 'n', 't', '?'};
    // A first query: the peer's count starts from 0 (and it is there).
    if (!query_count(kQuery, sizeof kQuery, second, peer_bytes)) {
        print_text("error: net: the peer did not answer \"count?\" with a byte count within 3 tries of 1 s");
        return kExitFailed;
    }
    const uint64_t start = read_ticks();
    for (uint64_t sent = 0; sent < total;) {
        const size_t chunk =
            total - sent < kStreamDatagram ? static_cast<size_t>(total - sent) : kStreamDatagram;
        send_udp(payload, chunk);
        sent += chunk;
    }
    const bool answered = query_count(kQuery, sizeof kQuery, second, peer_bytes);
    const uint64_t ticks = read_ticks() - start;
    if (!answered) {
        print_text("error: net: the peer did not answer \"count?\" with a byte count within 3 tries of 1 s");
        return kExitFailed;
    }
    const double mbit = static_cast<double>(peer_bytes) * 8 / ticks_to_seconds(ticks) / 1e6;
    Line line;
    line.put("net: stream ")
        .put_fixed(mbit, 1)
        .put(" Mbit/s; sent ")
        .put_u64(total)
        .put(" bytes, the peer got ");
    line.put_u64(peer_bytes);
    print_line(line);
    report("net", "mbit_per_s", ResultValue::fixed(mbit, 1), "Mbit/s");
    report("net", "bytes_sent", ResultValue::whole(total), "bytes");
    report("net", "peer_bytes", ResultValue::whole(peer_bytes), "bytes");
    if (peer_bytes != total) {
        print_text("error: net: the peer did not receive every byte sent (datagrams were lost)");
        return kExitFailed;
    }
    return kExitOk;
}

} // namespace

int run_net(const Args& args) {
    constexpr Text kOptions[] = {"peer", "addr", "port", "mode", "ops", "bytes"};
    uint64_t port = 0;
    uint64_t ops = 0;
    if (!args.only(kOptions) || !args.count("port", 7777, port) || !args.count("ops", 1000, ops))
        return kExitUsage;
    const Text mode = args.text("mode", "rr");
    const bool stream = mode == Text{"stream"};
    if (!stream && !(mode == Text{"rr"})) {
        args.error("mode must be rr (request/response round trips) or stream (bulk send)");
        return kExitUsage;
    }
    uint64_t bytes = 0;
    if (!args.size("bytes", stream ? 16ULL << 20 : 64, bytes)) return kExitUsage;
    g_session = Session{};
    g_latency = blk::LatencyHistogram{};
    if (!parse_ipv4(args.text("peer", ""), g_session.peer.addr) ||
        !parse_ipv4(args.text("addr", ""), g_session.self.addr)) {
        args.error("peer= and addr= must both be IPv4 addresses (A.B.C.D): the host's tap address and ours");
        return kExitUsage;
    }
    if (port == 0 || port > 65535) {
        args.error("port must be 1..65535");
        return kExitUsage;
    }
    if (!stream && (bytes > kMaxPayload || ops == 0)) {
        args.error("rr needs ops >= 1 and bytes <= 1472");
        return kExitUsage;
    }
    g_session.port = static_cast<uint16_t>(port);

    platform::NetInfo info;
    Line line;
    if (!platform::net_open(info, line)) {
        Line error;
        error.put("error: net: ").put(line.text());
        print_line(error);
        return kExitFailed;
    }
    for (unsigned i = 0; i < 6; ++i)
        g_session.self.mac[i] = info.mac[i];
    line.clear();
    line.put("net: ").put(info.transport).put(", queues of ").put_u64(info.queue_size).put(", ");
    put_ipv4(line, g_session.self.addr);
    line.put(" -> ");
    put_ipv4(line, g_session.peer.addr);
    line.put(" port ").put_u64(port);
    print_line(line);
    const uint64_t second = platform::tick_hz();
    int status = kExitOk;
    if (!resolve_peer(second)) {
        line.clear();
        line.put("error: net: no ARP reply from ");
        put_ipv4(line, g_session.peer.addr);
        line.put(" after 3 requests (is the tap up with that address?)");
        print_line(line);
        status = kExitFailed;
    } else {
        status = stream ? run_stream(bytes, second) : run_rr(ops, static_cast<size_t>(bytes), second);
    }
    platform::net_close();
    return status;
}

} // namespace vmmlab::guest
