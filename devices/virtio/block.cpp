#include "devices/virtio/block.hpp"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include <fcntl.h>
#include <fmt/format.h>
#include <linux/fs.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/error.hpp"

namespace vmmlab::virtio {

namespace {
constexpr std::uint64_t kSector = 512;
constexpr std::size_t kHeaderBytes = 16;
constexpr std::size_t kSegmentBytes = 16;

struct AlignedFree {
    void operator()(std::byte* pointer) const { std::free(pointer); }
};

// Appends iovecs for `count` bytes of `spans` after skipping `skip` bytes.
void collect(std::span<const std::span<std::byte>> spans, std::uint64_t skip, std::uint64_t count,
             std::vector<iovec>& out) {
    for (const auto& span : spans) {
        if (count == 0) break;
        if (skip >= span.size()) {
            skip -= span.size();
            continue;
        }
        const std::uint64_t chunk = std::min<std::uint64_t>(span.size() - skip, count);
        out.push_back({span.data() + skip, chunk});
        count -= chunk;
        skip = 0;
    }
}

bool in_range(std::uint64_t sector, std::uint64_t sectors, std::uint64_t capacity) {
    return sector <= capacity && sectors <= capacity - sector;
}
} // namespace

struct VirtioBlk::Request {
    std::size_t slot = 0; // index in requests_, the engine tag
    std::uint16_t queue = 0;
    std::uint16_t head = 0;
    std::byte* status = nullptr;
    std::uint32_t written = 0; // used length when it succeeds (data + status byte)
    std::uint8_t result = blk::kStatusOk;
    std::uint32_t type = 0;
    unsigned pending = 0;
    std::uint64_t expected = 0; // bytes a read or write must transfer
    std::vector<iovec> guest;   // the guest's data buffers
    std::vector<iovec> io;      // what the engine gets: guest buffers or the bounce buffer
    std::unique_ptr<std::byte, AlignedFree> bounce;
    bool copy_back = false; // a read through the bounce buffer
    std::vector<std::byte> segments;
};

std::expected<std::unique_ptr<VirtioBlk>, std::string> VirtioBlk::open(const BlockOptions& options) {
    const auto fail = [&](const std::string& why) {
        return std::unexpected(fmt::format("disk image {}: {}", options.path, why));
    };
    if (options.queues == 0 || options.queue_size == 0 || options.queue_size > kMaxQueueSize ||
        (options.queue_size & (options.queue_size - 1)) != 0)
        return fail("queue count must be >= 1 and queue size a power of two <= 32768");
    const int access = options.read_only ? O_RDONLY : O_RDWR;
    UniqueFd file(::open(options.path.c_str(), access | O_CLOEXEC | (options.direct ? O_DIRECT : 0)));
    if (!file) {
        if (options.direct && errno == EINVAL) return fail("O_DIRECT is not supported by its file system");
        return fail(std::strerror(errno));
    }
    struct stat info {};
    if (::fstat(file.get(), &info) < 0) return fail(std::strerror(errno));
    std::uint64_t size = 0;
    std::uint32_t alignment = static_cast<std::uint32_t>(kSector);
    if (S_ISREG(info.st_mode)) {
        size = static_cast<std::uint64_t>(info.st_size);
    } else if (S_ISBLK(info.st_mode)) {
        if (::ioctl(file.get(), BLKGETSIZE64, &size) < 0) return fail(std::strerror(errno));
        int logical = 0;
        if (options.direct && ::ioctl(file.get(), BLKSSZGET, &logical) == 0 && logical > 0)
            alignment = static_cast<std::uint32_t>(logical);
    } else {
        return fail("not a regular file or block device");
    }
    if (size % kSector != 0) return fail(fmt::format("size {} is not a multiple of 512 bytes", size));
    UniqueFd buffered;
    if (options.direct) {
        // A regular file's O_DIRECT alignment: 512 unless the file system refuses a 512-byte read.
        if (S_ISREG(info.st_mode) && size >= 4096) {
            std::unique_ptr<std::byte, AlignedFree> probe(
                static_cast<std::byte*>(std::aligned_alloc(4096, 4096)));
            if (::pread(file.get(), probe.get(), kSector, 0) < 0 && errno == EINVAL) alignment = 4096;
        }
        buffered.reset(::open(options.path.c_str(), access | O_CLOEXEC));
        if (!buffered) return fail(std::strerror(errno));
    }
    try {
        return std::unique_ptr<VirtioBlk>(
            new VirtioBlk(options, std::move(file), std::move(buffered), size, alignment));
    } catch (const SystemError& error) {
        return fail(error.what());
    }
}

VirtioBlk::VirtioBlk(const BlockOptions& options, UniqueFd file, UniqueFd buffered, std::uint64_t size,
                     std::uint32_t alignment)
    : options_(options), name_("virtio-blk " + options.path), file_(std::move(file)),
      buffered_(std::move(buffered)), alignment_(alignment),
      engine_(make_io_engine(options.engine,
                             std::min(4096u, std::uint32_t{options.queues} * options.queue_size),
                             options.worker_threads)) {
    const std::uint32_t seg_max =
        std::max<std::uint32_t>(1, options.queue_size > 2 ? options.queue_size - 2u : 1u);
    // Keep a whole request (seg_max segments of size_max, plus header and status) under the chain cap.
    const std::uint64_t per_segment = (kMaxChainBytes - 4096) / seg_max;
    const auto size_max =
        static_cast<std::uint32_t>(std::min<std::uint64_t>(1 << 20, per_segment & ~0xfffULL));
    config_.capacity = size / kSector;
    config_.size_max = size_max;
    config_.seg_max = seg_max;
    config_.blk_size = options.direct ? alignment : static_cast<std::uint32_t>(kSector);
    config_.num_queues = options.queues;
    config_.max_discard_sectors = blk::kMaxDiscardSectors;
    config_.max_discard_seg = blk::kMaxDiscardSegments;
    config_.discard_sector_alignment = config_.blk_size / static_cast<std::uint32_t>(kSector);
    config_.max_write_zeroes_sectors = blk::kMaxDiscardSectors;
    config_.max_write_zeroes_seg = blk::kMaxDiscardSegments;
    config_.write_zeroes_may_unmap = 1;

    features_ = 1ULL << kFeatureVersion1 | 1ULL << kFeatureRingIndirectDesc | 1ULL << kFeatureRingEventIdx |
                1ULL << blk::kFeatureSizeMax | 1ULL << blk::kFeatureSegMax | 1ULL << blk::kFeatureBlockSize |
                1ULL << blk::kFeatureFlush;
    if (options.read_only)
        features_ |= 1ULL << blk::kFeatureReadOnly;
    else
        features_ |= 1ULL << blk::kFeatureDiscard | 1ULL << blk::kFeatureWriteZeroes;
    if (options.queues > 1) features_ |= 1ULL << blk::kFeatureMultiQueue;

    if (engine_->completion_fd() >= 0) {
        stop_.reset(check_syscall(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), "eventfd for virtio-blk"));
        completion_thread_ = std::thread([this] { completion_loop(); });
    }
}

