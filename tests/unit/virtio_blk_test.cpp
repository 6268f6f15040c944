#include <catch2/catch.hpp>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <vector>

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include "base/unique_fd.hpp"
#include "devices/virtio/block.hpp"
#include "virtio_mock_driver.hpp"

using namespace vmmlab;
using namespace vmmlab::virtio;
using vmmlab::testing::MockDriver;
using vmmlab::testing::MockRam;

namespace {
namespace fs = std::filesystem;

// A directory whose file system accepts O_DIRECT: the temp directory, or (tmpfs before Linux 6.6 refuses
// it with EINVAL) the build directory the tests run in.
fs::path direct_capable_directory() {
    const fs::path candidates[] = {fs::temp_directory_path(), fs::current_path()};
    for (const auto& directory : candidates) {
        const fs::path probe = directory / fmt::format("vmmlab-odirect-probe-{}", ::getpid());
        UniqueFd fd(::open(probe.c_str(), O_RDWR | O_CREAT | O_DIRECT | O_CLOEXEC, 0600));
        fs::remove(probe);
        if (fd) return directory;
    }
    FAIL("no directory here accepts O_DIRECT");
    return {};
}

class TempImage {
public:
    TempImage(std::uint64_t size, const fs::path& directory = fs::temp_directory_path())
        : path_(directory / fmt::format("vmmlab-blk-{}-{}.img", ::getpid(), counter_++)) {
        std::vector<char> bytes(size);
        for (std::size_t i = 0; i < size; ++i)
            bytes[i] = static_cast<char>(i * 7 + i / 512);
        std::ofstream(path_, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(size));
    }
    ~TempImage() { fs::remove(path_); }
    const fs::path& path() const { return path_; }
    std::vector<std::byte> read(std::uint64_t offset, std::size_t length) const {
        std::vector<std::byte> out(length);
        UniqueFd fd(::open(path_.c_str(), O_RDONLY | O_CLOEXEC));
        REQUIRE(::pread(fd.get(), out.data(), length, static_cast<off_t>(offset)) ==
                static_cast<ssize_t>(length));
        return out;
    }

private:
    static inline int counter_ = 0;
    fs::path path_;
};

class RecordingSignals final : public DeviceSignals {
public:
    void used_buffers(std::uint16_t) override { ++interrupts; }
    void config_changed() override {}
    void needs_reset() override { ++resets; }
    int interrupts = 0;
    int resets = 0;
};

constexpr std::uint64_t kHeader = 0x100000;
constexpr std::uint64_t kStatus = 0x100800;
constexpr std::uint64_t kData = 0x200000;

struct BlkRig {
    MockRam ram{8 << 20};
    MockDriver driver{ram, 64};
    RecordingSignals signals;
    std::unique_ptr<VirtioBlk> blk;

    explicit BlkRig(const BlockOptions& options) {
        auto opened = VirtioBlk::open(options);
        if (!opened) FAIL(opened.error());
        blk = std::move(*opened);
        std::vector<Virtqueue> queues;
        auto queue = Virtqueue::activate(ram.memory(), driver.layout(), blk->features());
        REQUIRE(queue);
        queues.push_back(std::move(*queue));
        REQUIRE(blk->activate(Activation{ram.memory(), blk->features(), std::move(queues), signals}));
    }

