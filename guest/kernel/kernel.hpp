// Guest-kernel internals shared by its files: port I/O, the serial console, ending the VM, the vCPUs.
#pragma once

#include <stdint.h>

#include "guest/abi/boot_abi.hpp"
#include "guest/workloads/text.hpp"

namespace vmmlab::guest::kernel {

inline constexpr uint8_t kTimerVector = 0x40;
inline constexpr uint8_t kSpuriousVector = 0xff;
inline constexpr uint8_t kDeviceVector = 0x41; // MSI-X of the virtio devices (guest/kernel/virtio_blk.cpp)

inline void outb(uint16_t port, uint8_t value) {
    asm volatile("outb %0, %1" ::"a"(value), "Nd"(port) : "memory");
}
inline void outl(uint16_t port, uint32_t value) {
    asm volatile("outl %0, %1" ::"a"(value), "Nd"(port) : "memory");
}
inline void outw(uint16_t port, uint16_t value) {
    asm volatile("outw %0, %1" ::"a"(value), "Nd"(port) : "memory");
}
inline uint32_t inl(uint16_t port) {
    uint32_t value;
    asm volatile("inl %1, %0" : "=a"(value) : "Nd"(port) : "memory");
    return value;
}
inline uint8_t inb(uint16_t port) {
    uint8_t value;
    asm volatile("inb %1, %0" : "=a"(value) : "Nd"(port) : "memory");
    return value;
}
inline uint64_t rdmsr(uint32_t msr) {
    uint32_t low;
    uint32_t high;
    asm volatile("rdmsr" : "=a"(low), "=d"(high) : "c"(msr));
    return (static_cast<uint64_t>(high) << 32) | low;
}

const abi::BootInfo& boot_info();
uint64_t tick_hz();
bool tick_rate_known();
unsigned online_cpus();

void serial_write(Text text);
// The next received byte, or -1 when none is waiting (polled: LSR.DR, then RBR).
int serial_read_byte();
// Writes the status to the exit port; never returns (halts should the monitor not stop the VM).
[[noreturn]] void exit_vm(uint32_t status);
// Prints "guest panic: <message>" and exits with status 70.
[[noreturn]] void panic(Text message);

using Job = void (*)(void* context, unsigned index, unsigned count);
void run_on_cpus(unsigned count, Job job, void* context);

// The xAPIC's MSR and registers (offsets from its base), shared by the HLT benchmark's timer and the
// virtio driver's interrupt set-up.
namespace apic {
inline constexpr uint32_t kMsrBase = 0x1b;
inline constexpr uint32_t kId = 0x20;
inline constexpr uint32_t kVersion = 0x30;
inline constexpr uint32_t kTpr = 0x80;
inline constexpr uint32_t kEoi = 0xb0;
inline constexpr uint32_t kSvr = 0xf0;
inline constexpr uint32_t kLvtTimer = 0x320;
inline constexpr uint32_t kInitialCount = 0x380;
inline constexpr uint32_t kDivide = 0x3e0;
inline constexpr uint32_t kLvtMasked = 1U << 16;
inline constexpr uint32_t kLvtPeriodic = 1U << 17;

inline uint32_t read(uint64_t base, uint32_t reg) {
    return *reinterpret_cast<volatile uint32_t*>(base + reg);
}
inline void write(uint64_t base, uint32_t reg, uint32_t value) {
    *reinterpret_cast<volatile uint32_t*>(base + reg) = value;
}
} // namespace apic

} // namespace vmmlab::guest::kernel
