// Network set-up for the kvm tests that put a guest on a tap: a private network namespace for the calling
// thread (nothing outside it sees the traffic) and a tap with an address in it. Needs CAP_SYS_ADMIN,
// CAP_NET_ADMIN and /dev/net/tun (the sandbox has them).
#pragma once

#include <catch2/catch.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/unique_fd.hpp"

namespace vmmlab::test {

inline std::string errno_text(const char* what) {
    return fmt::format("{}: {}", what, std::strerror(errno));
}

// Moves the calling thread into a new network namespace, and back into the one it left when destroyed.
// Sockets and devices made meanwhile stay in the new one, and so does a child forked meanwhile.
class PrivateNetNamespace {
public:
    PrivateNetNamespace() {
        original_ = UniqueFd(::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
        INFO(errno_text("open /proc/thread-self/ns/net"));
        REQUIRE(original_.get() >= 0);
        INFO(errno_text("unshare(CLONE_NEWNET) (needs CAP_SYS_ADMIN)"));
        REQUIRE(::unshare(CLONE_NEWNET) == 0);
    }
    ~PrivateNetNamespace() { leave(); }
    // Back to the original namespace; the new one lives on while anything in it does.
    void leave() {
        if (original_.get() >= 0 && ::setns(original_.get(), CLONE_NEWNET) != 0)
            std::fprintf(stderr, "%s\n", errno_text("setns back to the test's network namespace").c_str());
        original_ = UniqueFd{};
    }
    PrivateNetNamespace(const PrivateNetNamespace&) = delete;
    PrivateNetNamespace& operator=(const PrivateNetNamespace&) = delete;

private:
    UniqueFd original_;
};

// A persistent tap named `name` in the current namespace, up, with `address`/24 on the host side.
inline void make_tap(const char* name, const char* address) {
    UniqueFd tun(::open("/dev/net/tun", O_RDWR | O_CLOEXEC));
    INFO(errno_text("open /dev/net/tun"));
    REQUIRE(tun.get() >= 0);
    ifreq request{};
    std::strncpy(request.ifr_name, name, IFNAMSIZ - 1);
    request.ifr_flags = IFF_TAP | IFF_NO_PI;
    INFO(errno_text("TUNSETIFF"));
    REQUIRE(::ioctl(tun.get(), TUNSETIFF, &request) == 0);
    REQUIRE(::ioctl(tun.get(), TUNSETPERSIST, 1UL) == 0); // outlives this fd; goes with the namespace

    UniqueFd control(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    REQUIRE(control.get() >= 0);
    auto set_address = [&](unsigned long what, const char* text) {
        ifreq change{};
        std::strncpy(change.ifr_name, name, IFNAMSIZ - 1);
        sockaddr_in in{};
        in.sin_family = AF_INET;
        REQUIRE(::inet_pton(AF_INET, text, &in.sin_addr) == 1);
        std::memcpy(&change.ifr_addr, &in, sizeof in);
        INFO(errno_text("SIOCSIFADDR/SIOCSIFNETMASK"));
        REQUIRE(::ioctl(control.get(), what, &change) == 0);
    };
    set_address(SIOCSIFADDR, address);
    set_address(SIOCSIFNETMASK, "255.255.255.0");
    ifreq flags{};
    std::strncpy(flags.ifr_name, name, IFNAMSIZ - 1);
    REQUIRE(::ioctl(control.get(), SIOCGIFFLAGS, &flags) == 0);
    flags.ifr_flags = static_cast<short>(flags.ifr_flags | IFF_UP);
    INFO(errno_text("SIOCSIFFLAGS"));
    REQUIRE(::ioctl(control.get(), SIOCSIFFLAGS, &flags) == 0);
}

} // namespace vmmlab::test
