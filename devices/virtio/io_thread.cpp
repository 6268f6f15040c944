#include "devices/virtio/io_thread.hpp"

#include <array>
#include <cerrno>
#include <cstdint>

#include <pthread.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "base/error.hpp"

namespace vmmlab::virtio {

void signal_event_fd(int event_fd) noexcept {
    const std::uint64_t one = 1;
    ssize_t written;
    do {
        written = ::write(event_fd, &one, sizeof one);
    } while (written < 0 && errno == EINTR);
}

namespace {
void drain_event_fd(int event_fd) noexcept {
    std::uint64_t count;
    ssize_t got;
    do {
        got = ::read(event_fd, &count, sizeof count);
    } while (got < 0 && errno == EINTR);
}
} // namespace

IoThread::IoThread(std::string name)
    : name_(std::move(name)), epoll_(::epoll_create1(EPOLL_CLOEXEC)),
      stop_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
    if (!epoll_) throw SystemError(name_ + ": epoll_create1", errno);
    if (!stop_) throw SystemError(name_ + ": eventfd", errno);
    epoll_event event{};
    event.events = EPOLLIN;
    event.data.ptr = nullptr; // the stop eventfd
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, stop_.get(), &event) != 0)
        throw SystemError(name_ + ": epoll_ctl", errno);
}

IoThread::~IoThread() {
    stop();
}

void IoThread::watch(int event_fd, std::function<void()> callback) {
    if (thread_.joinable()) throw SystemError(name_ + ": watch() after start()", EBUSY);
    auto watch = std::make_unique<Watch>(Watch{event_fd, std::move(callback)});
    epoll_event event{};
    event.events = EPOLLIN;
    event.data.ptr = watch.get();
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, event_fd, &event) != 0)
        throw SystemError(name_ + ": epoll_ctl", errno);
    watches_.push_back(std::move(watch));
}

void IoThread::start() {
    if (thread_.joinable()) return;
    thread_ = std::thread([this] { loop(); });
    // Linux limits thread names to 15 characters.
    ::pthread_setname_np(thread_.native_handle(), name_.substr(0, 15).c_str());
}

void IoThread::stop() {
    if (!thread_.joinable()) return;
    signal_event_fd(stop_.get());
    thread_.join();
    drain_event_fd(stop_.get());
}

void IoThread::loop() {
    std::array<epoll_event, 16> events{};
    while (true) {
        const int ready = ::epoll_wait(epoll_.get(), events.data(), static_cast<int>(events.size()), -1);
        if (ready < 0) {
            if (errno == EINTR) continue;
            spdlog::error("{}: epoll_wait: {}", name_, SystemError("epoll_wait", errno).what());
            return;
        }
        for (int i = 0; i < ready; ++i) {
            auto* watch = static_cast<Watch*>(events[static_cast<std::size_t>(i)].data.ptr);
            if (watch == nullptr) return; // stop
            drain_event_fd(watch->fd);
            watch->callback();
        }
    }
}

} // namespace vmmlab::virtio