VirtioBlk::~VirtioBlk() {
    wait_idle();
    if (completion_thread_.joinable()) {
        const std::uint64_t one = 1;
        [[maybe_unused]] auto written = ::write(stop_.get(), &one, sizeof one);
        completion_thread_.join();
    }
}

void VirtioBlk::completion_loop() {
    pollfd fds[2] = {{engine_->completion_fd(), POLLIN, 0}, {stop_.get(), POLLIN, 0}};
    while (true) {
        if (::poll(fds, 2, -1) < 0) {
            if (errno == EINTR) continue;
            spdlog::error("{}: poll on I/O completions: {}", name_, std::strerror(errno));
            return;
        }
        if (fds[1].revents & POLLIN) return;
        std::lock_guard lock(mutex_);
        reap_locked();
    }
}

void VirtioBlk::read_config(std::uint64_t offset, std::span<std::byte> data) const {
    read_config_bytes(std::as_bytes(std::span(&config_, 1)).first(blk::kConfigBytes), offset, data);
}

BlockStats VirtioBlk::stats() const {
    std::lock_guard lock(mutex_);
    return stats_;
}

std::expected<void, std::string> VirtioBlk::activate(Activation activation) {
    std::lock_guard lock(mutex_);
    if (activation.queues.empty() || !activation.queues[0].active())
        return std::unexpected(name_ + ": the driver did not enable queue 0");
    memory_ = &activation.memory;
    signals_ = &activation.signals;
    queues_ = std::move(activation.queues);
    queue_broken_.assign(queues_.size(), false);
    return {};
}

