#include "devices/virtio/net.hpp"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>

#include <fmt/format.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "base/error.hpp"

namespace vmmlab::virtio {

namespace {
constexpr std::size_t kEthernetHeaderBytes = 14;
constexpr std::size_t kMaxWritePieces = IOV_MAX;
constexpr std::size_t kNumBuffersOffset = offsetof(net::Header, num_buffers);

bool has(std::uint64_t features, unsigned bit) {
    return ((features >> bit) & 1) != 0;
}

// The host address of byte `offset` of `spans` (which hold more than `offset` bytes).
std::byte* byte_at(std::span<const std::span<std::byte>> spans, std::size_t offset) {
    for (const auto& span : spans) {
        if (offset < span.size()) return span.data() + offset;
        offset -= span.size();
    }
    return nullptr;
}

// Whether a transmitted header asks only for what the driver negotiated (CSUM, HOST_TSO4/6, HOST_ECN).
bool transmit_header_allowed(const net::Header& header, std::uint64_t features) {
    if ((header.flags & net::kHeaderNeedsCsum) && !has(features, net::kFeatureCsum)) return false;
    const std::uint8_t gso = header.gso_type & static_cast<std::uint8_t>(~net::kGsoEcn);
    if ((header.gso_type & net::kGsoEcn) && (gso == net::kGsoNone || !has(features, net::kFeatureHostEcn)))
        return false;
    switch (gso) {
    case net::kGsoNone:
        return true;
    case net::kGsoTcp4:
        return has(features, net::kFeatureHostTso4);
    case net::kGsoTcp6:
        return has(features, net::kFeatureHostTso6);
    default:
        return false; // UDP, USO: never offered
    }
}

// Whether a received frame's header is one the driver accepts (GUEST_CSUM, GUEST_TSO4/6, GUEST_ECN).
// DATA_VALID without GUEST_CSUM is cleared (a tap sets it for frames its stack already checked).
bool receive_header_allowed(net::Header& header, std::uint64_t features) {
    if (!has(features, net::kFeatureGuestCsum)) {
        if (header.flags & net::kHeaderNeedsCsum) return false;
        header.flags = 0;
    }
    const std::uint8_t gso = header.gso_type & static_cast<std::uint8_t>(~net::kGsoEcn);
    if ((header.gso_type & net::kGsoEcn) && (gso == net::kGsoNone || !has(features, net::kFeatureGuestEcn)))
        return false;
    switch (gso) {
    case net::kGsoNone:
        return true;
    case net::kGsoTcp4:
        return has(features, net::kFeatureGuestTso4);
    case net::kGsoTcp6:
        return has(features, net::kFeatureGuestTso6);
    default:
        return false;
    }
}

void drain(int eventfd) {
    std::uint64_t count;
    [[maybe_unused]] auto got = ::read(eventfd, &count, sizeof count);
}
} // namespace

VirtioNet::VirtioNet(std::unique_ptr<NetBackend> backend, const NetOptions& options,
                     std::unique_ptr<VhostNet> vhost)
    : options_(options), name_(fmt::format("virtio-net {}", backend->name())), backend_(std::move(backend)),
      rx_frame_(net::kMaxFrameBytes), vhost_mode_(vhost != nullptr), vhost_(std::move(vhost)) {
    if (options_.queue_size == 0 || options_.queue_size > kMaxQueueSize ||
        (options_.queue_size & (options_.queue_size - 1)) != 0)
        throw SystemError(name_ + ": queue size must be a power of two <= 32768", EINVAL);
    std::memcpy(config_.mac, options_.mac.data(), options_.mac.size());
    config_.status = net::kStatusLinkUp;
    config_.max_virtqueue_pairs = 1;
    using namespace net;
    for (unsigned bit :
         {kFeatureVersion1, kFeatureRingIndirectDesc, kFeatureRingEventIdx, kFeatureMac, kFeatureStatus,
          kFeatureMergeableRxBuffers, kFeatureCsum, kFeatureHostTso4, kFeatureHostTso6, kFeatureHostEcn,
          kFeatureGuestCsum, kFeatureGuestTso4, kFeatureGuestTso6, kFeatureGuestEcn})
        features_ |= 1ULL << bit;
    if (vhost_mode_) {
        // Ring and buffer features are the kernel's to handle: offer only those it has.
        for (unsigned bit :
             {kFeatureVersion1, kFeatureRingIndirectDesc, kFeatureRingEventIdx, kFeatureMergeableRxBuffers})
            if (!has(vhost_->features(), bit)) features_ &= ~(1ULL << bit);
        if (!has(features_, kFeatureVersion1))
            throw SystemError(name_ + ": the kernel's vhost-net lacks VIRTIO_F_VERSION_1", ENOTSUP);
    }
    rx_held_.reserve(options_.queue_size);
    tx_pieces_.reserve(kMaxWritePieces + 1);

    auto make_eventfd = [this] {
        return UniqueFd(check_syscall(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK),
                                      fmt::format("eventfd for {}", name_).c_str()));
    };
    stop_ = make_eventfd();
    rx_kick_ = make_eventfd();
    tx_more_ = make_eventfd();
    if (vhost_mode_)
        for (unsigned queue = 0; queue < 2; ++queue) {
            own_kicks_[queue] = make_eventfd();
            own_calls_[queue] = make_eventfd();
        }
    io_thread_ = std::thread([this] { io_loop(); });
}

