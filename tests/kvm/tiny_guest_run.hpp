// Runs the embedded tiny guest in-process for a kvm test: its console collected, the run bounded from the
// host side (TESTING.md has nested guests that wedged; a hang must fail, not stall), and what the guest
// printed and why the VM stopped left on stdout for a red run. Shared by the tiny-guest kvm tests.
#pragma once

#include <chrono>
#include <cstdio>
#include <string>

#include "config/vm_config.hpp"
#include "guest/embedded_image.hpp"
#include "vm/vm.hpp"

namespace vmmlab::testing {

struct GuestRun {
    RunReport report;
    std::string console;
};

inline GuestRun run_tiny_guest(const VmConfig& config, std::chrono::seconds timeout, int input_fd = -1) {
    GuestRun run;
    ConsoleOptions console{[&run](std::span<const std::byte> bytes) {
                               run.console.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
                           },
                           input_fd};
    Vm vm(config, embedded_guest_image(), std::move(console));
    run.report = vm.run(timeout);
    std::printf("--- guest console (%s)\n%s--- %s, status %d\n", describe(config).c_str(),
                run.console.c_str(), run.report.stop_reason.c_str(), run.report.exit_status);
    std::fflush(stdout);
    return run;
}

} // namespace vmmlab::testing
