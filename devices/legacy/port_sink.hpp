// A port range that exists but does nothing: reads return a fixed byte in every position, writes are
// dropped, and both are counted. For ports a guest touches without expecting an answer, so they are not
// reported as unclaimed: the POST/delay port 0x80 Linux writes to slow down legacy I/O (io_delay), or an
// alternative delay port. Thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <string_view>

#include "bus/device.hpp"

namespace vmmlab::devices {

class PortSink final : public Device {
public:
    // `name` must outlive the device (a string literal).
    explicit PortSink(std::string_view name, std::uint8_t read_value = 0xff)
        : name_(name), read_value_(read_value) {}
    std::string_view name() const override { return name_; }
    ExitAction read(std::uint64_t offset, std::span<std::byte> data) override;
    ExitAction write(std::uint64_t offset, std::span<const std::byte> data) override;
    std::uint64_t accesses() const { return accesses_.load(std::memory_order_relaxed); }

private:
    std::string_view name_;
    std::uint8_t read_value_;
    std::atomic<std::uint64_t> accesses_{0};
};

} // namespace vmmlab::devices
