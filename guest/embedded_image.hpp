// The tiny guest's ELF image, built from guest/ and linked into the monitor (library vmmlab_guest_image),
// so `vmmlab run` needs no guest file on disk.
#pragma once

#include <cstddef>
#include <span>

namespace vmmlab {

// The bytes of the vmmlab-guest ELF64 executable (debug information stripped).
std::span<const std::byte> embedded_guest_image();

} // namespace vmmlab
