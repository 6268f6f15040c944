#include "arch/x86/long_mode.hpp"

#include <array>
#include <cerrno>

#include "base/error.hpp"

namespace vmmlab::x86 {

namespace {
// Descriptor bits: present, S (code/data), type; L for 64-bit code; G and D/B for the flat data segment.
constexpr std::uint64_t kNullDescriptor = 0;
constexpr std::uint64_t kCode64Descriptor = 0x00af'9b00'0000'ffffULL; // P, DPL0, S, type 0xb, L, G
constexpr std::uint64_t kDataDescriptor = 0x00cf'9300'0000'ffffULL;   // P, DPL0, S, type 0x3, D/B, G

kvm_segment flat_segment(std::uint16_t selector, std::uint8_t type, bool code) {
    kvm_segment segment{};
    segment.base = 0;
    segment.limit = 0xffff'ffff;
    segment.selector = selector;
    segment.type = type;
    segment.present = 1;
    segment.dpl = 0;
    segment.s = 1;
    segment.l = code ? 1 : 0;
    segment.db = code ? 0 : 1;
    segment.g = 1;
    return segment;
}
} // namespace

void write_flat_gdt(const GuestMemory& memory, GuestAddress gdt) {
    const std::array<std::uint64_t, 3> table{kNullDescriptor, kCode64Descriptor, kDataDescriptor};
    if (auto written = memory.write_object(gdt, table); !written)
        throw SystemError("GDT: " + written.error().describe(), EFAULT);
}

kvm_sregs long_mode_sregs(kvm_sregs sregs, const LongModeOptions& options) {
    sregs.cs = flat_segment(kCodeSelector, 0xb, true);
    const kvm_segment data = flat_segment(kDataSelector, 0x3, false);
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
    sregs.gdt.base = options.gdt.value;
    sregs.gdt.limit = 3 * 8 - 1;
    // VMX checks TR even when the guest never switches stacks: a busy 64-bit TSS at 0 satisfies it.
    sregs.tr = kvm_segment{};
    sregs.tr.limit = 0x67;
    sregs.tr.type = 0xb;
    sregs.tr.present = 1;
    sregs.ldt = kvm_segment{};
    sregs.ldt.type = 0x2;
    sregs.ldt.unusable = 1;

    sregs.cr3 = options.cr3;
    sregs.cr4 = kCr4Pae | kCr4Osfxsr | kCr4Osxmmexcpt | (options.osxsave ? kCr4Osxsave : 0);
    sregs.cr0 = kCr0Pe | kCr0Mp | kCr0Et | kCr0Ne | kCr0Wp | kCr0Pg;
    sregs.efer = kEferSce | kEferLme | kEferLma | kEferNxe;
    return sregs;
}

} // namespace vmmlab::x86
