#include "devices/virtio/tap.hpp"

#include <cerrno>
#include <cstring>

#include <fcntl.h>
#include <fmt/format.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

namespace vmmlab::virtio {

namespace {
constexpr const char* kTunPath = "/dev/net/tun";
constexpr const char* kCreatedNamePattern = "vmmlab%d";

// What to add to strerror for the errors a user can do something about.
std::string hint(int error, const char* step) {
    switch (error) {
    case EPERM:
    case EACCES:
        return " (needs CAP_NET_ADMIN)";
    case ENOENT:
    case ENODEV:
    case ENXIO:
        return std::strcmp(step, kTunPath) == 0 ? " (is the tun module loaded?)" : "";
    case EBUSY:
        return " (another process has the tap open)";
    case EINVAL:
        return std::strcmp(step, "TUNSETIFF") == 0 ? " (an existing interface of that name that is not a "
                                                     "single-queue tap, or an invalid name)"
                                                   : "";
    default:
        return "";
    }
}

std::expected<void, std::string> set_link_up(const std::string& interface) {
    UniqueFd control(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!control) return std::unexpected(fmt::format("socket for SIOCSIFFLAGS: {}", std::strerror(errno)));
    ifreq request{};
    std::memcpy(request.ifr_name, interface.data(), interface.size());
    if (::ioctl(control.get(), SIOCGIFFLAGS, &request) < 0)
        return std::unexpected(fmt::format("SIOCGIFFLAGS: {}", std::strerror(errno)));
    if (request.ifr_flags & IFF_UP) return {};
    request.ifr_flags = static_cast<short>(request.ifr_flags | IFF_UP);
    if (::ioctl(control.get(), SIOCSIFFLAGS, &request) < 0) {
        const int error = errno;
        return std::unexpected(
            fmt::format("bringing the link up: {}{}", std::strerror(error), hint(error, "SIOCSIFFLAGS")));
    }
    return {};
}
} // namespace

unsigned tap_offload_flags(std::uint64_t features) {
    auto has = [features](unsigned bit) { return ((features >> bit) & 1) != 0; };
    unsigned flags = 0;
    if (!has(net::kFeatureGuestCsum)) return flags; // the kernel refuses TSO without CSUM
    flags |= TUN_F_CSUM;
    if (has(net::kFeatureGuestTso4)) flags |= TUN_F_TSO4;
    if (has(net::kFeatureGuestTso6)) flags |= TUN_F_TSO6;
    if ((flags & (TUN_F_TSO4 | TUN_F_TSO6)) != 0 && has(net::kFeatureGuestEcn)) flags |= TUN_F_TSO_ECN;
    return flags;
}

std::expected<std::unique_ptr<Tap>, std::string> Tap::open(const TapOptions& options) {
    const std::string label = options.name.empty() ? "(new)" : options.name;
    auto fail = [&](const char* step, int error) {
        return std::unexpected(
            fmt::format("net tap {}: {}: {}{}", label, step, std::strerror(error), hint(error, step)));
    };
    if (options.name.size() >= IFNAMSIZ)
        return std::unexpected(
            fmt::format("net tap {}: an interface name has at most {} characters", label, IFNAMSIZ - 1));
    if (options.name.find_first_of("/: \t\n") != std::string::npos)
        return std::unexpected(fmt::format("net tap {}: not a valid interface name", label));

    UniqueFd fd(::open(kTunPath, O_RDWR | O_NONBLOCK | O_CLOEXEC));
    if (!fd) return fail(kTunPath, errno);

    unsigned supported = 0;
    if (::ioctl(fd.get(), TUNGETFEATURES, &supported) < 0) return fail("TUNGETFEATURES", errno);
    if ((supported & IFF_VNET_HDR) == 0)
        return std::unexpected(fmt::format("net tap {}: the kernel's tun driver lacks IFF_VNET_HDR", label));

    const bool existed = !options.name.empty() && ::if_nametoindex(options.name.c_str()) != 0;
    ifreq request{};
    const std::string& pattern = options.name.empty() ? std::string(kCreatedNamePattern) : options.name;
    std::memcpy(request.ifr_name, pattern.data(), pattern.size());
    request.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    if (::ioctl(fd.get(), TUNSETIFF, &request) < 0) return fail("TUNSETIFF", errno);
    std::string interface(request.ifr_name, ::strnlen(request.ifr_name, IFNAMSIZ));

    const int header_bytes = static_cast<int>(net::kHeaderBytes);
    if (::ioctl(fd.get(), TUNSETVNETHDRSZ, &header_bytes) < 0) return fail("TUNSETVNETHDRSZ", errno);
    if (::ioctl(fd.get(), TUNSETOFFLOAD, 0UL) < 0) return fail("TUNSETOFFLOAD", errno);
    if (!existed) {
        if (auto up = set_link_up(interface); !up)
            return std::unexpected(fmt::format("net tap {}: {}", interface, up.error()));
    }
    return std::unique_ptr<Tap>(new Tap(std::move(fd), std::move(interface), !existed));
}

Tap::Tap(UniqueFd fd, std::string interface, bool created)
    : fd_(std::move(fd)), interface_(std::move(interface)), description_("tap " + interface_),
      created_(created) {
}

std::expected<std::size_t, int> Tap::read_frame(std::span<std::byte> buffer) {
    while (true) {
        const ssize_t got = ::read(fd_.get(), buffer.data(), buffer.size());
        if (got >= 0) return static_cast<std::size_t>(got);
        if (errno != EINTR) return std::unexpected(errno);
    }
}

std::expected<void, int> Tap::write_frame(std::span<const iovec> pieces) {
    while (true) {
        if (::writev(fd_.get(), pieces.data(), static_cast<int>(pieces.size())) >= 0) return {};
        if (errno != EINTR) return std::unexpected(errno);
    }
}

std::expected<void, std::string> Tap::set_guest_offloads(std::uint64_t features) {
    const unsigned flags = tap_offload_flags(features);
    if (flags == offload_flags_) return {};
    if (::ioctl(fd_.get(), TUNSETOFFLOAD, static_cast<unsigned long>(flags)) < 0)
        return std::unexpected(
            fmt::format("net {}: TUNSETOFFLOAD {:#x}: {}", description_, flags, std::strerror(errno)));
    offload_flags_ = flags;
    return {};
}

} // namespace vmmlab::virtio