VirtioNet::~VirtioNet() {
    wake(stop_.get());
    io_thread_.join();
}

void VirtioNet::wake(int eventfd) {
    const std::uint64_t one = 1;
    [[maybe_unused]] auto written = ::write(eventfd, &one, sizeof one);
}

void VirtioNet::read_config(std::uint64_t offset, std::span<std::byte> data) const {
    read_config_bytes(std::as_bytes(std::span(&config_, 1)).first(net::kConfigBytes), offset, data);
}

NetStats VirtioNet::stats() const {
    std::scoped_lock lock(tx_mutex_, rx_mutex_);
    NetStats total = rx_stats_;
    total.tx_packets = tx_stats_.tx_packets;
    total.tx_bytes = tx_stats_.tx_bytes;
    total.tx_dropped = tx_stats_.tx_dropped;
    total.tx_errors = tx_stats_.tx_errors;
    total.ring_errors += tx_stats_.ring_errors;
    return total;
}

std::expected<void, std::string> VirtioNet::activate(Activation activation) {
    std::lock_guard tx_lock(tx_mutex_);
    std::lock_guard rx_lock(rx_mutex_);
    if (activation.queues.size() < 2 || !activation.queues[net::kReceiveQueue].active() ||
        !activation.queues[net::kTransmitQueue].active())
        return std::unexpected(name_ + ": the driver did not enable the receive and transmit queues");
    if (auto offloads = backend_->set_guest_offloads(activation.features); !offloads)
        return std::unexpected(offloads.error());
    if (vhost_mode_) return activate_vhost_locked(activation);
    rx_queue_ = std::move(activation.queues[net::kReceiveQueue]);
    tx_queue_ = std::move(activation.queues[net::kTransmitQueue]);
    rx_broken_ = tx_broken_ = false;
    rx_waiting_ = false;
    mergeable_ = has(activation.features, net::kFeatureMergeableRxBuffers);
    rx_features_ = tx_features_ = activation.features;
    rx_signals_ = tx_signals_ = &activation.signals;
    rx_queue_.disable_notifications(); // kicks are wanted only while waiting for buffers
    wake(rx_kick_.get());
    return {};
}

