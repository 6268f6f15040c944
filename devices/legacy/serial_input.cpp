#include "devices/legacy/serial_input.hpp"

#include <array>
#include <cerrno>
#include <cstdint>
#include <cstring>

#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "base/error.hpp"

namespace vmmlab::devices {

SerialInputPump::SerialInputPump(Uart16550& uart, int fd, Options options)
    : uart_(uart), fd_(fd), options_(std::move(options)),
      stop_event_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
    if (!stop_event_) throw SystemError("eventfd for the serial input", errno);
    thread_ = std::thread([this] { loop(); });
}

SerialInputPump::~SerialInputPump() {
    const std::uint64_t one = 1;
    [[maybe_unused]] auto written = ::write(stop_event_.get(), &one, sizeof one);
    thread_.join();
}

bool SerialInputPump::stop_requested(int timeout_ms) {
    pollfd stop{stop_event_.get(), POLLIN, 0};
    return ::poll(&stop, 1, timeout_ms) > 0;
}

bool SerialInputPump::deliver(std::span<const std::byte> bytes) {
    while (!bytes.empty()) {
        const std::size_t stored =
            uart_.enqueue_input(bytes.first(std::min(bytes.size(), uart_.input_space())));
        delivered_ += stored;
        bytes = bytes.subspan(stored);
        if (!bytes.empty() && stop_requested(2)) return false;
    }
    return true;
}

void SerialInputPump::loop() {
    bool after_escape = false;
    for (;;) {
        std::array<pollfd, 2> fds{{{fd_, POLLIN, 0}, {stop_event_.get(), POLLIN, 0}}};
        if (::poll(fds.data(), fds.size(), -1) < 0) {
            if (errno == EINTR) continue;
            spdlog::warn("serial input: poll: {}", std::strerror(errno));
            break;
        }
        if (fds[1].revents != 0) break;
        if (fds[0].revents == 0) continue;
        // Read no more than the FIFO can take now (at least one byte, waited for in deliver()), so
        // input stays in the descriptor while the guest is not reading.
        std::array<std::byte, Uart16550::kReceiveCapacity> buffer;
        const std::size_t want = std::max<std::size_t>(1, uart_.input_space());
        const ssize_t got = ::read(fd_, buffer.data(), want);
        if (got < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (got < 0)
            spdlog::warn("serial input: read: {}; the guest gets no more input", std::strerror(errno));
        if (got <= 0) break;

        std::span<const std::byte> bytes(buffer.data(), static_cast<std::size_t>(got));
        if (!options_.escape) {
            if (!deliver(bytes)) break;
            continue;
        }
        // Escape handling: pass runs of ordinary bytes through, interpret the byte after each Ctrl-A.
        bool quit = false, stopped = false;
        std::size_t run_start = 0;
        for (std::size_t i = 0; i < bytes.size() && !quit && !stopped; ++i) {
            const auto value = static_cast<char>(bytes[i]);
            if (after_escape) {
                after_escape = false;
                if (value == 'x' || value == 'X') {
                    quit = true;
                    break;
                }
                const std::byte escape{static_cast<unsigned char>(kEscape)};
                if (!deliver(std::span(&escape, 1))) stopped = true;
                run_start = value == kEscape ? i + 1 : i; // Ctrl-A Ctrl-A: one Ctrl-A
            } else if (value == kEscape) {
                if (!deliver(bytes.subspan(run_start, i - run_start))) stopped = true;
                after_escape = true;
                run_start = i + 1;
            }
        }
        if (quit) {
            if (options_.on_quit) options_.on_quit();
            break;
        }
        if (stopped || !deliver(bytes.subspan(std::min(run_start, bytes.size())))) break;
    }
    finished_ = true;
}

} // namespace vmmlab::devices
