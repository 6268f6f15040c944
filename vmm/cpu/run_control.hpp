// How a running VM ends: the first stop request records the exit status and reason, then every vCPU is
// kicked out of KVM_RUN. Shared by the vCPU threads and the devices that can end the VM.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>

namespace vmmlab {

class RunControl {
public:
    // The first call wins; later calls (another vCPU stopping at the same time) change nothing.
    void request_stop(int status, std::string reason) {
        {
            std::lock_guard lock(mutex_);
            if (stopping_.load(std::memory_order_relaxed)) return;
            status_ = status;
            reason_ = std::move(reason);
            stopping_.store(true, std::memory_order_release);
        }
        stopped_.notify_all();
        if (on_stop_) on_stop_();
    }
    // Waits until a stop was requested or `timeout` passed; true when stopped.
    bool wait_for_stop(std::chrono::milliseconds timeout) {
        std::unique_lock lock(mutex_);
        return stopped_.wait_for(lock, timeout, [this] { return stopping_.load(std::memory_order_acquire); });
    }
    bool stopping() const noexcept { return stopping_.load(std::memory_order_acquire); }
    int status() const {
        std::lock_guard lock(mutex_);
        return status_;
    }
    std::string reason() const {
        std::lock_guard lock(mutex_);
        return reason_;
    }
    // Called once, by the thread that made the first request: kicks every vCPU.
    void set_on_stop(std::function<void()> kick_all) { on_stop_ = std::move(kick_all); }

private:
    mutable std::mutex mutex_;
    std::condition_variable stopped_;
    std::atomic<bool> stopping_{false};
    int status_ = 0;
    std::string reason_;
    std::function<void()> on_stop_;
};

} // namespace vmmlab
