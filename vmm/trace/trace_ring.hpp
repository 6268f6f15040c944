// A bounded ring of timestamped exit records, one per vCPU. When full, a new record overwrites the oldest
// one and counts it as dropped, so a long run keeps its most recent `capacity` exits.
//
// push() copies one 56-byte record into preallocated storage: no allocation, no lock, no atomic. Like
// ExitStats, a ring has one writer (its vCPU thread); snapshot() and the counters are for after that
// thread has been joined.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "trace/site_table.hpp"

namespace vmmlab {

struct ExitRecord {
    std::uint64_t start_ns = 0;    // when the exit reached the monitor (the caller's monotonic clock)
    std::uint64_t duration_ns = 0; // how long the monitor spent on it
    std::uint64_t address = 0;     // the port (PIO) or guest-physical address (MMIO); 0 for other exits
    std::uint64_t rip = 0;         // the guest RIP at the exit when the caller read it, else 0
    std::uint32_t vcpu = 0;
    SiteId site = kNoSite;
    std::uint8_t reason = 0;         // the VcpuExit alternative's index (see ExitStats)
    std::uint8_t size = 0;           // access width in bytes, 0 for exits without data
    bool is_write = false;           // OUT or MMIO write
    std::array<std::byte, 8> data{}; // the first min(size, 8) bytes written or read
};

static_assert(sizeof(ExitRecord) <= 56, "keep ExitRecord small: a ring holds many");

class TraceRing {
public:
    // Allocates room for `capacity` records now; capacity 0 keeps nothing (every push is dropped).
    explicit TraceRing(std::size_t capacity) : records_(capacity) {}

    void push(const ExitRecord& record) noexcept {
        ++pushed_;
        if (records_.empty()) return;
        records_[next_] = record;
        if (++next_ == records_.size()) next_ = 0;
        if (size_ < records_.size()) ++size_;
    }

    std::size_t capacity() const noexcept { return records_.size(); }
    std::size_t size() const noexcept { return size_; }                // records held now
    std::uint64_t pushed() const noexcept { return pushed_; }          // records ever pushed
    std::uint64_t dropped() const noexcept { return pushed_ - size_; } // overwritten (or never kept)

    // The records held, oldest first.
    std::vector<ExitRecord> snapshot() const {
        std::vector<ExitRecord> ordered;
        ordered.reserve(size_);
        const std::size_t oldest = size_ < records_.size() ? 0 : next_;
        for (std::size_t i = 0; i < size_; ++i)
            ordered.push_back(records_[(oldest + i) % records_.size()]);
        return ordered;
    }

    void clear() noexcept {
        next_ = 0;
        size_ = 0;
        pushed_ = 0;
    }

private:
    std::vector<ExitRecord> records_;
    std::size_t next_ = 0; // where the next record goes
    std::size_t size_ = 0;
    std::uint64_t pushed_ = 0;
};

} // namespace vmmlab
