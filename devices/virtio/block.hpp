// virtio-blk (virtio 1.2, 5.2) on a raw image file or block device.
//
// Features offered: VERSION_1, RING_INDIRECT_DESC, RING_EVENT_IDX, SIZE_MAX, SEG_MAX, BLK_SIZE, FLUSH,
// DISCARD, WRITE_ZEROES, MQ (with more than one queue), RO (read-only images).
// Configuration: capacity (512-byte sectors), size_max and seg_max (so that a request never exceeds the
// virtqueue's 128 MiB chain cap), blk_size (512, or the host's logical block size with O_DIRECT),
// num_queues, discard and write-zeroes limits (kMaxDiscardSectors per segment, kMaxDiscardSegments
// segments, aligned to blk_size), write_zeroes_may_unmap = 1. Writes to the configuration are ignored.
//
// Requests: a 16-byte header {u32 type, u32 reserved, u64 sector} in the readable buffers, data, and a
// status byte as the chain's last writable byte. Handled: IN, OUT, FLUSH (fdatasync: an acknowledged
// flush is durable), GET_ID (the serial, up to 20 bytes, zero padded), DISCARD (PUNCH_HOLE|KEEP_SIZE),
// WRITE_ZEROES (ZERO_RANGE, or PUNCH_HOLE with the UNMAP flag; both read back zeros). Status: OK, IOERR
// (out-of-range sectors, data not a multiple of 512, host I/O error, a write to a read-only image),
// UNSUPP (other types, unknown segment flags). A request too short to carry a header or a status byte
// is answered with what can be written (used length 0 when there is no status byte) and counted.
// A malformed ring (Virtqueue error) is counted, logged rate-limited, and the device asks the transport
// for DEVICE_NEEDS_RESET; it stops serving that queue until reset.
//
// I/O: through an IoEngine (sync, threads, io_uring). With O_DIRECT, requests whose file offset and
// length are aligned to the host's logical block size go to the O_DIRECT descriptor: straight from the
// guest's buffers when every buffer is aligned too, otherwise through an aligned bounce buffer. The rare
// request whose offset or length is not aligned (a guest that ignores blk_size) goes to a second,
// buffered descriptor of the same file; the kernel keeps the two coherent for requests that do not
// overlap in time.
//
// Threads: notify() runs on the caller's thread (vCPU or ioeventfd thread) and, with the sync engine,
// completes requests there. With the threads and io_uring engines, an internal completion thread waits on
// the engine's eventfd and completes requests (used ring, interrupt). One mutex serialises queue access.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <expected>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "base/rate_limit.hpp"
#include "base/unique_fd.hpp"
#include "devices/virtio/io_engine.hpp"
#include "devices/virtio/virtio_device.hpp"

namespace vmmlab::virtio {

namespace blk {
// Request types and status values.
inline constexpr std::uint32_t kTypeIn = 0;
inline constexpr std::uint32_t kTypeOut = 1;
inline constexpr std::uint32_t kTypeFlush = 4;
inline constexpr std::uint32_t kTypeGetId = 8;
inline constexpr std::uint32_t kTypeDiscard = 11;
inline constexpr std::uint32_t kTypeWriteZeroes = 13;
inline constexpr std::uint8_t kStatusOk = 0;
inline constexpr std::uint8_t kStatusIoError = 1;
inline constexpr std::uint8_t kStatusUnsupported = 2;
inline constexpr std::uint32_t kSegmentUnmap = 1;
inline constexpr std::size_t kIdBytes = 20;

// Feature bits.
inline constexpr unsigned kFeatureSizeMax = 1;
inline constexpr unsigned kFeatureSegMax = 2;
inline constexpr unsigned kFeatureReadOnly = 5;
inline constexpr unsigned kFeatureBlockSize = 6;
inline constexpr unsigned kFeatureFlush = 9;
inline constexpr unsigned kFeatureMultiQueue = 12;
inline constexpr unsigned kFeatureDiscard = 13;
inline constexpr unsigned kFeatureWriteZeroes = 14;

inline constexpr std::uint32_t kMaxDiscardSectors = 1u << 22; // 2 GiB per segment
inline constexpr std::uint32_t kMaxDiscardSegments = 32;

// struct virtio_blk_config, the fields up to write_zeroes_may_unmap.
struct Config {
    std::uint64_t capacity;
    std::uint32_t size_max;
    std::uint32_t seg_max;
    std::uint16_t cylinders;
    std::uint8_t heads;
    std::uint8_t sectors;
    std::uint32_t blk_size;
    std::uint8_t physical_block_exp;
    std::uint8_t alignment_offset;
    std::uint16_t min_io_size;
    std::uint32_t opt_io_size;
    std::uint8_t writeback;
    std::uint8_t unused0;
    std::uint16_t num_queues;
    std::uint32_t max_discard_sectors;
    std::uint32_t max_discard_seg;
    std::uint32_t discard_sector_alignment;
    std::uint32_t max_write_zeroes_sectors;
    std::uint32_t max_write_zeroes_seg;
    std::uint8_t write_zeroes_may_unmap;
    std::uint8_t unused1[3];
};
// The guest sees the first 60 bytes (the struct's size without its tail padding).
inline constexpr std::size_t kConfigBytes = 60;
static_assert(offsetof(Config, write_zeroes_may_unmap) == 56 && sizeof(Config) >= kConfigBytes);
} // namespace blk

struct BlockOptions {
    std::string path;
    bool read_only = false;
    bool direct = false; // O_DIRECT
    IoEngineKind engine = IoEngineKind::Sync;
    std::uint16_t queues = 1;
    std::uint16_t queue_size = 256;
    unsigned worker_threads = 4; // Threads engine
    std::string serial;          // GET_ID; at most 20 bytes are used
};

struct BlockStats {
    std::uint64_t requests = 0;
    std::uint64_t bytes_read = 0;
    std::uint64_t bytes_written = 0;
    std::uint64_t flushes = 0;
    std::uint64_t io_errors = 0;         // requests answered IOERR
    std::uint64_t unsupported = 0;       // requests answered UNSUPP
    std::uint64_t bad_requests = 0;      // too short for a header or a status byte
    std::uint64_t ring_errors = 0;       // malformed rings (Virtqueue errors)
    std::uint64_t bounced = 0;           // O_DIRECT requests through a bounce buffer
    std::uint64_t buffered_fallback = 0; // O_DIRECT requests sent to the buffered descriptor
};

class VirtioBlk final : public VirtioDevice {
public:
    // Opens the image. Errors are one line naming the path and the cause, e.g.
    // "disk image /x.img: No such file or directory", "disk image /dev/null: not a regular file or block
    // device", "disk image /x.img: size 1000 is not a multiple of 512 bytes".
    static std::expected<std::unique_ptr<VirtioBlk>, std::string> open(const BlockOptions& options);
    ~VirtioBlk() override;