std::expected<void, std::string> VirtioNet::activate_vhost_locked(Activation& activation) {
    int kicks[2], calls[2];
    for (unsigned queue = 0; queue < 2; ++queue) {
        auto given = [queue](const std::vector<int>& fds) { return queue < fds.size() ? fds[queue] : -1; };
        kicks[queue] = given(activation.kick_fds) >= 0 ? given(activation.kick_fds) : own_kicks_[queue].get();
        calls[queue] = given(activation.call_fds) >= 0 ? given(activation.call_fds) : own_calls_[queue].get();
        vhost_kicks_[queue] = kicks[queue];
    }
    if (!vhost_) { // after a reset: a fresh descriptor
        auto opened = VhostNet::open();
        if (!opened) return std::unexpected(opened.error());
        vhost_ = std::move(*opened);
    }
    rx_queue_ = std::move(activation.queues[net::kReceiveQueue]);
    tx_queue_ = std::move(activation.queues[net::kTransmitQueue]);
    const Virtqueue queues[2] = {rx_queue_, tx_queue_};
    if (auto started =
            vhost_->start(activation.memory, activation.features, queues, kicks, calls, backend_->fd());
        !started) {
        vhost_.reset();
        rx_queue_ = tx_queue_ = Virtqueue{};
        return std::unexpected(name_ + ": " + started.error());
    }
    rx_features_ = tx_features_ = activation.features;
    rx_signals_ = tx_signals_ = &activation.signals;
    // Buffers the driver added before DRIVER_OK raised no kick: let the kernel look at both rings now.
    for (int kick : kicks)
        wake(kick);
    return {};
}

void VirtioNet::reset() {
    std::lock_guard tx_lock(tx_mutex_);
    std::lock_guard rx_lock(rx_mutex_);
    if (vhost_mode_) {
        vhost_.reset(); // closing the descriptor stops the kernel's worker and waits for it
        for (auto& fd : own_calls_)
            drain(fd.get());
        for (auto& fd : own_kicks_)
            drain(fd.get());
        vhost_kicks_[0] = vhost_kicks_[1] = -1;
    }
    if (rx_length_ != 0) ++rx_stats_.rx_dropped; // the frame in hand goes, as a NIC's FIFO does at reset
    rx_length_ = rx_placed_ = 0;
    rx_held_.clear();
    rx_held_descriptors_ = 0;
    rx_waiting_ = false;
    rx_queue_ = Virtqueue{};
    tx_queue_ = Virtqueue{};
    rx_signals_ = tx_signals_ = nullptr;
    rx_features_ = tx_features_ = 0;
    if (auto offloads = backend_->set_guest_offloads(0); !offloads && log_limit_.allow())
        spdlog::warn("{}", offloads.error());
}

void VirtioNet::notify(std::uint16_t queue) {
    if (vhost_mode_) { // a kick that exited to us: pass it on to the kernel
        std::lock_guard lock(tx_mutex_);
        if (queue < 2 && vhost_kicks_[queue] >= 0) wake(vhost_kicks_[queue]);
        return;
    }
    if (queue == net::kReceiveQueue) {
        wake(rx_kick_.get()); // the I/O thread places waiting frames
        return;
    }
    if (queue != net::kTransmitQueue) return;
    bool more;
    {
        std::lock_guard lock(tx_mutex_);
        more = process_tx_locked();
    }
    if (more) wake(tx_more_.get());
}

void VirtioNet::ring_error_locked(std::uint16_t queue, const QueueError& error, NetStats& side_stats,
                                  DeviceSignals& signals) {
    ++side_stats.ring_errors;
    (queue == net::kReceiveQueue ? rx_broken_ : tx_broken_) = true;
    if (log_limit_.allow())
        spdlog::warn("{}: queue {}: {} (device needs reset)", name_, queue, error.describe());
    signals.needs_reset();
}

// --- transmit -----------------------------------------------------------------------------------------

