#include "devices/legacy/debug_ports.hpp"

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

namespace vmmlab::devices {

ExitAction ExitPort::read(std::uint64_t, std::span<std::byte> data) {
    std::ranges::fill(data, std::byte{0});
    return ExitAction::Resume;
}

ExitAction ExitPort::write(std::uint64_t, std::span<const std::byte> data) {
    std::uint32_t status = 0;
    std::memcpy(&status, data.data(), std::min(data.size(), sizeof status));
    control_.request_stop(static_cast<int>(status),
                          fmt::format("the guest wrote status {} to the exit port", status));
    return ExitAction::Stop;
}

ExitAction BootMarker::read(std::uint64_t, std::span<std::byte> data) {
    std::ranges::fill(data, std::byte{0});
    return ExitAction::Resume;
}

ExitAction BootMarker::write(std::uint64_t, std::span<const std::byte> data) {
    const auto now = std::chrono::steady_clock::now();
    std::lock_guard lock(mutex_);
    marks_.push_back({std::to_integer<std::uint8_t>(data[0]), now});
    return ExitAction::Resume;
}

std::vector<BootMarker::Mark> BootMarker::marks() const {
    std::lock_guard lock(mutex_);
    return marks_;
}

ExitAction BenchSink::read(std::uint64_t, std::span<std::byte> data) {
    accesses_.fetch_add(1, std::memory_order_relaxed);
    std::ranges::fill(data, std::byte{0});
    return ExitAction::Resume;
}

ExitAction BenchSink::write(std::uint64_t, std::span<const std::byte>) {
    accesses_.fetch_add(1, std::memory_order_relaxed);
    return ExitAction::Resume;
}

} // namespace vmmlab::devices