void VirtioBlk::reset() {
    std::unique_lock lock(mutex_);
    wait_idle_locked(lock); // requests in flight own guest buffers: let them finish first
    queues_.clear();
    queue_broken_.clear();
    signals_ = nullptr;
    memory_ = nullptr;
}

void VirtioBlk::wait_idle() {
    std::unique_lock lock(mutex_);
    wait_idle_locked(lock);
}

void VirtioBlk::wait_idle_locked(std::unique_lock<std::mutex>& lock) {
    if (completion_thread_.joinable())
        idle_.wait(lock, [this] { return in_flight_ == 0; });
    else
        reap_locked();
}

void VirtioBlk::notify(std::uint16_t queue) {
    std::lock_guard lock(mutex_);
    if (signals_ == nullptr || queue >= queues_.size() || !queues_[queue].active() || queue_broken_[queue])
        return;
    process_queue_locked(queue);
    engine_->flush();
    reap_locked();
}

void VirtioBlk::process_queue_locked(std::uint16_t queue) {
    Virtqueue& ring = queues_[queue];
    // Keep kicks off while draining; re-enable and re-check so a chain added meanwhile is not missed.
    ring.disable_notifications();
    while (true) {
        auto popped = ring.pop(chain_);
        if (!popped) {
            ++stats_.ring_errors;
            queue_broken_[queue] = true;
            if (log_limit_.allow())
                spdlog::warn("{}: queue {}: {} (device needs reset)", name_, queue,
                             popped.error().describe());
            signals_->needs_reset();
            return;
        }
        if (*popped) {
            start_request_locked(queue, chain_);
            continue;
        }
        auto more = ring.enable_notifications();
        if (!more || !*more) return;
        ring.disable_notifications();
    }
}

