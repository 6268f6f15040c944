#include "trace/tracefs.hpp"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <cstring>

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "base/error.hpp"

namespace vmmlab {

namespace {

constexpr const char* kEnable = "events/kvm/kvm_exit/enable";
constexpr const char* kEventPid = "set_event_pid";
constexpr const char* kTracingOn = "tracing_on";
constexpr const char* kPermissionHint = "tracing needs root, or write access to tracefs";

bool has_event(const std::string& root) {
    return ::access((root + "/" + kEnable).c_str(), F_OK) == 0;
}

std::string read_file(const std::string& path) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) throw SystemError("reading " + path, errno, errno == EACCES ? kPermissionHint : "");
    std::string content;
    std::array<char, 4096> buffer{};
    for (;;) {
        const ssize_t got = ::read(fd.get(), buffer.data(), buffer.size());
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) throw SystemError("reading " + path, errno);
        if (got == 0) break;
        content.append(buffer.data(), static_cast<std::size_t>(got));
    }
    return content;
}

// Truncates and writes, as `echo content > path` does (for set_event_pid, O_TRUNC clears the list).
void write_file(const std::string& path, const std::string& content) {
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC));
    if (!fd)
        throw SystemError("writing " + path, errno, errno == EACCES || errno == EPERM ? kPermissionHint : "");
    std::size_t done = 0;
    while (done < content.size()) {
        const ssize_t wrote = ::write(fd.get(), content.data() + done, content.size() - done);
        if (wrote < 0 && errno == EINTR) continue;
        if (wrote < 0) throw SystemError("writing " + path, errno);
        done += static_cast<std::size_t>(wrote);
    }
}

// What to write back so that a control file reads as `content` again: "0\n" -> "0", a pid list
// "12\n34\n" -> "12 34", "0*" (soft-disabled) -> "0".
std::string restorable(const std::string& relative, const std::string& content) {
    if (relative == kEventPid) {
        std::string pids = content;
        std::ranges::replace(pids, '\n', ' ');
        return pids;
    }
    return content.empty() ? std::string("0") : content.substr(0, 1);
}

} // namespace

std::optional<std::string> KvmExitTracepoint::find_tracefs() {
    for (const char* root : {"/sys/kernel/tracing", "/sys/kernel/debug/tracing"})
        if (has_event(root)) return root;
    return std::nullopt;
}

KvmExitTracepoint::KvmExitTracepoint(std::vector<pid_t> thread_ids, LineHandler on_line,
                                     std::string tracefs_root)
    : root_(std::move(tracefs_root)), on_line_(std::move(on_line)) {
    if (root_.empty()) {
        auto found = find_tracefs();
        if (!found)
            throw SystemError(
                "tracefs", ENOENT,
                "no events/kvm/kvm_exit under /sys/kernel/tracing or /sys/kernel/debug/tracing: "
                "mount tracefs (mount -t tracefs nodev /sys/kernel/tracing), load kvm, run as root");
        root_ = std::move(*found);
    } else if (!has_event(root_)) {
        throw SystemError(root_ + "/" + kEnable, ENOENT,
                          "is tracefs mounted there, and the kvm module loaded?");
    }
    std::string pids;
    for (const pid_t tid : thread_ids)
        pids += fmt::format("{}{}", pids.empty() ? "" : " ", tid);
    try {
        apply(kEventPid, pids);
        apply(kEnable, "1");
        apply(kTracingOn, "1");
        const std::string pipe_path = root_ + "/trace_pipe";
        pipe_ = UniqueFd(::open(pipe_path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
        if (!pipe_) throw SystemError("opening " + pipe_path, errno, errno == EACCES ? kPermissionHint : "");
        stop_event_ = UniqueFd(check_syscall(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), "eventfd"));
        reader_ = std::thread([this] { read_loop(); });
    } catch (...) {
        restore();
        throw;
    }
}

KvmExitTracepoint::~KvmExitTracepoint() {
    stop();
}

void KvmExitTracepoint::apply(const std::string& relative, const std::string& content) {
    const std::string path = root_ + "/" + relative;
    std::string old = read_file(path);
    write_file(path, content);
    saved_.push_back(Saved{path, restorable(relative, old)});
}

void KvmExitTracepoint::restore() noexcept {
    for (auto saved = saved_.rbegin(); saved != saved_.rend(); ++saved) {
        try {
            write_file(saved->path, saved->content);
        } catch (const std::exception& error) {
            spdlog::warn("kvm_exit tracing: could not restore {}: {}", saved->path, error.what());
        }
    }
    saved_.clear();
}

void KvmExitTracepoint::stop() noexcept {
    if (stopped_) return;
    stopped_ = true;
    if (reader_.joinable()) {
        const std::uint64_t one = 1;
        if (::write(stop_event_.get(), &one, sizeof one) < 0)
            spdlog::warn("kvm_exit tracing: could not signal the reader thread");
        reader_.join();
    }
    pipe_.reset();
    stop_event_.reset();
    restore();
}

void KvmExitTracepoint::read_loop() {
    std::string pending;
    std::array<char, 65536> buffer{};
    const auto deliver = [&](std::size_t length) {
        pending.append(buffer.data(), length);
        std::size_t start = 0;
        for (std::size_t newline; (newline = pending.find('\n', start)) != std::string::npos;
             start = newline + 1)
            on_line_(std::string_view(pending).substr(start, newline - start));
        pending.erase(0, start);
    };
    // Reads until the pipe has nothing more for now: true when data came, false at EAGAIN or end of file.
    const auto drain = [&]() {
        bool any = false;
        for (;;) {
            const ssize_t got = ::read(pipe_.get(), buffer.data(), buffer.size());
            if (got > 0) {
                deliver(static_cast<std::size_t>(got));
                any = true;
                continue;
            }
            if (got < 0 && errno == EINTR) continue;
            if (got < 0 && errno != EAGAIN)
                spdlog::warn("kvm_exit tracing: reading trace_pipe: {}", std::strerror(errno));
            return any;
        }
    };
    for (;;) {
        std::array<pollfd, 2> fds{pollfd{pipe_.get(), POLLIN, 0}, pollfd{stop_event_.get(), POLLIN, 0}};
        if (::poll(fds.data(), fds.size(), -1) < 0) {
            if (errno == EINTR) continue;
            spdlog::warn("kvm_exit tracing: poll: {}", std::strerror(errno));
            break;
        }
        if (fds[1].revents != 0) break;
        if (fds[0].revents & (POLLERR | POLLNVAL)) break;
        // A regular file (tests) is always readable and then at its end: wait for more or for stop.
        if (!drain() && ::poll(&fds[1], 1, 50) > 0) break;
    }
    drain();
    if (!pending.empty()) on_line_(pending);
}

} // namespace vmmlab
