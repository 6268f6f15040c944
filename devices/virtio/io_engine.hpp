// Block I/O engines behind one interface, so virtio-blk (and benchmarks) can switch between them:
//   Sync     preadv/pwritev/fdatasync/fallocate on the calling thread; completions are ready at once.
//   Threads  a pool of worker threads doing the same calls; an eventfd signals completions.
//   IoUring  io_uring (liburing): submit() fills SQEs, flush() submits the batch with one system call,
//            completions come from the CQ; an eventfd registered with the ring signals them.
// Every engine finishes a request completely: short reads and writes are continued until done (a read
// past the end of the file stops there). Results are the byte count or -errno.
//
// Threads: one thread submits, flushes and reaps at a time (the caller serialises, e.g. with the device
// mutex); the engine's own workers are internal.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <sys/uio.h>

namespace vmmlab::virtio {

enum class IoEngineKind { Sync, Threads, IoUring };
std::string_view to_string(IoEngineKind kind);

enum class IoOp {
    Read,             // preadv into iov at offset
    Write,            // pwritev from iov at offset
    Flush,            // fdatasync: when it completes with 0, everything written before is durable
    Discard,          // fallocate(PUNCH_HOLE | KEEP_SIZE) over [offset, offset + length)
    WriteZeroes,      // fallocate(ZERO_RANGE | KEEP_SIZE); falls back to writing zeros if unsupported
    WriteZeroesUnmap, // fallocate(PUNCH_HOLE | KEEP_SIZE): reads back zeros and frees the space
};

struct IoRequest {
    IoOp op = IoOp::Read;
    int fd = -1;
    std::uint64_t offset = 0;
    std::uint64_t length = 0;   // Discard / WriteZeroes*: bytes; Read / Write: the sum of iov lengths
    std::span<const iovec> iov; // must stay valid until the completion is reaped
    std::uint64_t tag = 0;      // returned in the completion
};

struct IoCompletion {
    std::uint64_t tag;
    std::int64_t result; // bytes transferred (0 for the others) or -errno
};

class IoEngine {
public:
    virtual ~IoEngine() = default;
    virtual IoEngineKind kind() const = 0;
    // Starts a request. Never fails: errors arrive as completions.
    virtual void submit(const IoRequest& request) = 0;
    // Hands submitted requests to the kernel or the workers (io_uring batches until here).
    virtual void flush() {}
    // Appends finished requests to `out` without blocking.
    virtual void reap(std::vector<IoCompletion>& out) = 0;
    // Readable when completions may be waiting; -1 for Sync (completions are ready when submit returns).
    virtual int completion_fd() const = 0;
    // Requests submitted and not reaped yet.
    virtual std::size_t in_flight() const = 0;
};

// `depth`: io_uring queue depth; `threads`: worker count of the Threads engine. Throws SystemError when
// the kernel refuses (e.g. io_uring disabled), with the cause.
std::unique_ptr<IoEngine> make_io_engine(IoEngineKind kind, unsigned depth = 256, unsigned threads = 4);

// Runs one request on the calling thread (what Sync and Threads do); returns bytes or -errno.
std::int64_t execute_io(const IoRequest& request);

} // namespace vmmlab::virtio