bool VirtioNet::process_tx_locked() {
    if (vhost_mode_ || tx_signals_ == nullptr || !tx_queue_.active() || tx_broken_) return false;
    bool more = false;
    unsigned done = 0;
    tx_queue_.disable_notifications();
    while (true) {
        if (done == net::kTxBurst) {
            more = true; // notifications stay off: the I/O thread carries on
            break;
        }
        auto popped = tx_queue_.pop(tx_chain_);
        if (!popped) {
            ring_error_locked(net::kTransmitQueue, popped.error(), tx_stats_, *tx_signals_);
            break;
        }
        if (*popped) {
            transmit_locked(tx_chain_);
            if (auto pushed = tx_queue_.push_used(tx_chain_.head, 0); !pushed && log_limit_.allow())
                spdlog::warn("{}: queue 1: {}", name_, pushed.error().describe());
            ++done;
            continue;
        }
        auto again = tx_queue_.enable_notifications();
        if (!again) {
            ring_error_locked(net::kTransmitQueue, again.error(), tx_stats_, *tx_signals_);
            break;
        }
        if (!*again) break;
        tx_queue_.disable_notifications();
    }
    if (tx_queue_.needs_notification()) tx_signals_->used_buffers(net::kTransmitQueue);
    return more;
}

void VirtioNet::transmit_locked(const DescriptorChain& chain) {
    if (chain.readable_bytes < net::kHeaderBytes || chain.readable_bytes > net::kMaxFrameBytes) {
        ++tx_stats_.tx_errors;
        if (log_limit_.allow())
            spdlog::warn(
                "{}: transmit chain at head {} carries {} bytes (a frame is {} to {} with its header)", name_,
                chain.head, chain.readable_bytes, net::kHeaderBytes, net::kMaxFrameBytes);
        return;
    }
    // The header is copied once: what is checked is what the backend gets.
    gather(chain.readable, 0, std::as_writable_bytes(std::span(&tx_header_, 1)));
    if (!transmit_header_allowed(tx_header_, tx_features_)) {
        ++tx_stats_.tx_errors;
        if (log_limit_.allow())
            spdlog::warn("{}: transmit header at head {} asks for offloads not negotiated (flags {:#x}, "
                         "gso_type {:#x})",
                         name_, chain.head, tx_header_.flags, tx_header_.gso_type);
        return;
    }
    tx_header_.num_buffers = 0;
    const std::size_t data_bytes = chain.readable_bytes - net::kHeaderBytes;
    tx_pieces_.clear();
    tx_pieces_.push_back({&tx_header_, net::kHeaderBytes});
    std::size_t skip = net::kHeaderBytes;
    for (const auto& span : chain.readable) {
        if (skip >= span.size()) {
            skip -= span.size();
            continue;
        }
        if (tx_pieces_.size() == kMaxWritePieces) { // too many for writev: copy the data into one piece
            if (tx_bounce_.size() < net::kMaxFrameBytes) tx_bounce_.resize(net::kMaxFrameBytes);
            gather(chain.readable, net::kHeaderBytes, std::span(tx_bounce_).first(data_bytes));
            tx_pieces_.resize(1);
            tx_pieces_.push_back({tx_bounce_.data(), data_bytes});
            break;
        }
        tx_pieces_.push_back({span.data() + skip, span.size() - skip});
        skip = 0;
    }
    auto written = backend_->write_frame(tx_pieces_);
    if (written) {
        ++tx_stats_.tx_packets;
        tx_stats_.tx_bytes += data_bytes;
        return;
    }
    const int error = written.error();
    if (error == EAGAIN || error == EWOULDBLOCK || error == ENOBUFS) {
        ++tx_stats_.tx_dropped;
    } else {
        ++tx_stats_.tx_errors;
        if (log_limit_.allow())
            spdlog::warn("{}: {} refused a frame of {} bytes: {}", name_, backend_->name(), data_bytes,
                         std::strerror(error));
    }
}

// --- receive ------------------------------------------------------------------------------------------

