// The small devices through which the tiny guest talks to the monitor (ports in guest/abi/boot_abi.hpp):
// an exit port that ends the VM with a status, a boot-marker port the monitor timestamps, and a sink that
// answers benchmark accesses (reads return zeros, writes are dropped) so exits can be timed.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <vector>

#include "bus/device.hpp"
#include "cpu/run_control.hpp"

namespace vmmlab::devices {

class ExitPort final : public Device {
public:
    explicit ExitPort(RunControl& control) : control_(control) {}
    std::string_view name() const override { return "exit-port"; }
    ExitAction read(std::uint64_t offset, std::span<std::byte> data) override;
    // Any width: the value written, zero-extended, becomes the VM's exit status.
    ExitAction write(std::uint64_t offset, std::span<const std::byte> data) override;

private:
    RunControl& control_;
};

class BootMarker final : public Device {
public:
    struct Mark {
        std::uint8_t value;
        std::chrono::steady_clock::time_point when;
    };
    std::string_view name() const override { return "boot-marker"; }
    ExitAction read(std::uint64_t offset, std::span<std::byte> data) override;
    ExitAction write(std::uint64_t offset, std::span<const std::byte> data) override;
    std::vector<Mark> marks() const;

private:
    mutable std::mutex mutex_;
    std::vector<Mark> marks_;
};

class BenchSink final : public Device {
public:
    explicit BenchSink(std::string_view name) : name_(name) {}
    std::string_view name() const override { return name_; }
    ExitAction read(std::uint64_t offset, std::span<std::byte> data) override;
    ExitAction write(std::uint64_t offset, std::span<const std::byte> data) override;
    std::uint64_t accesses() const { return accesses_.load(std::memory_order_relaxed); }

private:
    std::string_view name_;
    std::atomic<std::uint64_t> accesses_{0};
};

} // namespace vmmlab::devices