    std::string_view name() const override { return name_; }
    DeviceType type() const override { return DeviceType::Block; }
    std::uint32_t pci_class() const override { return 0x010000; } // mass storage, SCSI
    std::uint64_t features() const override { return features_; }
    std::uint16_t queue_count() const override { return options_.queues; }
    std::uint16_t max_queue_size() const override { return options_.queue_size; }
    std::size_t config_size() const override { return blk::kConfigBytes; }
    void read_config(std::uint64_t offset, std::span<std::byte> data) const override;
    void write_config(std::uint64_t, std::span<const std::byte>) override {}
    std::expected<void, std::string> activate(Activation activation) override;
    void notify(std::uint16_t queue) override;
    void reset() override;

    // Waits until no request is in flight (completing them); for tests and shutdown.
    void wait_idle();
    std::uint64_t capacity_sectors() const { return config_.capacity; }
    std::uint32_t block_size() const { return config_.blk_size; }
    IoEngineKind engine() const { return engine_->kind(); }
    BlockStats stats() const;

private:
    struct Request;
    VirtioBlk(const BlockOptions& options, UniqueFd file, UniqueFd buffered, std::uint64_t size,
              std::uint32_t alignment);

    void process_queue_locked(std::uint16_t queue);
    void start_request_locked(std::uint16_t queue, const DescriptorChain& chain);
    void submit_locked(Request& request, IoOp op, std::uint64_t offset, std::uint64_t length);
    void reap_locked();
    // Waits until no request is in flight (the completion thread finishes them) or reaps them here.
    void wait_idle_locked(std::unique_lock<std::mutex>& lock);
    void complete_locked(Request& request);
    void finish_locked(std::uint16_t queue, std::uint16_t head, std::uint32_t written);
    void completion_loop();

    const BlockOptions options_;
    const std::string name_;
    UniqueFd file_;     // O_DIRECT when options_.direct
    UniqueFd buffered_; // the same file without O_DIRECT (only with options_.direct)
    const std::uint32_t alignment_;
    blk::Config config_{};
    std::uint64_t features_ = 0;
    std::unique_ptr<IoEngine> engine_;

    mutable std::mutex mutex_;
    std::condition_variable idle_;
    const GuestMemory* memory_ = nullptr;
    DeviceSignals* signals_ = nullptr;
    std::vector<Virtqueue> queues_;
    std::vector<bool> queue_broken_;
    std::vector<std::unique_ptr<Request>> requests_; // by tag
    std::vector<std::size_t> free_requests_;
    std::size_t in_flight_ = 0;
    DescriptorChain chain_;
    std::vector<IoCompletion> completions_;
    BlockStats stats_;
    RateLimiter log_limit_;

    UniqueFd stop_;
    std::thread completion_thread_;
};

} // namespace vmmlab::virtio
