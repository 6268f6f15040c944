// The contract between the monitor and the tiny guest: where things are, what the boot-info block
// holds, which ports do what. Included by both sides, so it uses only freestanding C++.
//
// Entry: every vCPU starts directly in 64-bit long mode at the ELF entry point (no real-mode
// trampoline, no INIT/SIPI: the monitor sets each vCPU's registers before its first KVM_RUN), with
//   RDI = guest-physical address of BootInfo, RSI = vCPU index (0 = boot CPU), RSP = top of that vCPU's
//   own stack (16-byte aligned), RFLAGS = 0x2 (interrupts off).
// Paging: identity map (virtual == physical) of [0, max(RAM end, 4 GiB)) with the leaf size named in
// BootInfo::page_size; CR0.PG|PE|WP|NE|MP, CR4.PAE|OSFXSR|OSXMMEXCPT (+OSXSAVE with XCR0 = x87|SSE|AVX
// where the CPU has AVX), EFER.LME|LMA|NXE. A flat 64-bit GDT is loaded (code selector 0x8, data 0x10).
#pragma once

#include <stdint.h>

namespace vmmlab::abi {

inline constexpr uint64_t kBootInfoMagic = 0x4942424c4d4d56ULL; // "VMMLBBI"
inline constexpr uint32_t kBootInfoVersion = 1;

inline constexpr uint64_t kGdtAddress = 0x1000;
inline constexpr uint64_t kBootInfoAddress = 0x2000;    // one BootInfo, below 0x10000
inline constexpr uint64_t kGuestLoadAddress = 0x200000; // the guest ELF is linked here (2 MiB)

// I/O ports (PIO).
inline constexpr uint16_t kSerialPort = 0x3f8;     // 16550 UART, COM1, IRQ 4
inline constexpr uint16_t kExitPort = 0x510;       // OUT of 1, 2 or 4 bytes: end the VM with that status
inline constexpr uint16_t kBootMarkerPort = 0x514; // 8-bit OUT: the monitor timestamps the value (1 = init)
inline constexpr uint16_t kBenchPioPort = 0x520;   // 32-bit OUT/IN: handled in monitor userspace, no effect
inline constexpr uint16_t kBenchIoeventfdPort = 0x524; // 32-bit OUT: bound to an ioeventfd, never exits
                                                       // to userspace (where KVM_CAP_IOEVENTFD exists)
// MMIO: a page that no memory backs, handled in monitor userspace; reads return 0, writes are dropped.
inline constexpr uint64_t kBenchMmioAddress = 0xd0000000;

enum class MemoryType : uint32_t { Usable = 1, Reserved = 2 };

struct MemoryRange {
    uint64_t start;
    uint64_t size;
    MemoryType type;
    uint32_t reserved;
};

inline constexpr uint32_t kMaxMemoryRanges = 32;
inline constexpr uint32_t kCommandLineSize = 2048;

// Lives at kBootInfoAddress. Reserved ranges (page tables, stacks, the image, this block) are listed
// so the guest never hands them out as workload memory.
struct BootInfo {
    uint64_t magic;
    uint32_t version;
    uint32_t vcpu_count;
    uint64_t tsc_khz;   // the TSC frequency KVM gives the guest; 0 when unknown
    uint64_t page_size; // leaf size of the identity map: 4096, 2 MiB or 1 GiB
    uint32_t memory_range_count;
    uint32_t flags; // bit 0: the ioeventfd bench port is really bound to an ioeventfd
    MemoryRange memory_ranges[kMaxMemoryRanges];
    char command_line[kCommandLineSize]; // NUL-terminated
};

inline constexpr uint32_t kFlagIoeventfdBound = 1U << 0;

// Results leave the guest as serial lines of this form, parsed by the monitor:
//   @result workload=<name> metric=<name> value=<decimal> unit=<unit> [vcpu=<n>]
// and the guest ends the VM by writing its status to kExitPort.
inline constexpr const char* kResultPrefix = "@result ";

} // namespace vmmlab::abi
