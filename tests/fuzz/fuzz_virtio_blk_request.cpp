// Runs guest-built virtio-blk requests against a 64 KiB in-memory image (a memfd) with the synchronous
// engine. Input: byte 0 = flags (bit 0 INDIRECT_DESC, bit 1 EVENT_IDX, bit 2 read-only), the rest = the
// first bytes of 256 KiB of guest RAM holding a 16-entry queue: descriptor table at 0x0, available ring
// at 0x100, used ring at 0x200. The device must answer or break the queue, never crash, and must never
// write outside the image (its size is checked after every input).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "devices/virtio/block.hpp"

namespace {
class NullSignals final : public vmmlab::virtio::DeviceSignals {
public:
    void used_buffers(std::uint16_t) override {}
    void config_changed() override {}
    void needs_reset() override {}
};
constexpr off_t kImageSize = 0x10000;
} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace vmmlab;
    static std::vector<std::byte> ram(0x40000);
    static const GuestMemory memory({{GuestAddress{0}, ram.size(), ram.data()}});
    static const int image = [] {
        const int fd = ::memfd_create("fuzz-blk", 0);
        if (fd < 0 || ::ftruncate(fd, kImageSize) < 0) __builtin_trap();
        return fd;
    }();
    if (size < 1) return 0;
    std::fill(ram.begin(), ram.end(), std::byte{0});
    std::memcpy(ram.data(), data + 1, std::min(size - 1, ram.size()));

    virtio::BlockOptions options;
    options.path = "/proc/self/fd/" + std::to_string(image);
    options.read_only = data[0] & 4;
    options.queue_size = 16;
    options.serial = "fuzz";
    auto blk = virtio::VirtioBlk::open(options);
    if (!blk) __builtin_trap();
    std::uint64_t features = 1ULL << virtio::kFeatureVersion1;
    if (data[0] & 1) features |= 1ULL << virtio::kFeatureRingIndirectDesc;
    if (data[0] & 2) features |= 1ULL << virtio::kFeatureRingEventIdx;
    auto queue = virtio::Virtqueue::activate(
        memory, {16, GuestAddress{0}, GuestAddress{0x100}, GuestAddress{0x200}}, features);
    if (!queue) __builtin_trap();
    NullSignals signals;
    std::vector<virtio::Virtqueue> queues;
    queues.push_back(std::move(*queue));
    if (!(*blk)->activate(virtio::Activation{memory, features, std::move(queues), signals})) __builtin_trap();
    (*blk)->notify(0);
    (*blk)->wait_idle();
    (*blk)->reset();
    struct stat info {};
    if (::fstat(image, &info) < 0 || info.st_size != kImageSize) __builtin_trap();
    return 0;
}