void VirtioNet::io_loop() {
    bool poll_backend = false;
    bool backend_failed = false;
    while (true) {
        pollfd fds[6] = {{stop_.get(), POLLIN, 0},
                         {rx_kick_.get(), POLLIN, 0},
                         {tx_more_.get(), POLLIN, 0},
                         {poll_backend && !backend_failed ? backend_->fd() : -1, POLLIN, 0},
                         {own_calls_[0].get(), POLLIN, 0},
                         {own_calls_[1].get(), POLLIN, 0}};
        if (::poll(fds, 6, -1) < 0) {
            if (errno == EINTR) continue;
            spdlog::error("{}: poll: {}", name_, std::strerror(errno));
            return;
        }
        if (fds[0].revents & POLLIN) return;
        for (std::uint16_t queue = 0; queue < 2; ++queue) {
            if (!(fds[4 + queue].revents & POLLIN)) continue;
            drain(own_calls_[queue].get()); // vhost-net used buffers and wants an interrupt
            std::lock_guard lock(rx_mutex_);
            if (rx_signals_ != nullptr) rx_signals_->used_buffers(queue);
        }
        const bool kicked = (fds[1].revents & POLLIN) != 0;
        if (kicked) drain(rx_kick_.get());
        if (fds[2].revents & POLLIN) {
            drain(tx_more_.get());
            bool more;
            {
                std::lock_guard lock(tx_mutex_);
                more = process_tx_locked();
            }
            if (more) wake(tx_more_.get());
        }
        const bool readable = (fds[3].revents & POLLIN) != 0;
        if (!readable && (fds[3].revents & (POLLERR | POLLHUP | POLLNVAL))) {
            backend_failed = true; // a vanished backend would make poll spin
            spdlog::error("{}: {} failed (poll events {:#x}); receiving stops", name_, backend_->name(),
                          fds[3].revents);
        }
        if (kicked || readable) {
            std::lock_guard lock(rx_mutex_);
            poll_backend = process_rx_locked();
        }
    }
}

void VirtioNet::receive_now() {
    std::lock_guard lock(rx_mutex_);
    process_rx_locked();
}

bool VirtioNet::process_rx_locked() {
    if (vhost_mode_ || rx_signals_ == nullptr || !rx_queue_.active() || rx_broken_) return false;
    bool poll_backend = true;
    for (unsigned round = 0; round < net::kRxBurst; ++round) {
        if (rx_length_ == 0) {
            auto got = backend_->read_frame(rx_frame_);
            if (!got) {
                if (got.error() != EAGAIN && got.error() != EWOULDBLOCK) {
                    ++rx_stats_.rx_errors;
                    if (log_limit_.allow())
                        spdlog::warn("{}: reading {}: {}", name_, backend_->name(),
                                     std::strerror(got.error()));
                }
                break;
            }
            if (*got < net::kHeaderBytes + kEthernetHeaderBytes) {
                ++rx_stats_.rx_errors; // a runt: no room for a header and an Ethernet header
                continue;
            }
            net::Header header;
            std::memcpy(&header, rx_frame_.data(), sizeof header);
            if (!receive_header_allowed(header, rx_features_)) {
                ++rx_stats_.rx_dropped;
                if (log_limit_.allow())
                    spdlog::warn("{}: dropped a received frame with offloads the driver did not accept "
                                 "(flags {:#x}, gso_type {:#x})",
                                 name_, header.flags, header.gso_type);
                continue;
            }
            header.num_buffers = 1;
            std::memcpy(rx_frame_.data(), &header, sizeof header);
            rx_length_ = *got;
            rx_placed_ = 0;
        }
        const Placed placed = place_frame_locked();
        if (placed == Placed::Broken) {
            poll_backend = false;
            break;
        }
        if (placed == Placed::NoBuffers) {
            // Ask for a kick, then look again: buffers added meanwhile would not kick.
            auto more = rx_queue_.enable_notifications();
            if (!more) {
                ring_error_locked(net::kReceiveQueue, more.error(), rx_stats_, *rx_signals_);
                poll_backend = false;
                break;
            }
            if (*more) continue;
            if (!rx_waiting_) ++rx_stats_.rx_waits;
            rx_waiting_ = true;
            poll_backend = false;
            break;
        }
        if (rx_waiting_) {
            rx_waiting_ = false;
            rx_queue_.disable_notifications();
        }
    }
    if (rx_queue_.needs_notification()) rx_signals_->used_buffers(net::kReceiveQueue);
    return poll_backend;
}

