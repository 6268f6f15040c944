// The two ways a virtio-pci function's MSI-X messages reach the guest (--io-irq):
//   KvmMsiSink    userspace: one KVM_SIGNAL_MSI ioctl per interrupt, no routing state at all;
//   IrqfdMsiSink  irqfd: each MSI-X vector has a GSI routed to its message (GsiRouter) and an eventfd
//                 bound to that GSI with KVM_IRQFD; an interrupt is a write to the eventfd, and the
//                 eventfd can be handed to the kernel (vhost's call fd) to inject without the monitor.
#pragma once

#include <cstdint>
#include <vector>

#include "base/unique_fd.hpp"
#include "devices/virtio/pci_transport.hpp"
#include "kvm/gsi_router.hpp"
#include "kvm/kvm.hpp"

namespace vmmlab {

class KvmMsiSink final : public virtio::MsiSink {
public:
    explicit KvmMsiSink(kvm::VmFd& vm) : vm_(vm) {}
    void deliver(std::uint16_t, const virtio::MsiMessage& message) override {
        vm_.signal_msi(message.address, message.data);
    }

private:
    kvm::VmFd& vm_;
};

// What IrqfdMsiSink needs of KVM besides the router: binding an eventfd to a GSI.
class IrqfdBinder {
public:
    virtual ~IrqfdBinder() = default;
    virtual void assign(int event_fd, std::uint32_t gsi) = 0;
    virtual void deassign(int event_fd, std::uint32_t gsi) = 0;
};

class VmIrqfdBinder final : public IrqfdBinder {
public:
    explicit VmIrqfdBinder(kvm::VmFd& vm) : vm_(vm) {}
    void assign(int event_fd, std::uint32_t gsi) override { vm_.assign_irqfd(event_fd, gsi); }
    void deassign(int event_fd, std::uint32_t gsi) override { vm_.deassign_irqfd(event_fd, gsi); }

private:
    kvm::VmFd& vm_;
};

class IrqfdMsiSink final : public virtio::MsiSink {
public:
    // One GSI route (at first to address 0, data 0: the guest has not programmed the vector) and one
    // irqfd per vector. Throws SystemError when KVM refuses.
    IrqfdMsiSink(kvm::GsiRouter& router, IrqfdBinder& binder, std::uint16_t vectors);
    ~IrqfdMsiSink() override; // unbinds the irqfds and drops the routes
    IrqfdMsiSink(const IrqfdMsiSink&) = delete;
    IrqfdMsiSink& operator=(const IrqfdMsiSink&) = delete;

    // Re-routes the vector if its message differs from the route (rare), then writes its eventfd.
    void deliver(std::uint16_t vector, const virtio::MsiMessage& message) override;
    void message_changed(std::uint16_t vector, const virtio::MsiMessage& message) override;
    int vector_event_fd(std::uint16_t vector) const override;
    std::uint32_t vector_gsi(std::uint16_t vector) const { return vectors_.at(vector).gsi; }

private:
    struct Vector {
        UniqueFd event_fd;
        std::uint32_t gsi = 0;
        virtio::MsiMessage routed{0, 0};
    };
    void route(Vector& vector, const virtio::MsiMessage& message);

    kvm::GsiRouter& router_;
    IrqfdBinder& binder_;
    std::vector<Vector> vectors_; // fixed size; the transport's interrupt mutex serialises access
};

} // namespace vmmlab
