#include "devices/legacy/port_sink.hpp"

#include <algorithm>

namespace vmmlab::devices {

ExitAction PortSink::read(std::uint64_t, std::span<std::byte> data) {
    accesses_.fetch_add(1, std::memory_order_relaxed);
    std::ranges::fill(data, std::byte{read_value_});
    return ExitAction::Resume;
}

ExitAction PortSink::write(std::uint64_t, std::span<const std::byte>) {
    accesses_.fetch_add(1, std::memory_order_relaxed);
    return ExitAction::Resume;
}

} // namespace vmmlab::devices