void VirtioBlk::start_request_locked(std::uint16_t queue, const DescriptorChain& chain) {
    ++stats_.requests;
    if (chain.writable_bytes == 0 || chain.readable_bytes < kHeaderBytes) {
        ++stats_.bad_requests;
        if (log_limit_.allow())
            spdlog::warn("{}: queue {}: request at head {} has no header or no status byte", name_, queue,
                         chain.head);
        if (chain.writable_bytes != 0) {
            const auto& last = chain.writable.back();
            last[last.size() - 1] = std::byte{blk::kStatusIoError};
        }
        finish_locked(queue, chain.head, chain.writable_bytes != 0 ? 1 : 0);
        return;
    }
    std::size_t slot;
    if (free_requests_.empty()) {
        slot = requests_.size();
        requests_.push_back(std::make_unique<Request>());
        requests_.back()->slot = slot;
    } else {
        slot = free_requests_.back();
        free_requests_.pop_back();
    }
    Request& request = *requests_[slot];
    request.queue = queue;
    request.head = chain.head;
    request.status = &chain.writable.back()[chain.writable.back().size() - 1];
    request.written = 1;
    request.result = blk::kStatusOk;
    request.pending = 0;
    request.expected = 0;
    request.guest.clear();
    request.io.clear();
    request.bounce.reset();
    request.copy_back = false;

    std::array<std::byte, kHeaderBytes> header{};
    gather(chain.readable, 0, header);
    std::uint32_t type;
    std::uint64_t sector;
    std::memcpy(&type, header.data(), 4);
    std::memcpy(&sector, header.data() + 8, 8);
    request.type = type;
    const std::uint64_t readable_data = chain.readable_bytes - kHeaderBytes;
    const std::uint64_t writable_data = chain.writable_bytes - 1;
    const std::uint64_t capacity = config_.capacity;

    switch (type) {
    case blk::kTypeIn:
    case blk::kTypeOut: {
        const bool is_read = type == blk::kTypeIn;
        const std::uint64_t length = is_read ? writable_data : readable_data;
        if (!is_read && options_.read_only)
            request.result = blk::kStatusIoError;
        else if (length % kSector != 0 || !in_range(sector, length / kSector, capacity))
            request.result = blk::kStatusIoError;
        if (request.result != blk::kStatusOk || length == 0) break;
        if (is_read)
            collect(chain.writable, 0, length, request.guest);
        else
            collect(chain.readable, kHeaderBytes, length, request.guest);
        request.written = is_read ? static_cast<std::uint32_t>(length + 1) : 1;
        submit_locked(request, is_read ? IoOp::Read : IoOp::Write, sector * kSector, length);
        break;
    }
    case blk::kTypeFlush:
        ++stats_.flushes;
        submit_locked(request, IoOp::Flush, 0, 0);
        break;
    case blk::kTypeGetId: {
        std::array<std::byte, blk::kIdBytes> id{};
        std::memcpy(id.data(), options_.serial.data(), std::min(options_.serial.size(), id.size()));
        std::vector<iovec> out;
        const std::uint64_t length = std::min<std::uint64_t>(writable_data, id.size());
        collect(chain.writable, 0, length, out);
        std::size_t done = 0;
        for (const auto& piece : out) {
            std::memcpy(piece.iov_base, id.data() + done, piece.iov_len);
            done += piece.iov_len;
        }
        request.written = static_cast<std::uint32_t>(length + 1);
        break;
    }
    case blk::kTypeDiscard:
    case blk::kTypeWriteZeroes: {
        const bool discard = type == blk::kTypeDiscard;
        if (options_.read_only) {
            request.result = blk::kStatusIoError;
            break;
        }
        const std::uint64_t count = readable_data / kSegmentBytes;
        if (readable_data % kSegmentBytes != 0 || count == 0 || count > blk::kMaxDiscardSegments) {
            request.result = blk::kStatusIoError;
            break;
        }
        request.segments.resize(readable_data);
        gather(chain.readable, kHeaderBytes, request.segments);
        // Check every segment before starting any, so a bad one does not leave half a request done.
        for (std::uint64_t i = 0; i < count && request.result == blk::kStatusOk; ++i) {
            std::uint64_t start;
            std::uint32_t sectors, flags;
            std::memcpy(&start, request.segments.data() + i * kSegmentBytes, 8);
            std::memcpy(&sectors, request.segments.data() + i * kSegmentBytes + 8, 4);
            std::memcpy(&flags, request.segments.data() + i * kSegmentBytes + 12, 4);
            if ((discard && flags != 0) || (flags & ~blk::kSegmentUnmap) != 0)
                request.result = blk::kStatusUnsupported;
            else if (sectors > blk::kMaxDiscardSectors || !in_range(start, sectors, capacity))
                request.result = blk::kStatusIoError;
        }
        for (std::uint64_t i = 0; i < count && request.result == blk::kStatusOk; ++i) {
            std::uint64_t start;
            std::uint32_t sectors, flags;
            std::memcpy(&start, request.segments.data() + i * kSegmentBytes, 8);
            std::memcpy(&sectors, request.segments.data() + i * kSegmentBytes + 8, 4);
            std::memcpy(&flags, request.segments.data() + i * kSegmentBytes + 12, 4);
            if (sectors == 0) continue;
            const IoOp op = discard
                                ? IoOp::Discard
                                : ((flags & blk::kSegmentUnmap) ? IoOp::WriteZeroesUnmap : IoOp::WriteZeroes);
            submit_locked(request, op, start * kSector, std::uint64_t{sectors} * kSector);
        }
        break;
    }
    default:
        request.result = blk::kStatusUnsupported;
        break;
    }
    if (request.pending == 0) {
        ++request.pending; // complete_locked counts it down
        complete_locked(request);
    }
}

