// A Linux tap device as a VirtioNet backend: /dev/net/tun opened non-blocking and attached (TUNSETIFF,
// IFF_TAP | IFF_NO_PI | IFF_VNET_HDR) to a named interface, which is created when it does not exist, or
// to a new one the kernel names (vmmlab0, vmmlab1, ...). Every frame carries a 12-byte vnet header
// (TUNSETVNETHDRSZ 12: struct virtio_net_hdr_v1, so the guest's header passes through unchanged; the
// kernel leaves num_buffers for the device to fill). The offloads the kernel may hand us
// (TUNSETOFFLOAD) follow what the driver negotiated: none until then.
//
// Permissions: creating a tap, or attaching to one owned by another user, needs CAP_NET_ADMIN; a
// persistent tap made for the user (`ip tuntap add NAME mode tap user USER`) does not. An interface
// created here disappears when the Tap closes; a named one that existed stays. The link is brought up
// (IFF_UP) when the Tap created it; addresses, bridges and routes are for the user to configure.
#pragma once

#include <memory>
#include <string>

#include "devices/virtio/net_backend.hpp"

namespace vmmlab::virtio {

struct TapOptions {
    std::string name; // the interface; empty: create one named vmmlab%d by the kernel
};

class Tap final : public NetBackend {
public:
    // Errors are one line naming the tap and the cause, e.g. "net tap tap0: TUNSETIFF: Operation not
    // permitted (needs CAP_NET_ADMIN)" or "net tap (new): /dev/net/tun: No such file or directory (is
    // the tun module loaded?)".
    static std::expected<std::unique_ptr<Tap>, std::string> open(const TapOptions& options);

    std::string_view name() const override { return description_; }
    int fd() const override { return fd_.get(); }
    std::expected<std::size_t, int> read_frame(std::span<std::byte> buffer) override;
    std::expected<void, int> write_frame(std::span<const iovec> pieces) override;
    std::expected<void, std::string> set_guest_offloads(std::uint64_t features) override;

    // The interface's name as the kernel has it (the created one's, e.g. "vmmlab0").
    const std::string& interface_name() const { return interface_; }
    // Whether this Tap created the interface (it goes away with the Tap).
    bool created() const { return created_; }
    // The TUN_F_* flags last given to TUNSETOFFLOAD.
    unsigned offload_flags() const { return offload_flags_; }

private:
    Tap(UniqueFd fd, std::string interface, bool created);

    UniqueFd fd_;
    std::string interface_;
    std::string description_;
    bool created_;
    unsigned offload_flags_ = 0;
};

// The TUN_F_* flags that let a tap hand the guest what these negotiated features accept: TUN_F_CSUM for
// GUEST_CSUM; TSO4/TSO6 for GUEST_TSO4/6 (only with CSUM); TSO_ECN for GUEST_ECN (only with a TSO).
unsigned tap_offload_flags(std::uint64_t features);

} // namespace vmmlab::virtio