VirtioNet::Placed VirtioNet::place_frame_locked() {
    const auto frame = std::span<const std::byte>(rx_frame_).first(rx_length_);
    while (true) {
        auto popped = rx_queue_.pop(rx_chain_);
        if (!popped) {
            ring_error_locked(net::kReceiveQueue, popped.error(), rx_stats_, *rx_signals_);
            return Placed::Broken;
        }
        if (!*popped) return Placed::NoBuffers;
        const DescriptorChain& chain = rx_chain_;
        auto give_back = [&](std::uint32_t length) {
            if (auto pushed = rx_queue_.push_used(chain.head, length); !pushed && log_limit_.allow())
                spdlog::warn("{}: queue 0: {}", name_, pushed.error().describe());
        };
        // A receive chain must be all device-writable, and the first one must hold the header.
        if (chain.readable_bytes != 0 || (rx_held_.empty() && chain.writable_bytes < net::kHeaderBytes)) {
            ++rx_stats_.rx_errors;
            if (log_limit_.allow())
                spdlog::warn("{}: receive chain at head {} is unusable ({} readable, {} writable bytes)",
                             name_, chain.head, chain.readable_bytes, chain.writable_bytes);
            give_back(0);
            continue;
        }
        if (!mergeable_) {
            if (chain.writable_bytes < frame.size()) {
                ++rx_stats_.rx_dropped;
                if (log_limit_.allow())
                    spdlog::warn("{}: dropped a frame of {} bytes: the receive buffer at head {} has {}",
                                 name_, frame.size(), chain.head, chain.writable_bytes);
                give_back(0);
            } else {
                scatter(chain.writable, frame);
                give_back(static_cast<std::uint32_t>(frame.size()));
                ++rx_stats_.rx_packets;
                rx_stats_.rx_bytes += frame.size() - net::kHeaderBytes;
            }
            rx_length_ = 0;
            return Placed::Done;
        }
        // Mergeable: this chain takes what it can; the frame ends in a later one if need be.
        const std::size_t chunk = static_cast<std::size_t>(
            std::min<std::uint64_t>(chain.writable_bytes, frame.size() - rx_placed_));
        if (rx_held_.empty()) {
            rx_num_buffers_[0] = byte_at(chain.writable, kNumBuffersOffset);
            rx_num_buffers_[1] = byte_at(chain.writable, kNumBuffersOffset + 1);
        }
        scatter(chain.writable, frame.subspan(rx_placed_, chunk));
        rx_held_.push_back({chain.head, static_cast<std::uint32_t>(chunk)});
        rx_held_descriptors_ += chain.descriptor_count;
        rx_placed_ += chunk;
        if (rx_placed_ == frame.size()) {
            const auto count = static_cast<std::uint16_t>(rx_held_.size());
            std::byte count_bytes[2];
            std::memcpy(count_bytes, &count, 2);
            *rx_num_buffers_[0] = count_bytes[0];
            *rx_num_buffers_[1] = count_bytes[1];
            ++rx_stats_.rx_packets;
            rx_stats_.rx_bytes += frame.size() - net::kHeaderBytes;
            return_held_locked(false);
            return Placed::Done;
        }
        if (rx_held_.size() >= rx_queue_.size() || rx_held_descriptors_ >= rx_queue_.size()) {
            // Every descriptor of the ring is in hand and the frame still does not fit: it never will.
            ++rx_stats_.rx_dropped;
            if (log_limit_.allow())
                spdlog::warn("{}: dropped a frame of {} bytes: the whole receive ring holds only {}", name_,
                             frame.size(), rx_placed_);
            return_held_locked(true);
            return Placed::Done;
        }
    }
}

void VirtioNet::return_held_locked(bool drop) {
    for (const Held& held : rx_held_)
        if (auto pushed = rx_queue_.push_used(held.head, drop ? 0 : held.length);
            !pushed && log_limit_.allow())
            spdlog::warn("{}: queue 0: {}", name_, pushed.error().describe());
    rx_held_.clear();
    rx_held_descriptors_ = 0;
    rx_length_ = rx_placed_ = 0;
}

} // namespace vmmlab::virtio