void VirtioBlk::submit_locked(Request& request, IoOp op, std::uint64_t offset, std::uint64_t length) {
    int fd = file_.get();
    if (op == IoOp::Read || op == IoOp::Write) {
        request.expected = length;
        request.io = request.guest;
        if (options_.direct) {
            const auto aligned = [&](std::uint64_t value) { return value % alignment_ == 0; };
            if (!aligned(offset) || !aligned(length)) {
                fd = buffered_.get();
                ++stats_.buffered_fallback;
            } else if (!std::ranges::all_of(request.guest, [&](const iovec& piece) {
                           return aligned(reinterpret_cast<std::uintptr_t>(piece.iov_base)) &&
                                  aligned(piece.iov_len);
                       })) {
                ++stats_.bounced;
                request.bounce.reset(static_cast<std::byte*>(std::aligned_alloc(alignment_, length)));
                if (!request.bounce) {
                    request.result = blk::kStatusIoError;
                    return;
                }
                if (op == IoOp::Write) {
                    std::size_t done = 0;
                    for (const auto& piece : request.guest) {
                        std::memcpy(request.bounce.get() + done, piece.iov_base, piece.iov_len);
                        done += piece.iov_len;
                    }
                } else {
                    request.copy_back = true;
                }
                request.io.assign(1, iovec{request.bounce.get(), length});
            }
        }
    }
    ++request.pending;
    ++in_flight_;
    engine_->submit(IoRequest{op, fd, offset, length, request.io, request.slot});
}

void VirtioBlk::reap_locked() {
    completions_.clear();
    engine_->reap(completions_);
    for (const IoCompletion& completion : completions_) {
        Request& request = *requests_.at(completion.tag);
        --in_flight_;
        if (completion.result < 0) {
            if (request.result == blk::kStatusOk && log_limit_.allow())
                spdlog::warn("{}: host I/O error: {}", name_,
                             std::strerror(static_cast<int>(-completion.result)));
            request.result = blk::kStatusIoError;
        } else if (request.expected != 0 &&
                   static_cast<std::uint64_t>(completion.result) != request.expected) {
            request.result = blk::kStatusIoError;
        } else if (request.type == blk::kTypeIn) {
            stats_.bytes_read += static_cast<std::uint64_t>(completion.result);
        } else if (request.type == blk::kTypeOut) {
            stats_.bytes_written += static_cast<std::uint64_t>(completion.result);
        }
        complete_locked(request);
    }
    for (std::uint16_t queue = 0; queue < queues_.size(); ++queue)
        if (signals_ != nullptr && queues_[queue].needs_notification()) signals_->used_buffers(queue);
    if (in_flight_ == 0) idle_.notify_all();
}

void VirtioBlk::complete_locked(Request& request) {
    if (--request.pending != 0) return;
    if (request.copy_back && request.result == blk::kStatusOk) {
        std::size_t done = 0;
        for (const auto& piece : request.guest) {
            std::memcpy(piece.iov_base, request.bounce.get() + done, piece.iov_len);
            done += piece.iov_len;
        }
    }
    request.bounce.reset();
    if (request.result == blk::kStatusIoError) ++stats_.io_errors;
    if (request.result == blk::kStatusUnsupported) ++stats_.unsupported;
    *request.status = std::byte{request.result};
    finish_locked(request.queue, request.head, request.result == blk::kStatusOk ? request.written : 1);
    free_requests_.push_back(request.slot);
}

void VirtioBlk::finish_locked(std::uint16_t queue, std::uint16_t head, std::uint32_t written) {
    if (queue >= queues_.size()) return;
    if (auto pushed = queues_[queue].push_used(head, written); !pushed && log_limit_.allow())
        spdlog::warn("{}: queue {}: {}", name_, queue, pushed.error().describe());
}

} // namespace vmmlab::virtio
