// A counter for events a guest can cause over and over (a bad descriptor, an unclaimed port): every event
// is counted, but only the first `burst` of each `interval` should be logged, so a hostile guest cannot
// flood the monitor's log. Thread-safe and lock-free; allocation-free.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>

namespace vmmlab {

class RateLimiter {
public:
    explicit RateLimiter(std::uint32_t burst = 5,
                         std::chrono::nanoseconds interval = std::chrono::seconds(10)) noexcept
        : burst_(burst), interval_(interval.count()) {}

    // Counts one event; true when this one should be logged.
    bool allow() noexcept {
        total_.fetch_add(1, std::memory_order_relaxed);
        const std::int64_t now = std::chrono::steady_clock::now().time_since_epoch().count();
        std::int64_t start = window_start_.load(std::memory_order_relaxed);
        if (now - start >= interval_ &&
            window_start_.compare_exchange_strong(start, now, std::memory_order_relaxed))
            in_window_.store(0, std::memory_order_relaxed);
        return in_window_.fetch_add(1, std::memory_order_relaxed) < burst_;
    }
    std::uint64_t total() const noexcept { return total_.load(std::memory_order_relaxed); }

private:
    const std::uint32_t burst_;
    const std::int64_t interval_;
    std::atomic<std::int64_t> window_start_{std::numeric_limits<std::int64_t>::min() / 2};
    std::atomic<std::uint32_t> in_window_{0};
    std::atomic<std::uint64_t> total_{0};
};

} // namespace vmmlab
