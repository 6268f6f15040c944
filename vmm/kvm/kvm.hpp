// RAII owners of the three KVM file descriptors: the system (/dev/kvm), one VM, one vCPU.
// Every ioctl the monitor uses has a typed wrapper here; a failing one throws SystemError naming it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "base/unique_fd.hpp"
#include "kvm/kvm_uapi.hpp"

namespace vmmlab::kvm {

inline constexpr int kStableApiVersion = 12; // KVM_GET_API_VERSION has returned 12 since Linux 2.6.22

class VcpuFd;
class VmFd;

// Why this process cannot use the KVM device ("absent", "permission denied", ...), or nothing when it
// can open it read-write. Decides whether kvm tests run directly or in tools/kvm-sandbox.
std::optional<std::string> kvm_unusable_reason(const std::string& path = "/dev/kvm");

class KvmSystem {
public:
    // Opens the device read-write; throws SystemError with a hint for the usual causes.
    static KvmSystem open(const std::string& path = "/dev/kvm");

    int api_version() const;
    // KVM_CHECK_EXTENSION on the system fd: 0 when absent, otherwise a capability-specific value.
    int check_extension(unsigned capability) const;
    std::size_t vcpu_mmap_size() const;
    // Refuses an API version other than 12, as every monitor should.
    VmFd create_vm() const;
    std::vector<kvm_cpuid_entry2> supported_cpuid() const;
    int fd() const noexcept { return fd_.get(); }

private:
    explicit KvmSystem(UniqueFd fd) : fd_(std::move(fd)) {}
    UniqueFd fd_;
};

class VmFd {
public:
    // Registers host memory [host, host + size) as guest-physical [gpa, gpa + size) in the given slot.
    void set_user_memory_region(std::uint32_t slot, std::uint64_t gpa, std::uint64_t size, void* host,
                                std::uint32_t flags = 0);
    // The VM's own answer, which may differ from the system's (KVM_CAP_CHECK_EXTENSION_VM).
    int check_extension(unsigned capability) const;
    void enable_cap(unsigned capability, std::span<const std::uint64_t> args = {});
    VcpuFd create_vcpu(unsigned id);

    // x86 platform set-up, in the order a VM needs it: TSS and identity-map pages in the PCI hole,
    // then the in-kernel PIC/IOAPIC/LAPIC and PIT.
    void set_tss_address(std::uint64_t gpa);
    void set_identity_map_address(std::uint64_t gpa);
    void create_irqchip();
    void create_pit2();
    // Drives a GSI of the in-kernel irqchip to a level (edge devices pulse it).
    void set_irq_line(std::uint32_t gsi, bool high);
    // Injects one MSI (address, data) into the in-kernel irqchip (KVM_SIGNAL_MSI). Returns KVM's answer:
    // > 0 delivered, 0 blocked by the guest (e.g. masked in its APIC); throws on failure.
    int signal_msi(std::uint64_t address, std::uint32_t data);
    // Binds a guest PIO write of `length` bytes at `port` to an eventfd: the write no longer exits to
    // userspace, the kernel signals the eventfd instead.
    void add_pio_ioeventfd(std::uint16_t port, std::uint32_t length, int event_fd);
    // The same for a guest MMIO write at `address`: `length` 1, 2, 4 or 8 bytes, or 0 for a write of any
    // length (needs KVM_CAP_IOEVENTFD_ANY_LENGTH). remove_ undoes exactly that binding.
    void add_mmio_ioeventfd(std::uint64_t address, std::uint32_t length, int event_fd);
    void remove_mmio_ioeventfd(std::uint64_t address, std::uint32_t length, int event_fd);
    // Replaces the VM's whole GSI routing table (KVM_SET_GSI_ROUTING): the entries not listed are gone.
    void set_gsi_routing(std::span<const kvm_irq_routing_entry> entries);
    // Binds an eventfd to a GSI (KVM_IRQFD): a write to it injects that GSI's route; deassign unbinds it.
    void assign_irqfd(int event_fd, std::uint32_t gsi);
    void deassign_irqfd(int event_fd, std::uint32_t gsi);
    int fd() const noexcept { return fd_.get(); }

private:
    friend class KvmSystem;
    VmFd(UniqueFd fd, std::size_t vcpu_mmap_size) : fd_(std::move(fd)), vcpu_mmap_size_(vcpu_mmap_size) {}
    UniqueFd fd_;
    std::size_t vcpu_mmap_size_;
};

class VcpuFd {
public:
    VcpuFd(VcpuFd&& other) noexcept;
    VcpuFd& operator=(VcpuFd&&) = delete;
    VcpuFd(const VcpuFd&) = delete;
    VcpuFd& operator=(const VcpuFd&) = delete;
    ~VcpuFd();

    enum class RunResult { Exited, Interrupted };
    // One KVM_RUN. Interrupted means a signal (a kick) arrived before or during guest execution;
    // any other failure throws.
    RunResult run();

    // The shared kvm_run page, as mapped: the whole region, so decoders can bound offsets into it.
    kvm_run& shared_run() noexcept { return *static_cast<kvm_run*>(run_area_); }
    std::span<std::byte> run_area() noexcept { return {static_cast<std::byte*>(run_area_), run_area_size_}; }

    // Per-vCPU set-up; KVM_SET_CPUID2 must come before the first KVM_RUN.
    void set_cpuid(std::span<const kvm_cpuid_entry2> entries);
    void set_xcr0(std::uint64_t value);
    void set_mp_state(std::uint32_t state);
    // The guest TSC frequency in kHz, or 0 where the kernel cannot say.
    std::uint64_t tsc_khz() const;

    kvm_regs regs() const;
    void set_regs(const kvm_regs& regs);
    kvm_sregs sregs() const;
    void set_sregs(const kvm_sregs& sregs);
    unsigned id() const noexcept { return id_; }
    int fd() const noexcept { return fd_.get(); }

private:
    friend class VmFd;
    VcpuFd(UniqueFd fd, unsigned id, std::size_t mmap_size);
    UniqueFd fd_;
    unsigned id_;
    void* run_area_ = nullptr;
    std::size_t run_area_size_ = 0;
};

} // namespace vmmlab::kvm
