// Reads a whole file (a kernel, an initrd) into memory. A path the user names can be wrong in many ways;
// each comes back as one line naming the path and the cause, never as an exception.
#pragma once

#include <cstddef>
#include <expected>
#include <filesystem>
#include <string>
#include <vector>

namespace vmmlab {

// The bytes of `path`, or e.g. "/boot/vmlinuz: No such file or directory" or
// "/boot: is a directory, not a file". Follows symbolic links; reads until end of file, so files whose
// size the kernel reports as 0 (in /proc) are read whole too.
std::expected<std::vector<std::byte>, std::string> read_binary_file(const std::filesystem::path& path);

} // namespace vmmlab
