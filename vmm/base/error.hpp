// Errors of the monitor itself (host set-up), as opposed to errors a guest or an input file can cause,
// which travel as std::expected values.
#pragma once

#include <cerrno>
#include <stdexcept>
#include <string>

namespace vmmlab {

// A host set-up step failed: opening /dev/kvm, an ioctl the monitor relies on, mmap. The message names
// the step and the cause; main() prints it as the one line the user sees.
class SystemError : public std::runtime_error {
public:
    SystemError(const std::string& what_failed, int error_number, const std::string& hint = {});
    int error_number() const noexcept { return error_number_; }

private:
    int error_number_;
};

// Throws SystemError(what_failed, errno) when result is negative; returns result otherwise.
template <typename T>
T check_syscall(T result, const char* what_failed) {
    if (result < 0) throw SystemError(what_failed, errno);
    return result;
}

} // namespace vmmlab
