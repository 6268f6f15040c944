#include "devices/virtio/vhost_net.hpp"

#include <cerrno>
#include <cstring>
#include <vector>

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/ioctl.h>

namespace vmmlab::virtio {

namespace {
// The vhost UAPI (linux/vhost.h, linux/vhost_types.h), restated: those headers pull in
// linux/virtio_ring.h, whose inline C does not compile as C++.
struct vhost_vring_state {
    unsigned int index;
    unsigned int num;
};
struct vhost_vring_file {
    unsigned int index;
    int fd;
};
struct vhost_vring_addr {
    unsigned int index;
    unsigned int flags;
    std::uint64_t desc_user_addr;
    std::uint64_t used_user_addr;
    std::uint64_t avail_user_addr;
    std::uint64_t log_guest_addr;
};
struct vhost_memory_region {
    std::uint64_t guest_phys_addr;
    std::uint64_t memory_size;
    std::uint64_t userspace_addr;
    std::uint64_t flags_padding;
};
struct vhost_memory {
    std::uint32_t nregions;
    std::uint32_t padding;
    // followed by nregions vhost_memory_region
};
constexpr unsigned kVhostVirtio = 0xAF;
constexpr unsigned long VHOST_GET_FEATURES = _IOR(kVhostVirtio, 0x00, std::uint64_t);
constexpr unsigned long VHOST_SET_FEATURES = _IOW(kVhostVirtio, 0x00, std::uint64_t);
constexpr unsigned long VHOST_SET_OWNER = _IO(kVhostVirtio, 0x01);
constexpr unsigned long VHOST_SET_MEM_TABLE = _IOW(kVhostVirtio, 0x03, vhost_memory);
constexpr unsigned long VHOST_SET_VRING_NUM = _IOW(kVhostVirtio, 0x10, vhost_vring_state);
constexpr unsigned long VHOST_SET_VRING_ADDR = _IOW(kVhostVirtio, 0x11, vhost_vring_addr);
constexpr unsigned long VHOST_SET_VRING_BASE = _IOW(kVhostVirtio, 0x12, vhost_vring_state);
constexpr unsigned long VHOST_SET_VRING_KICK = _IOW(kVhostVirtio, 0x20, vhost_vring_file);
constexpr unsigned long VHOST_SET_VRING_CALL = _IOW(kVhostVirtio, 0x21, vhost_vring_file);
constexpr unsigned long VHOST_NET_SET_BACKEND = _IOW(kVhostVirtio, 0x30, vhost_vring_file);
static_assert(sizeof(vhost_vring_addr) == 40 && sizeof(vhost_memory_region) == 32 &&
              sizeof(vhost_memory) == 8);

constexpr const char* kVhostNetPath = "/dev/vhost-net";
constexpr unsigned kVhostNetVirtioNetHeader = 27; // VHOST_NET_F_VIRTIO_NET_HDR: vhost adds the header
} // namespace

std::expected<std::unique_ptr<VhostNet>, std::string> VhostNet::open() {
    UniqueFd fd(::open(kVhostNetPath, O_RDWR | O_CLOEXEC));
    if (!fd) {
        const int error = errno;
        return std::unexpected(fmt::format(
            "vhost-net: {}: {}{}", kVhostNetPath, std::strerror(error),
            error == ENOENT
                ? " (is the vhost_net module loaded?)"
                : (error == EACCES || error == EPERM ? " (needs access to /dev/vhost-net)" : "")));
    }
    if (::ioctl(fd.get(), VHOST_SET_OWNER) < 0)
        return std::unexpected(fmt::format("vhost-net: VHOST_SET_OWNER: {}", std::strerror(errno)));
    std::uint64_t features = 0;
    if (::ioctl(fd.get(), VHOST_GET_FEATURES, &features) < 0)
        return std::unexpected(fmt::format("vhost-net: VHOST_GET_FEATURES: {}", std::strerror(errno)));
    features &= ~(1ULL << kVhostNetVirtioNetHeader);
    return std::unique_ptr<VhostNet>(new VhostNet(std::move(fd), features));
}

std::expected<void, std::string> VhostNet::start(const GuestMemory& memory, std::uint64_t features,
                                                 std::span<const Virtqueue> queues,
                                                 std::span<const int> kick_fds, std::span<const int> call_fds,
                                                 int tap_fd) {
    auto fail = [](const char* step, int error = errno) {
        return std::unexpected(fmt::format("vhost-net: {}: {}", step, std::strerror(error)));
    };
    std::uint64_t accepted = features & features_;
    if (::ioctl(fd_.get(), VHOST_SET_FEATURES, &accepted) < 0) return fail("VHOST_SET_FEATURES");

    const auto& regions = memory.regions();
    std::vector<std::byte> table(sizeof(vhost_memory) + regions.size() * sizeof(vhost_memory_region));
    const vhost_memory header{static_cast<std::uint32_t>(regions.size()), 0};
    std::memcpy(table.data(), &header, sizeof header);
    for (std::size_t i = 0; i < regions.size(); ++i) {
        const vhost_memory_region region{.guest_phys_addr = regions[i].start.value,
                                         .memory_size = regions[i].size,
                                         .userspace_addr = reinterpret_cast<std::uintptr_t>(regions[i].host),
                                         .flags_padding = 0};
        std::memcpy(table.data() + sizeof header + i * sizeof region, &region, sizeof region);
    }
    if (::ioctl(fd_.get(), VHOST_SET_MEM_TABLE, table.data()) < 0) return fail("VHOST_SET_MEM_TABLE");

    for (unsigned index = 0; index < queues.size(); ++index) {
        const Virtqueue& queue = queues[index];
        vhost_vring_state size{index, queue.size()};
        if (::ioctl(fd_.get(), VHOST_SET_VRING_NUM, &size) < 0) return fail("VHOST_SET_VRING_NUM");
        vhost_vring_state base{index, queue.next_available()};
        if (::ioctl(fd_.get(), VHOST_SET_VRING_BASE, &base) < 0) return fail("VHOST_SET_VRING_BASE");
        const auto rings = queue.host_rings();
        vhost_vring_addr addresses{.index = index,
                                   .flags = 0,
                                   .desc_user_addr = reinterpret_cast<std::uintptr_t>(rings.descriptors),
                                   .used_user_addr = reinterpret_cast<std::uintptr_t>(rings.used),
                                   .avail_user_addr = reinterpret_cast<std::uintptr_t>(rings.available),
                                   .log_guest_addr = 0};
        if (::ioctl(fd_.get(), VHOST_SET_VRING_ADDR, &addresses) < 0) return fail("VHOST_SET_VRING_ADDR");
        vhost_vring_file kick{index, kick_fds[index]};
        if (::ioctl(fd_.get(), VHOST_SET_VRING_KICK, &kick) < 0) return fail("VHOST_SET_VRING_KICK");
        vhost_vring_file call{index, call_fds[index]};
        if (::ioctl(fd_.get(), VHOST_SET_VRING_CALL, &call) < 0) return fail("VHOST_SET_VRING_CALL");
    }
    for (unsigned index = 0; index < queues.size(); ++index) {
        vhost_vring_file backend{index, tap_fd};
        if (::ioctl(fd_.get(), VHOST_NET_SET_BACKEND, &backend) < 0) return fail("VHOST_NET_SET_BACKEND");
    }
    return {};
}

} // namespace vmmlab::virtio
