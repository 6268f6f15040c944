// The KVM capabilities vmmlab's knobs depend on, with what each one is needed for.
#pragma once

#include <span>
#include <string>

namespace vmmlab::kvm {

class KvmSystem;

struct CapabilityInfo {
    unsigned id;
    const char* name;       // the KVM_CAP_* name, as the kernel documentation spells it
    const char* needed_for; // the feature or knob that uses it
    bool required;          // without it vmmlab cannot run a VM at all
};

std::span<const CapabilityInfo> known_capabilities();

// Throws SystemError "KVM_CAP_X missing (needed for ...)" for the first required capability the
// system lacks.
void require_capabilities(const KvmSystem& system);

// Human-readable value of a capability as check_extension reports it (e.g. a bit set for
// KVM_CAP_X86_DISABLE_EXITS, a count for KVM_CAP_MAX_VCPUS).
std::string describe_capability_value(unsigned id, int value);

} // namespace vmmlab::kvm
