// The VM's GSI routing table (KVM_SET_GSI_ROUTING), owned in one place. KVM replaces the whole table on
// every call, so whoever adds an MSI route must also resend the routes KVM set up by itself when the
// irqchip was created: GSI 0-15 to the IO-APIC pin of that number and to the PIC (master for 0-7, slave
// for 8-15, pin GSI % 8), GSI 16-23 to the IO-APIC only (Linux's kvm_setup_default_irq_routing). This
// router keeps exactly those, so the PIC/IO-APIC lines (serial, i8042, virtio INTx) behave as before,
// and hands out GSIs from 24 up for MSI routes (one per MSI-X vector bound through an irqfd).
//
// Every change commits the whole table at once. Thread-safe (a mutex): routes change rarely, when a
// guest programs an MSI-X table entry, never per interrupt.
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <span>
#include <vector>

#include "kvm/kvm_uapi.hpp"

namespace vmmlab::kvm {

class VmFd;

// What the router needs from KVM: one call that replaces the routing table (a VmFd, or a test's recorder).
class GsiRoutingTarget {
public:
    virtual ~GsiRoutingTarget() = default;
    virtual void set_gsi_routing(std::span<const kvm_irq_routing_entry> entries) = 0;
};

// KVM_SET_GSI_ROUTING on a VM.
class VmGsiRouting final : public GsiRoutingTarget {
public:
    explicit VmGsiRouting(VmFd& vm) : vm_(vm) {}
    void set_gsi_routing(std::span<const kvm_irq_routing_entry> entries) override;

private:
    VmFd& vm_;
};

class GsiRouter {
public:
    static constexpr std::uint32_t kFirstMsiGsi = 24; // after the IO-APIC's 24 pins
    static constexpr std::uint32_t kDefaultGsiLimit = 1024;

    // `gsi_limit`: how many GSIs KVM routes (KVM_CAP_IRQ_ROUTING's value; KVM_MAX_IRQ_ROUTES).
    explicit GsiRouter(GsiRoutingTarget& target, std::uint32_t gsi_limit = kDefaultGsiLimit);

    // KVM's own routes for the in-kernel PIC and IO-APIC, as a fresh VM has them.
    static std::vector<kvm_irq_routing_entry> default_routes();

    // A new GSI routed to the MSI (address, data); the table is committed before this returns. Throws
    // SystemError (ENOSPC) when every GSI is taken, and whatever the target throws.
    std::uint32_t add_msi_route(std::uint64_t address, std::uint32_t data);
    // Re-routes an MSI GSI; commits only when the message differs. Returns whether it committed.
    bool update_msi_route(std::uint32_t gsi, std::uint64_t address, std::uint32_t data);
    // Drops an MSI GSI's route (and commits); the GSI can be handed out again.
    void remove_msi_route(std::uint32_t gsi);

    // The table as last committed (defaults first, then MSI routes by GSI), and how many commits so far.
    std::vector<kvm_irq_routing_entry> table() const;
    std::uint64_t commits() const;

private:
    struct MsiRoute {
        std::uint64_t address = 0;
        std::uint32_t data = 0;
    };
    std::vector<kvm_irq_routing_entry> table_locked() const;
    void commit_locked();

    GsiRoutingTarget& target_;
    const std::uint32_t gsi_limit_;
    mutable std::mutex mutex_;
    std::vector<std::optional<MsiRoute>> msi_; // index gsi - kFirstMsiGsi
    std::uint64_t commits_ = 0;
};

} // namespace vmmlab::kvm
