// Booting Debian's kernel in-process for the Linux device tests (linux_disk_test.cpp, linux_net_test.cpp):
// the images from the environment, one run with the console captured, and the guest script's
// "vmmlab-check: KEY VALUE" lines parsed. A missing environment variable fails the test, never skips it.
#pragma once

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <sstream>
#include <string>
#include <string_view>

#include "config/vm_config.hpp"
#include "vm/vm.hpp"

namespace vmmlab::test {

inline std::string required_env(const char* name) {
    const char* value = std::getenv(name);
    INFO(name << " is not set: run tools/test, which builds the images and exports it (see the comment at "
                 "the top of this test file)");
    REQUIRE(value != nullptr);
    REQUIRE(*value != '\0');
    return value;
}

// The "vmmlab-check: KEY VALUE" lines of a guest console (KEY up to the first space; VALUE may be empty).
inline std::multimap<std::string, std::string> parse_checks(const std::string& console) {
    std::multimap<std::string, std::string> checks;
    std::istringstream lines(console);
    for (std::string line; std::getline(lines, line);) {
        while (!line.empty() && line.back() == '\r')
            line.pop_back();
        constexpr std::string_view prefix = "vmmlab-check: ";
        const auto at = line.find(prefix); // kernel messages may share the console line
        if (at == std::string::npos) continue;
        line.erase(0, at + prefix.size());
        const auto space = line.find(' ');
        checks.emplace(line.substr(0, space), space == std::string::npos ? "" : line.substr(space + 1));
    }
    return checks;
}

struct LinuxRun {
    RunReport report;
    std::string console;
    std::multimap<std::string, std::string> checks;

    // The value of a check the guest script must have printed.
    std::string value(const std::string& key) const {
        auto found = checks.find(key);
        INFO("the guest printed no 'vmmlab-check: " << key << "' line");
        REQUIRE(found != checks.end());
        return found->second;
    }
};

// A Linux guest on Debian's kernel (VMMLAB_TEST_KERNEL) with the initramfs named by `initrd_variable`.
inline VmConfig linux_config(const char* initrd_variable, std::uint64_t memory) {
    VmConfig config;
    config.cpus = 1;
    config.memory = memory;
    config.cpu_model = x86::CpuModel::HostPassthrough; // what `vmmlab run --kernel` picks
    config.kernel = required_env("VMMLAB_TEST_KERNEL");
    config.initrd = required_env(initrd_variable);
    return config;
}

// Boots `config` to its end (power-off, or `timeout`: then status 124) and leaves the console in the
// test's output for a red run.
inline LinuxRun boot_linux(const VmConfig& config, std::chrono::seconds timeout) {
    LinuxRun run;
    ConsoleOptions console{[&run](std::span<const std::byte> bytes) {
                               run.console.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
                           },
                           -1};
    Vm vm(config, {}, std::move(console));
    run.report = vm.run(timeout);
    std::printf("--- guest console (%s)\n%s\n--- %s, status %d; unclaimed PIO %llu, MMIO %llu\n",
                describe(config).c_str(), run.console.c_str(), run.report.stop_reason.c_str(),
                run.report.exit_status, static_cast<unsigned long long>(run.report.unclaimed_pio),
                static_cast<unsigned long long>(run.report.unclaimed_mmio));
    std::fflush(stdout);
    run.checks = parse_checks(run.console);
    return run;
}

} // namespace vmmlab::test
