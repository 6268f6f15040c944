#include "vm/msi_sinks.hpp"

#include <cerrno>

#include <spdlog/spdlog.h>
#include <sys/eventfd.h>

#include "base/error.hpp"
#include "devices/virtio/io_thread.hpp"

namespace vmmlab {

IrqfdMsiSink::IrqfdMsiSink(kvm::GsiRouter& router, IrqfdBinder& binder, std::uint16_t vectors)
    : router_(router), binder_(binder) {
    vectors_.reserve(vectors);
    try {
        for (std::uint16_t i = 0; i < vectors; ++i) {
            Vector vector;
            vector.event_fd = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
            if (!vector.event_fd) throw SystemError("eventfd for an MSI-X vector", errno);
            vector.gsi = router_.add_msi_route(0, 0);
            try {
                binder_.assign(vector.event_fd.get(), vector.gsi);
            } catch (...) {
                router_.remove_msi_route(vector.gsi);
                throw;
            }
            vectors_.push_back(std::move(vector));
        }
    } catch (...) {
        for (auto& vector : vectors_) {
            binder_.deassign(vector.event_fd.get(), vector.gsi);
            router_.remove_msi_route(vector.gsi);
        }
        throw;
    }
}

IrqfdMsiSink::~IrqfdMsiSink() {
    for (auto& vector : vectors_) {
        try {
            binder_.deassign(vector.event_fd.get(), vector.gsi);
            router_.remove_msi_route(vector.gsi);
        } catch (const std::exception& error) {
            spdlog::warn("irqfd of GSI {}: {}", vector.gsi, error.what());
        }
    }
}

void IrqfdMsiSink::route(Vector& vector, const virtio::MsiMessage& message) {
    if (vector.routed.address == message.address && vector.routed.data == message.data) return;
    router_.update_msi_route(vector.gsi, message.address, message.data);
    vector.routed = message;
}

void IrqfdMsiSink::deliver(std::uint16_t vector, const virtio::MsiMessage& message) {
    if (vector >= vectors_.size()) return;
    auto& entry = vectors_[vector];
    route(entry, message);
    virtio::signal_event_fd(entry.event_fd.get());
}

void IrqfdMsiSink::message_changed(std::uint16_t vector, const virtio::MsiMessage& message) {
    if (vector >= vectors_.size()) return;
    route(vectors_[vector], message);
}

int IrqfdMsiSink::vector_event_fd(std::uint16_t vector) const {
    return vector < vectors_.size() ? vectors_[vector].event_fd.get() : -1;
}

} // namespace vmmlab
