#include "kvm/gsi_router.hpp"

#include <cerrno>
#include <string>

#include "base/error.hpp"
#include "kvm/kvm.hpp"

namespace vmmlab::kvm {

void VmGsiRouting::set_gsi_routing(std::span<const kvm_irq_routing_entry> entries) {
    vm_.set_gsi_routing(entries);
}

GsiRouter::GsiRouter(GsiRoutingTarget& target, std::uint32_t gsi_limit)
    : target_(target), gsi_limit_(gsi_limit) {
}

std::vector<kvm_irq_routing_entry> GsiRouter::default_routes() {
    std::vector<kvm_irq_routing_entry> routes;
    auto irqchip = [&](std::uint32_t gsi, std::uint32_t chip, std::uint32_t pin) {
        kvm_irq_routing_entry entry{};
        entry.gsi = gsi;
        entry.type = KVM_IRQ_ROUTING_IRQCHIP;
        entry.u.irqchip.irqchip = chip;
        entry.u.irqchip.pin = pin;
        routes.push_back(entry);
    };
    for (std::uint32_t gsi = 0; gsi < kFirstMsiGsi; ++gsi) {
        irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi);
        if (gsi < 16) irqchip(gsi, gsi < 8 ? KVM_IRQCHIP_PIC_MASTER : KVM_IRQCHIP_PIC_SLAVE, gsi % 8);
    }
    return routes;
}

std::uint32_t GsiRouter::add_msi_route(std::uint64_t address, std::uint32_t data) {
    std::lock_guard lock(mutex_);
    std::size_t index = 0;
    while (index < msi_.size() && msi_[index])
        ++index;
    if (kFirstMsiGsi + index >= gsi_limit_)
        throw SystemError("MSI route: all " + std::to_string(gsi_limit_) + " GSIs in use", ENOSPC);
    if (index == msi_.size()) msi_.emplace_back();
    msi_[index] = MsiRoute{address, data};
    try {
        commit_locked();
    } catch (...) {
        msi_[index].reset();
        throw;
    }
    return static_cast<std::uint32_t>(kFirstMsiGsi + index);
}

bool GsiRouter::update_msi_route(std::uint32_t gsi, std::uint64_t address, std::uint32_t data) {
    std::lock_guard lock(mutex_);
    if (gsi < kFirstMsiGsi || gsi - kFirstMsiGsi >= msi_.size() || !msi_[gsi - kFirstMsiGsi]) return false;
    auto& route = *msi_[gsi - kFirstMsiGsi];
    if (route.address == address && route.data == data) return false;
    const MsiRoute previous = route;
    route = {address, data};
    try {
        commit_locked();
    } catch (...) {
        route = previous;
        throw;
    }
    return true;
}

void GsiRouter::remove_msi_route(std::uint32_t gsi) {
    std::lock_guard lock(mutex_);
    if (gsi < kFirstMsiGsi || gsi - kFirstMsiGsi >= msi_.size() || !msi_[gsi - kFirstMsiGsi]) return;
    msi_[gsi - kFirstMsiGsi].reset();
    commit_locked();
}

std::vector<kvm_irq_routing_entry> GsiRouter::table() const {
    std::lock_guard lock(mutex_);
    return table_locked();
}

std::uint64_t GsiRouter::commits() const {
    std::lock_guard lock(mutex_);
    return commits_;
}

std::vector<kvm_irq_routing_entry> GsiRouter::table_locked() const {
    auto routes = default_routes();
    for (std::size_t i = 0; i < msi_.size(); ++i) {
        if (!msi_[i]) continue;
        kvm_irq_routing_entry entry{};
        entry.gsi = static_cast<std::uint32_t>(kFirstMsiGsi + i);
        entry.type = KVM_IRQ_ROUTING_MSI;
        entry.u.msi.address_lo = static_cast<std::uint32_t>(msi_[i]->address);
        entry.u.msi.address_hi = static_cast<std::uint32_t>(msi_[i]->address >> 32);
        entry.u.msi.data = msi_[i]->data;
        routes.push_back(entry);
    }
    return routes;
}

void GsiRouter::commit_locked() {
    const auto routes = table_locked();
    target_.set_gsi_routing(routes);
    ++commits_;
}

} // namespace vmmlab::kvm