    void header(std::uint32_t type, std::uint64_t sector) {
        ram.put<std::uint32_t>(kHeader, type);
        ram.put<std::uint32_t>(kHeader + 4, 0);
        ram.put<std::uint64_t>(kHeader + 8, sector);
        ram.put<std::uint8_t>(kStatus, 0xee);
    }
    // Runs one chain through the device and returns its status byte.
    std::uint8_t run(const std::vector<testing::MockBuffer>& buffers, std::uint32_t* used_length = nullptr) {
        driver.add_chain(buffers);
        blk->notify(0);
        blk->wait_idle();
        auto used = driver.take_used();
        REQUIRE(used.size() == 1);
        if (used_length != nullptr) *used_length = used[0].length;
        return ram.get<std::uint8_t>(kStatus);
    }
    // A write of `data` at `sector`, split over buffers of `piece` bytes placed at kData + gap * i.
    std::uint8_t write(std::uint64_t sector, const std::vector<std::byte>& data, std::size_t piece = 4096,
                       std::uint64_t start = kData) {
        header(blk::kTypeOut, sector);
        std::vector<testing::MockBuffer> chain{{kHeader, 16, false}};
        for (std::size_t done = 0; done < data.size(); done += piece) {
            const std::size_t length = std::min(piece, data.size() - done);
            std::memcpy(ram.bytes().data() + start + done * 2, data.data() + done, length);
            chain.push_back({start + done * 2, static_cast<std::uint32_t>(length), false});
        }
        chain.push_back({kStatus, 1, true});
        return run(chain);
    }
    std::uint8_t read(std::uint64_t sector, std::vector<std::byte>& out, std::size_t piece = 4096,
                      std::uint64_t start = kData) {
        header(blk::kTypeIn, sector);
        ram.fill(start, out.size() * 2, std::byte{0xcc});
        std::vector<testing::MockBuffer> chain{{kHeader, 16, false}};
        for (std::size_t done = 0; done < out.size(); done += piece)
            chain.push_back(
                {start + done * 2, static_cast<std::uint32_t>(std::min(piece, out.size() - done)), true});
        chain.push_back({kStatus, 1, true});
        std::uint32_t used = 0;
        const auto status = run(chain, &used);
        if (status == blk::kStatusOk) CHECK(used == out.size() + 1);
        for (std::size_t done = 0; done < out.size(); done += piece)
            std::memcpy(out.data() + done, ram.bytes().data() + start + done * 2,
                        std::min(piece, out.size() - done));
        return status;
    }
    std::uint8_t segments(std::uint32_t type, std::uint64_t sector, std::uint32_t sectors,
                          std::uint32_t flags) {
        header(type, 0);
        ram.put<std::uint64_t>(kHeader + 16, sector);
        ram.put<std::uint32_t>(kHeader + 24, sectors);
        ram.put<std::uint32_t>(kHeader + 28, flags);
        return run({{kHeader, 16, false}, {kHeader + 16, 16, false}, {kStatus, 1, true}});
    }
};

std::vector<std::byte> pattern(std::size_t length, unsigned seed) {
    std::vector<std::byte> out(length);
    for (std::size_t i = 0; i < length; ++i)
        out[i] = std::byte(static_cast<unsigned char>(i * 13 + seed + i / 4096));
    return out;
}
} // namespace

