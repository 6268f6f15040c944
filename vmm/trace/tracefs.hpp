// Turns on the kernel's kvm:kvm_exit tracepoint for some threads and streams its text lines, so the
// exits KVM handles in the kernel (which never reach the vCPU loop) can be counted too. Needs root or
// write access to tracefs.
//
// While a KvmExitTracepoint lives it has set, in the tracefs root:
//   set_event_pid               the given thread ids (events of other tasks are not recorded)
//   events/kvm/kvm_exit/enable  1
//   tracing_on                  1
// and a thread reads trace_pipe (poll + non-blocking reads), handing each complete line to the
// callback. stop() (or the destructor) ends the thread after draining what the pipe holds and writes
// the three files back as they were.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <sys/types.h>

#include "base/unique_fd.hpp"

namespace vmmlab {

class KvmExitTracepoint {
public:
    // Called on the reader thread, one line at a time, without the newline.
    using LineHandler = std::function<void(std::string_view line)>;

    // `tracefs_root` empty: find_tracefs(). Throws SystemError naming the file and the cause when tracefs
    // (or the kvm_exit event) is absent or a control file cannot be read or written; whatever had been
    // changed by then is restored first.
    KvmExitTracepoint(std::vector<pid_t> thread_ids, LineHandler on_line, std::string tracefs_root = {});
    KvmExitTracepoint(const KvmExitTracepoint&) = delete;
    KvmExitTracepoint& operator=(const KvmExitTracepoint&) = delete;
    ~KvmExitTracepoint(); // stop()

    // Stops reading (delivering what was already in the pipe) and restores the settings. Idempotent; the
    // line handler is not called after it returns.
    void stop() noexcept;
    const std::string& root() const noexcept { return root_; }

    // The first of /sys/kernel/tracing and /sys/kernel/debug/tracing that has events/kvm/kvm_exit.
    static std::optional<std::string> find_tracefs();

private:
    struct Saved {
        std::string path;
        std::string content;
    };
    void apply(const std::string& relative, const std::string& content);
    void restore() noexcept;
    void read_loop();

    std::string root_;
    LineHandler on_line_;
    std::vector<Saved> saved_; // in the order applied; restored in reverse
    UniqueFd pipe_;
    UniqueFd stop_event_;
    std::thread reader_;
    bool stopped_ = false;
};

} // namespace vmmlab
