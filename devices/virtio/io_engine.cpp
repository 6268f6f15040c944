#include "devices/virtio/io_engine.hpp"

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>

#include <fcntl.h>
#include <liburing.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "base/error.hpp"
#include "base/unique_fd.hpp"

namespace vmmlab::virtio {

std::string_view to_string(IoEngineKind kind) {
    switch (kind) {
    case IoEngineKind::Sync:
        return "sync";
    case IoEngineKind::Threads:
        return "threads";
    case IoEngineKind::IoUring:
        return "io_uring";
    }
    return "unknown";
}

namespace {
// Continues a read or write after `done` bytes, on the calling thread, until everything is transferred,
// an error, or (reads) the end of the file. Returns the total or -errno.
std::int64_t transfer_rest(const IoRequest& request, std::uint64_t done) {
    std::vector<iovec> rest(request.iov.begin(), request.iov.end());
    std::size_t first = 0;
    auto advance = [&](std::uint64_t bytes) {
        while (bytes > 0 && first < rest.size()) {
            const std::uint64_t step = std::min<std::uint64_t>(bytes, rest[first].iov_len);
            rest[first].iov_base = static_cast<char*>(rest[first].iov_base) + step;
            rest[first].iov_len -= step;
            bytes -= step;
            if (rest[first].iov_len == 0) ++first;
        }
        while (first < rest.size() && rest[first].iov_len == 0)
            ++first;
    };
    advance(done);
    while (first < rest.size()) {
        const auto count = static_cast<int>(std::min<std::size_t>(rest.size() - first, IOV_MAX));
        const auto at = static_cast<off_t>(request.offset + done);
        const ssize_t moved = request.op == IoOp::Read
                                  ? ::preadv(request.fd, rest.data() + first, count, at)
                                  : ::pwritev(request.fd, rest.data() + first, count, at);
        if (moved < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        if (moved == 0) {
            if (request.op == IoOp::Read) break; // end of file
            return -EIO;
        }
        done += static_cast<std::uint64_t>(moved);
        advance(static_cast<std::uint64_t>(moved));
    }
    return static_cast<std::int64_t>(done);
}

std::int64_t write_zeros(int fd, std::uint64_t offset, std::uint64_t length) {
    static const std::vector<char> zeros(1 << 16, 0);
    while (length > 0) {
        const std::size_t chunk = std::min<std::uint64_t>(length, zeros.size());
        const ssize_t written = ::pwrite(fd, zeros.data(), chunk, static_cast<off_t>(offset));
        if (written < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        if (written == 0) return -EIO;
        offset += static_cast<std::uint64_t>(written);
        length -= static_cast<std::uint64_t>(written);
    }
    return 0;
}

int fallocate_mode(IoOp op) {
    switch (op) {
    case IoOp::Discard:
    case IoOp::WriteZeroesUnmap:
        return FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
    case IoOp::WriteZeroes:
        return FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
    default:
        return 0;
    }
}

// What to do with a result that came back from the kernel asynchronously: finish short transfers,
// fall back to writing zeros where ZERO_RANGE / PUNCH_HOLE is not supported.
std::int64_t finish(const IoRequest& request, std::int64_t result) {
    if ((request.op == IoOp::Read || request.op == IoOp::Write) && result >= 0 &&
        static_cast<std::uint64_t>(result) < request.length)
        return transfer_rest(request, static_cast<std::uint64_t>(result));
    if ((request.op == IoOp::WriteZeroes || request.op == IoOp::WriteZeroesUnmap) &&
        (result == -EOPNOTSUPP || result == -EINVAL))
        return write_zeros(request.fd, request.offset, request.length);
    return result;
}

class SyncEngine final : public IoEngine {
public:
    IoEngineKind kind() const override { return IoEngineKind::Sync; }
    void submit(const IoRequest& request) override { done_.push_back({request.tag, execute_io(request)}); }
    void reap(std::vector<IoCompletion>& out) override {
        out.insert(out.end(), done_.begin(), done_.end());
        done_.clear();
    }
    int completion_fd() const override { return -1; }
    std::size_t in_flight() const override { return done_.size(); }

private:
    std::vector<IoCompletion> done_;
};

class ThreadEngine final : public IoEngine {
public:
    explicit ThreadEngine(unsigned threads)
        : event_(check_syscall(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC), "eventfd for I/O completions")) {
        for (unsigned i = 0; i < std::max(1u, threads); ++i)
            workers_.emplace_back([this] { work(); });
    }
    ~ThreadEngine() override {
        {
            std::lock_guard lock(mutex_);
            stopping_ = true;
        }
        wake_.notify_all();
        for (auto& worker : workers_)
            worker.join();
    }
    IoEngineKind kind() const override { return IoEngineKind::Threads; }
    void submit(const IoRequest& request) override {
        {
            std::lock_guard lock(mutex_);
            queued_.push_back(request);
            ++in_flight_;
        }
        wake_.notify_one();
    }
    void reap(std::vector<IoCompletion>& out) override {
        std::uint64_t counter;
        [[maybe_unused]] auto drained = ::read(event_.get(), &counter, sizeof counter);
        std::lock_guard lock(mutex_);
        out.insert(out.end(), done_.begin(), done_.end());
        in_flight_ -= done_.size();
        done_.clear();
    }
    int completion_fd() const override { return event_.get(); }
    std::size_t in_flight() const override {
        std::lock_guard lock(mutex_);
        return in_flight_;
    }

private:
    void work() {
        std::unique_lock lock(mutex_);
        while (true) {
            wake_.wait(lock, [this] { return stopping_ || !queued_.empty(); });
            if (queued_.empty()) return; // stopping, nothing left
            const IoRequest request = queued_.front();
            queued_.pop_front();
            lock.unlock();
            const IoCompletion completion{request.tag, execute_io(request)};
            lock.lock();
            done_.push_back(completion);
            const std::uint64_t one = 1;
            [[maybe_unused]] auto signalled = ::write(event_.get(), &one, sizeof one);
        }
    }

    UniqueFd event_;
    mutable std::mutex mutex_;
    std::condition_variable wake_;
    std::deque<IoRequest> queued_;
    std::vector<IoCompletion> done_;
    std::size_t in_flight_ = 0;
    bool stopping_ = false;
    std::vector<std::thread> workers_;
};

class UringEngine final : public IoEngine {
public:
    explicit UringEngine(unsigned depth)
        : event_(
              check_syscall(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC), "eventfd for io_uring completions")) {
        if (int error = io_uring_queue_init(std::max(depth, 8u), &ring_, 0); error < 0)
            throw SystemError("io_uring_queue_init", -error,
                              "is io_uring disabled (kernel.io_uring_disabled)?");
        if (int error = io_uring_register_eventfd(&ring_, event_.get()); error < 0) {
            io_uring_queue_exit(&ring_);
            throw SystemError("io_uring_register_eventfd", -error);
        }
    }
    ~UringEngine() override {
        // Wait for what the kernel still owns: its buffers belong to the caller.
        io_uring_submit(&ring_);
        while (!requests_.empty()) {
            io_uring_cqe* cqe = nullptr;
            if (io_uring_wait_cqe(&ring_, &cqe) < 0) break;
            requests_.erase(cqe->user_data);
            io_uring_cqe_seen(&ring_, cqe);
        }
        io_uring_queue_exit(&ring_);
    }
    IoEngineKind kind() const override { return IoEngineKind::IoUring; }

    void submit(const IoRequest& request) override {
        io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
        if (sqe == nullptr) {
            io_uring_submit(&ring_);
            sqe = io_uring_get_sqe(&ring_);
        }
        if (sqe == nullptr) { // still full: do it here rather than fail
            ready_.push_back({request.tag, execute_io(request)});
            return;
        }
        const auto offset = static_cast<__u64>(request.offset);
        switch (request.op) {
        case IoOp::Read:
            io_uring_prep_readv(sqe, request.fd, request.iov.data(),
                                static_cast<unsigned>(request.iov.size()), offset);
            break;
        case IoOp::Write:
            io_uring_prep_writev(sqe, request.fd, request.iov.data(),
                                 static_cast<unsigned>(request.iov.size()), offset);
            break;
        case IoOp::Flush:
            io_uring_prep_fsync(sqe, request.fd, IORING_FSYNC_DATASYNC);
            break;
        case IoOp::Discard:
        case IoOp::WriteZeroes:
        case IoOp::WriteZeroesUnmap:
            io_uring_prep_fallocate(sqe, request.fd, fallocate_mode(request.op),
                                    static_cast<off_t>(request.offset), static_cast<off_t>(request.length));
            break;
        }
        const std::uint64_t key = next_key_++;
        io_uring_sqe_set_data64(sqe, key);
        requests_.emplace(key, request);
    }
    void flush() override { io_uring_submit(&ring_); }
    void reap(std::vector<IoCompletion>& out) override {
        std::uint64_t counter;
        [[maybe_unused]] auto drained = ::read(event_.get(), &counter, sizeof counter);
        out.insert(out.end(), ready_.begin(), ready_.end());
        ready_.clear();
        io_uring_cqe* cqe = nullptr;
        while (io_uring_peek_cqe(&ring_, &cqe) == 0 && cqe != nullptr) {
            auto found = requests_.find(cqe->user_data);
            const std::int64_t result = cqe->res;
            io_uring_cqe_seen(&ring_, cqe);
            if (found == requests_.end()) continue;
            out.push_back({found->second.tag, finish(found->second, result)});
            requests_.erase(found);
        }
    }
    int completion_fd() const override { return event_.get(); }
    std::size_t in_flight() const override { return requests_.size() + ready_.size(); }

private:
    UniqueFd event_;
    io_uring ring_{};
    std::uint64_t next_key_ = 1;
    std::unordered_map<std::uint64_t, IoRequest> requests_;
    std::vector<IoCompletion> ready_;
};
} // namespace

std::int64_t execute_io(const IoRequest& request) {
    switch (request.op) {
    case IoOp::Read:
    case IoOp::Write:
        return transfer_rest(request, 0);
    case IoOp::Flush:
        while (::fdatasync(request.fd) < 0)
            if (errno != EINTR) return -errno;
        return 0;
    case IoOp::Discard:
    case IoOp::WriteZeroes:
    case IoOp::WriteZeroesUnmap:
        if (::fallocate(request.fd, fallocate_mode(request.op), static_cast<off_t>(request.offset),
                        static_cast<off_t>(request.length)) < 0)
            return finish(request, -errno);
        return 0;
    }
    return -EINVAL;
}

std::unique_ptr<IoEngine> make_io_engine(IoEngineKind kind, unsigned depth, unsigned threads) {
    switch (kind) {
    case IoEngineKind::Sync:
        return std::make_unique<SyncEngine>();
    case IoEngineKind::Threads:
        return std::make_unique<ThreadEngine>(threads);
    case IoEngineKind::IoUring:
        return std::make_unique<UringEngine>(depth);
    }
    return nullptr;
}

} // namespace vmmlab::virtio
