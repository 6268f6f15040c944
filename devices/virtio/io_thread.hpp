// A device's I/O thread: one thread (named e.g. "io-virtio-blk0") that waits in epoll on eventfds and
// runs a callback for each one that fires, after draining it. The eventfds are a queue's ioeventfd
// (KVM signals it when the guest kicks) or one the vCPU's MMIO notify write signals; the callback kicks
// the queue, so the device's work runs here instead of on the vCPU thread.
//
// Register every eventfd with watch() before start(); stop() (or the destructor) wakes the thread
// through its own stop eventfd and joins it. Callbacks run on the I/O thread only, one at a time.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "base/unique_fd.hpp"

namespace vmmlab::virtio {

class IoThread {
public:
    // Creates the epoll instance and the stop eventfd; throws SystemError if the host refuses.
    explicit IoThread(std::string name);
    ~IoThread();
    IoThread(const IoThread&) = delete;
    IoThread& operator=(const IoThread&) = delete;

    // Calls `callback` on the I/O thread whenever `event_fd` (an eventfd, non-blocking, owned by the
    // caller and open until stop()) becomes readable; the count is read first. Only before start().
    void watch(int event_fd, std::function<void()> callback);
    void start();
    // Idempotent; returns once the thread has ended. A callback in progress finishes first.
    void stop();

    const std::string& name() const { return name_; }
    bool running() const { return thread_.joinable(); }

private:
    struct Watch {
        int fd;
        std::function<void()> callback;
    };
    void loop();

    const std::string name_;
    UniqueFd epoll_;
    UniqueFd stop_;
    std::vector<std::unique_ptr<Watch>> watches_; // epoll_event.data.ptr points at these
    std::thread thread_;
};

// Writes 1 to an eventfd (wakes whoever waits on it); EAGAIN (the counter is full) is a wake-up as well.
void signal_event_fd(int event_fd) noexcept;

} // namespace vmmlab::virtio
