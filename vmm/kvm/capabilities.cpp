#include "kvm/capabilities.hpp"

#include <array>
#include <cerrno>

#include "base/error.hpp"
#include "kvm/kvm.hpp"
#include "kvm/kvm_uapi.hpp"

namespace vmmlab::kvm {

namespace {
constexpr std::array kCapabilities{
    CapabilityInfo{KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY", "guest memory regions", true},
    CapabilityInfo{KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP", "in-kernel PIC/IOAPIC/LAPIC", true},
    CapabilityInfo{KVM_CAP_PIT2, "KVM_CAP_PIT2", "in-kernel PIT", true},
    CapabilityInfo{KVM_CAP_SET_TSS_ADDR, "KVM_CAP_SET_TSS_ADDR", "x86 VM set-up", true},
    CapabilityInfo{KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID", "CPU model (KVM_GET_SUPPORTED_CPUID)", true},
    CapabilityInfo{KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT", "vCPU kick without lost wake-ups", true},
    CapabilityInfo{KVM_CAP_NR_VCPUS, "KVM_CAP_NR_VCPUS", "recommended vCPU count", false},
    CapabilityInfo{KVM_CAP_MAX_VCPUS, "KVM_CAP_MAX_VCPUS", "largest --cpus", false},
    CapabilityInfo{KVM_CAP_NR_MEMSLOTS, "KVM_CAP_NR_MEMSLOTS", "memory regions per VM", false},
    CapabilityInfo{KVM_CAP_IOEVENTFD, "KVM_CAP_IOEVENTFD", "notification knob: ioeventfd", false},
    CapabilityInfo{KVM_CAP_IOEVENTFD_ANY_LENGTH, "KVM_CAP_IOEVENTFD_ANY_LENGTH",
                   "ioeventfd on virtio notify writes of any width", false},
    CapabilityInfo{KVM_CAP_IRQFD, "KVM_CAP_IRQFD", "interrupt knob: irqfd", false},
    CapabilityInfo{KVM_CAP_IRQ_ROUTING, "KVM_CAP_IRQ_ROUTING", "MSI-X through GSI routing", false},
    CapabilityInfo{KVM_CAP_SIGNAL_MSI, "KVM_CAP_SIGNAL_MSI", "MSI injection from userspace", false},
    CapabilityInfo{KVM_CAP_HALT_POLL, "KVM_CAP_HALT_POLL", "halt-polling knob", false},
    CapabilityInfo{KVM_CAP_X86_DISABLE_EXITS, "KVM_CAP_X86_DISABLE_EXITS", "exits-disabled knob", false},
    CapabilityInfo{KVM_CAP_BINARY_STATS_FD, "KVM_CAP_BINARY_STATS_FD", "the kernel's exit statistics", false},
    CapabilityInfo{KVM_CAP_TSC_DEADLINE_TIMER, "KVM_CAP_TSC_DEADLINE_TIMER", "TSC-deadline timer in guests",
                   false},
    CapabilityInfo{KVM_CAP_GET_TSC_KHZ, "KVM_CAP_GET_TSC_KHZ", "cycle-to-time conversion", false},
};

std::string disable_exits_bits(int value) {
    std::string text;
    auto add = [&](int bit, const char* name) {
        if ((value & bit) == 0) return;
        if (!text.empty()) text += ",";
        text += name;
    };
    add(KVM_X86_DISABLE_EXITS_MWAIT, "mwait");
    add(KVM_X86_DISABLE_EXITS_HLT, "hlt");
    add(KVM_X86_DISABLE_EXITS_PAUSE, "pause");
    add(KVM_X86_DISABLE_EXITS_CSTATE, "cstate");
    return text.empty() ? "none" : text;
}
} // namespace

std::span<const CapabilityInfo> known_capabilities() {
    return kCapabilities;
}

void require_capabilities(const KvmSystem& system) {
    for (const auto& capability : kCapabilities) {
        if (capability.required && system.check_extension(capability.id) <= 0)
            throw SystemError(std::string(capability.name) + " missing (needed for " + capability.needed_for +
                                  ")",
                              ENOTSUP);
    }
}

std::string describe_capability_value(unsigned id, int value) {
    if (value <= 0) return "no";
    switch (id) {
    case KVM_CAP_X86_DISABLE_EXITS:
        return "yes (" + disable_exits_bits(value) + ")";
    case KVM_CAP_NR_VCPUS:
    case KVM_CAP_MAX_VCPUS:
    case KVM_CAP_NR_MEMSLOTS:
        return std::to_string(value);
    default:
        return "yes";
    }
}

} // namespace vmmlab::kvm
