// A sense-reversing spin barrier for the CPUs of one run_on_cpus() job.
#pragma once

#include <atomic>

#include "guest/workloads/cpu.hpp"

namespace vmmlab::guest {

class SpinBarrier {
public:
    constexpr SpinBarrier() = default;
    constexpr explicit SpinBarrier(unsigned count) : count_(count) {}

    // Only while no CPU waits on it.
    void reset(unsigned count) {
        arrived_.store(0, std::memory_order_relaxed);
        phase_.store(0, std::memory_order_relaxed);
        count_ = count;
    }

    void wait() {
        const unsigned phase = phase_.load(std::memory_order_acquire);
        if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == count_) {
            arrived_.store(0, std::memory_order_relaxed);
            phase_.store(phase + 1, std::memory_order_release);
            return;
        }
        while (phase_.load(std::memory_order_acquire) == phase)
            cpu_relax();
    }

private:
    alignas(64) std::atomic<unsigned> arrived_{0};
    alignas(64) std::atomic<unsigned> phase_{0};
    unsigned count_ = 1;
};

} // namespace vmmlab::guest
