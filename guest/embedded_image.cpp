#include "guest/embedded_image.hpp"

// VMMLAB_GUEST_IMAGE_PATH is set by guest/CMakeLists.txt, which also makes this file depend on it.
asm(".pushsection .rodata.vmmlab_guest_image, \"a\", @progbits\n"
    ".balign 16\n"
    ".globl vmmlab_guest_image_start, vmmlab_guest_image_end\n"
    ".hidden vmmlab_guest_image_start, vmmlab_guest_image_end\n"
    "vmmlab_guest_image_start:\n"
    ".incbin \"" VMMLAB_GUEST_IMAGE_PATH "\"\n"
    "vmmlab_guest_image_end:\n"
    ".popsection\n");

extern "C" [[gnu::visibility("hidden")]] const std::byte vmmlab_guest_image_start[];
extern "C" [[gnu::visibility("hidden")]] const std::byte vmmlab_guest_image_end[];

namespace vmmlab {

std::span<const std::byte> embedded_guest_image() {
    return {vmmlab_guest_image_start, vmmlab_guest_image_end};
}

} // namespace vmmlab