TEST_CASE("virtio-blk: every engine writes, reads back, flushes, discards and zeroes", "[virtio]") {
    const IoEngineKind engine = GENERATE(IoEngineKind::Sync, IoEngineKind::Threads, IoEngineKind::IoUring);
    const bool direct = GENERATE(false, true);
    // Guest buffers aligned to 4 KiB go straight to O_DIRECT; buffers at 256-byte offsets are bounced.
    const std::uint64_t data_at = GENERATE(as<std::uint64_t>{}, 0x200000, 0x200100); // kData, kData + 256
    CAPTURE(to_string(engine), direct, data_at);
    TempImage image(1 << 20, direct ? direct_capable_directory() : fs::temp_directory_path());
    BlockOptions options{
        .path = image.path(), .direct = direct, .engine = engine, .serial = "vmmlab-serial-0001"};
    BlkRig rig(options);
    CHECK(rig.blk->engine() == engine);
    CHECK(rig.blk->capacity_sectors() == 2048);

    const auto data = pattern(3 * 4096, 1);
    REQUIRE(rig.write(8, data) == blk::kStatusOk);
    CHECK(image.read(8 * 512, data.size()) == data);
    CHECK(image.read(0, 8 * 512) == TempImage(8 * 512).read(0, 8 * 512)); // bytes before: untouched

    std::vector<std::byte> back(data.size());
    REQUIRE(rig.read(8, back, 4096, data_at) == blk::kStatusOk);
    CHECK(back == data);
    // A read split into 512-byte pieces.
    std::vector<std::byte> small(2048);
    REQUIRE(rig.read(9, small, 512, data_at) == blk::kStatusOk);
    CHECK(std::equal(small.begin(), small.end(), data.begin() + 512));

    const auto stats = rig.blk->stats();
    if (!direct)
        CHECK(stats.bounced + stats.buffered_fallback == 0);
    else if (data_at % 4096 != 0)
        CHECK(stats.bounced >= 2);
    else if (rig.blk->block_size() == 512)
        CHECK(stats.bounced == 0); // every buffer is aligned
    CHECK(stats.bytes_written == data.size());

    rig.header(blk::kTypeFlush, 0);
    CHECK(rig.run({{kHeader, 16, false}, {kStatus, 1, true}}) == blk::kStatusOk);
    CHECK(rig.blk->stats().flushes == 1);

    rig.header(blk::kTypeGetId, 0);
    rig.ram.fill(kData, 20, std::byte{0xff});
    std::uint32_t used = 0;
    CHECK(rig.run({{kHeader, 16, false}, {kData, 20, true}, {kStatus, 1, true}}, &used) == blk::kStatusOk);
    CHECK(used == 21);
    const std::string id(reinterpret_cast<const char*>(rig.ram.bytes().data() + kData), 20);
    CHECK(id == std::string("vmmlab-serial-0001\0\0", 20));

    const std::vector<std::byte> zeros(4096, std::byte{0});
    CHECK(rig.segments(blk::kTypeDiscard, 8, 8, 0) == blk::kStatusOk);
    CHECK(image.read(8 * 512, 4096) == zeros);
    CHECK(rig.segments(blk::kTypeWriteZeroes, 16, 8, 0) == blk::kStatusOk);
    CHECK(image.read(16 * 512, 4096) == zeros);
    CHECK(rig.segments(blk::kTypeWriteZeroes, 24, 8, blk::kSegmentUnmap) == blk::kStatusOk);
    CHECK(image.read(24 * 512, 4096) == zeros);
    CHECK(image.read(32 * 512, 512) == TempImage(33 * 512).read(32 * 512, 512)); // the next sector survives
    CHECK(fs::file_size(image.path()) == 1 << 20);
    // Read back zeros through the device, too.
    std::vector<std::byte> zeroed(4096);
    REQUIRE(rig.read(16, zeroed, 4096, data_at) == blk::kStatusOk);
    CHECK(zeroed == zeros);
    CHECK(rig.signals.interrupts > 0);
}

TEST_CASE("virtio-blk: out-of-range sectors and bad requests give IOERR, unknown types UNSUPP", "[virtio]") {
    TempImage image(64 * 512);
    BlkRig rig(BlockOptions{.path = image.path(), .serial = {}});
    std::vector<std::byte> buffer(1024);
    CHECK(rig.read(63, buffer) == blk::kStatusIoError); // the second sector is past the end
    CHECK(rig.read(64, buffer) == blk::kStatusIoError);
    CHECK(rig.read(1ULL << 62, buffer) == blk::kStatusIoError); // sector * 512 would overflow
    CHECK(rig.write(63, pattern(1024, 2)) == blk::kStatusIoError);
    CHECK(image.read(63 * 512, 512) == TempImage(64 * 512).read(63 * 512, 512));
    CHECK(rig.read(62, buffer) == blk::kStatusOk); // the last two sectors exactly

    std::vector<std::byte> odd(100);
    CHECK(rig.read(0, odd) == blk::kStatusIoError); // not a multiple of 512
    CHECK(rig.segments(blk::kTypeDiscard, 60, 8, 0) == blk::kStatusIoError);
    CHECK(rig.segments(blk::kTypeDiscard, 0, 8, blk::kSegmentUnmap) == blk::kStatusUnsupported);
    CHECK(rig.segments(blk::kTypeWriteZeroes, 0, 8, 0x4) == blk::kStatusUnsupported);

    rig.header(99, 0);
    CHECK(rig.run({{kHeader, 16, false}, {kStatus, 1, true}}) == blk::kStatusUnsupported);

    // A chain with no status byte: used length 0, counted, no crash.
    rig.header(blk::kTypeIn, 0);
    rig.driver.add_chain({{kHeader, 16, false}});
    rig.blk->notify(0);
    rig.blk->wait_idle();
    auto used = rig.driver.take_used();
    REQUIRE(used.size() == 1);
    CHECK(used[0].length == 0);
    // A header cut short.
    CHECK(rig.run({{kHeader, 8, false}, {kStatus, 1, true}}) == blk::kStatusIoError);

    const auto stats = rig.blk->stats();
    CHECK(stats.bad_requests == 2);
    CHECK(stats.unsupported == 3);
    CHECK(stats.io_errors == 6);
    CHECK(rig.signals.resets == 0);
}

