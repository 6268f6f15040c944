#include "devices/virtio/net_backend.hpp"

#include <cctype>
#include <cerrno>
#include <charconv>

#include <fmt/format.h>
#include <sys/socket.h>

#include "base/error.hpp"

namespace vmmlab::virtio {

std::optional<net::MacAddress> net::parse_mac(std::string_view text) {
    net::MacAddress mac{};
    if (text.size() != 17) return std::nullopt;
    for (std::size_t i = 0; i < mac.size(); ++i) {
        const char* start = text.data() + 3 * i;
        if (i != 0 && start[-1] != ':') return std::nullopt;
        if (!std::isxdigit(static_cast<unsigned char>(start[0])) ||
            !std::isxdigit(static_cast<unsigned char>(start[1])))
            return std::nullopt;
        std::from_chars(start, start + 2, mac[i], 16);
    }
    return mac;
}

std::string net::to_string(const net::MacAddress& mac) {
    return fmt::format("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", mac[0], mac[1], mac[2], mac[3], mac[4],
                       mac[5]);
}

DatagramSocketBackend::DatagramSocketBackend(bool blocking_writes)
    : write_flags_(MSG_NOSIGNAL | (blocking_writes ? 0 : MSG_DONTWAIT)) {
    int ends[2];
    check_syscall(::socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, ends), "socketpair for a net backend");
    device_end_.reset(ends[0]);
    peer_end_.reset(ends[1]);
}

std::expected<std::size_t, int> DatagramSocketBackend::read_frame(std::span<std::byte> buffer) {
    while (true) {
        const ssize_t got = ::recv(device_end_.get(), buffer.data(), buffer.size(), MSG_DONTWAIT);
        if (got >= 0) return static_cast<std::size_t>(got);
        if (errno != EINTR) return std::unexpected(errno);
    }
}

std::expected<void, int> DatagramSocketBackend::write_frame(std::span<const iovec> pieces) {
    msghdr message{};
    message.msg_iov = const_cast<iovec*>(pieces.data());
    message.msg_iovlen = pieces.size();
    while (true) {
        if (::sendmsg(device_end_.get(), &message, write_flags_) >= 0) return {};
        if (errno != EINTR) return std::unexpected(errno);
    }
}

} // namespace vmmlab::virtio
