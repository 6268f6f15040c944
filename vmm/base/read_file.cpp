#include "base/read_file.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/unique_fd.hpp"

namespace vmmlab {

namespace {
std::unexpected<std::string> fail(const std::filesystem::path& path, int error_number) {
    return std::unexpected(path.string() + ": " + std::strerror(error_number));
}
} // namespace

std::expected<std::vector<std::byte>, std::string> read_binary_file(const std::filesystem::path& path) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return fail(path, errno);
    struct stat info {};
    if (::fstat(fd.get(), &info) != 0) return fail(path, errno);
    if (S_ISDIR(info.st_mode)) return std::unexpected(path.string() + ": is a directory, not a file");

    std::vector<std::byte> bytes;
    bytes.reserve(static_cast<std::size_t>(std::max<off_t>(info.st_size, 0)));
    std::byte buffer[1 << 16];
    for (;;) {
        const ssize_t got = ::read(fd.get(), buffer, sizeof buffer);
        if (got < 0) {
            if (errno == EINTR) continue;
            return fail(path, errno);
        }
        if (got == 0) break;
        bytes.insert(bytes.end(), buffer, buffer + got);
    }
    return bytes;
}

} // namespace vmmlab