TEST_CASE("virtio-blk: a read-only image refuses writes, discards and zeroing", "[virtio]") {
    TempImage image(16 * 512);
    const auto before = image.read(0, 16 * 512);
    BlkRig rig(BlockOptions{.path = image.path(), .read_only = true, .serial = {}});
    CHECK(rig.blk->features() & (1ULL << blk::kFeatureReadOnly));
    CHECK_FALSE(rig.blk->features() & (1ULL << blk::kFeatureDiscard));
    CHECK(rig.write(0, pattern(512, 3)) == blk::kStatusIoError);
    CHECK(rig.segments(blk::kTypeDiscard, 0, 8, 0) == blk::kStatusIoError);
    CHECK(rig.segments(blk::kTypeWriteZeroes, 0, 8, 0) == blk::kStatusIoError);
    CHECK(image.read(0, 16 * 512) == before);
    std::vector<std::byte> back(512);
    CHECK(rig.read(1, back) == blk::kStatusOk);
    CHECK(back == image.read(512, 512));
}

TEST_CASE("virtio-blk: the configuration space describes the image", "[virtio]") {
    TempImage image(4096 * 512);
    BlkRig rig(BlockOptions{.path = image.path(), .queue_size = 128, .serial = {}});
    blk::Config config{};
    rig.blk->read_config(0, std::as_writable_bytes(std::span(&config, 1)).first(blk::kConfigBytes));
    CHECK(config.capacity == 4096);
    CHECK(config.blk_size == 512);
    CHECK(config.seg_max == 126);
    CHECK(std::uint64_t{config.seg_max} * config.size_max + 4096 <= kMaxChainBytes);
    CHECK(config.num_queues == 1);
    CHECK(config.max_discard_seg == blk::kMaxDiscardSegments);
    CHECK(config.write_zeroes_may_unmap == 1);
    std::uint32_t tail = 0xffffffff;
    rig.blk->read_config(58, std::as_writable_bytes(std::span(&tail, 1)));
    CHECK(tail == 0); // 2 bytes inside (padding), 2 past the end: zeros
    CHECK(rig.blk->features() & (1ULL << kFeatureVersion1));
    CHECK(rig.blk->features() & (1ULL << kFeatureRingEventIdx));
}

TEST_CASE("virtio-blk: a malformed ring breaks the queue and asks for a reset", "[virtio]") {
    TempImage image(16 * 512);
    BlkRig rig(BlockOptions{.path = image.path(), .engine = IoEngineKind::IoUring, .serial = {}});
    rig.driver.write_descriptor(0, {kHeader, 16, kDescriptorNext, 0}); // a loop
    rig.driver.publish(0);
    rig.blk->notify(0);
    CHECK(rig.signals.resets == 1);
    CHECK(rig.blk->stats().ring_errors == 1);
    rig.blk->notify(0); // ignored until reset
    CHECK(rig.signals.resets == 1);
    rig.blk->reset();
    rig.blk->notify(0); // not active: nothing happens
    CHECK(rig.blk->stats().ring_errors == 1);
}

TEST_CASE("virtio-blk: bad disk paths give one clear line", "[virtio]") {
    auto error_of = [](const BlockOptions& options) {
        auto opened = VirtioBlk::open(options);
        REQUIRE_FALSE(opened);
        CHECK(opened.error().find('\n') == std::string::npos);
        return opened.error();
    };
    CHECK(error_of({.path = "/nonexistent/disk.img", .serial = {}}) ==
          "disk image /nonexistent/disk.img: No such file or directory");
    CHECK(error_of({.path = "/dev/null", .serial = {}}) ==
          "disk image /dev/null: not a regular file or block device");
    CHECK(
        error_of({.path = fs::temp_directory_path(), .read_only = true, .serial = {}}) ==
        fmt::format("disk image {}: not a regular file or block device", fs::temp_directory_path().string()));
    TempImage odd(1000);
    CHECK(error_of({.path = odd.path(), .serial = {}}) ==
          fmt::format("disk image {}: size 1000 is not a multiple of 512 bytes", odd.path().string()));
    TempImage fine(512);
    CHECK(error_of({.path = fine.path(), .queue_size = 100, .serial = {}}).find("power of two") !=
          std::string::npos);
}
