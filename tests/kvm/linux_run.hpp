// Booting Debian's kernel for the Linux kvm tests (linux_boot_test.cpp, linux_disk_test.cpp,
// linux_net_test.cpp): the images from the environment, a run in-process with the console captured, and the
// guest script's "vmmlab-check: KEY VALUE" lines parsed. A missing environment variable fails the test, it
// never skips it.
#pragma once

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <fcntl.h>
#include <sys/types.h>
#include <unistd.h>

#include "base/unique_fd.hpp"
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
    std::multimap<std::string, std::string> checks; // "vmmlab-check: KEY VALUE" lines of the guest script
    double host_start = 0, host_end = 0;            // the host's clock around the run, seconds since 1970
};

// A Linux guest on Debian's kernel (VMMLAB_TEST_KERNEL) with the initramfs named by `initrd_variable`, the
// default command line and `extra_cmdline`.
inline VmConfig linux_config(const char* initrd_variable, unsigned cpus, std::uint64_t memory,
                             const std::string& extra_cmdline = {}) {
    VmConfig config;
    config.cpus = cpus;
    config.memory = memory;
    config.cpu_model = x86::CpuModel::HostPassthrough; // what `vmmlab run --kernel` picks
    config.kernel = required_env("VMMLAB_TEST_KERNEL");
    config.initrd = required_env(initrd_variable);
    if (!extra_cmdline.empty()) config.kernel_cmdline += " " + extra_cmdline;
    return config;
}

inline double host_epoch() {
    return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Boots `config` to its end (power-off, reboot, or `timeout`: then status 124), with the serial input from
// `input_fd` (-1: none), and leaves the console in the test's output for a red run.
inline LinuxRun boot_linux(const VmConfig& config, std::chrono::seconds timeout, int input_fd = -1) {
    LinuxRun run;
    ConsoleOptions console{[&run](std::span<const std::byte> bytes) {
                               run.console.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
                           },
                           input_fd};
    run.host_start = host_epoch();
    Vm vm(config, {}, std::move(console));
    run.report = vm.run(timeout);
    run.host_end = host_epoch();
    std::printf("--- guest console (%s)\n%s\n--- %s, status %d; unclaimed PIO %llu, MMIO %llu\n",
                describe(config).c_str(), run.console.c_str(), run.report.stop_reason.c_str(),
                run.report.exit_status, static_cast<unsigned long long>(run.report.unclaimed_pio),
                static_cast<unsigned long long>(run.report.unclaimed_mmio));
    std::fflush(stdout);
    run.checks = parse_checks(run.console);
    return run;
}

// The value of a check the guest script must have printed.
inline std::string check_value(const std::multimap<std::string, std::string>& checks,
                               const std::string& key) {
    auto found = checks.find(key);
    INFO("the guest printed no 'vmmlab-check: " << key << "' line");
    REQUIRE(found != checks.end());
    return found->second;
}
inline std::string check_value(const LinuxRun& run, const std::string& key) {
    return check_value(run.checks, key);
}

// A check's value as a number (the whole value must be one).
inline double check_number(const LinuxRun& run, const std::string& key) {
    const std::string text = check_value(run, key);
    INFO(key << " = '" << text << "'");
    std::size_t used = 0;
    double value = 0;
    REQUIRE_NOTHROW(value = std::stod(text, &used));
    REQUIRE(used == text.size());
    return value;
}

#ifndef VMMLAB_BINARY
#error "tests/CMakeLists.txt defines VMMLAB_BINARY: the path of the vmmlab program"
#endif

// The arguments of `vmmlab run` (the program built beside the tests) for Debian's kernel with the initramfs
// named by `initrd_variable`, 256 MiB, the default command line and `extra_cmdline`, no console input, and
// `timeout`; the caller adds the devices.
inline std::vector<std::string> vmmlab_run_linux(const char* initrd_variable,
                                                 const std::string& extra_cmdline,
                                                 std::chrono::seconds timeout) {
    return {VMMLAB_BINARY,     "run",
            "--kernel",        required_env("VMMLAB_TEST_KERNEL"),
            "--initrd",        required_env(initrd_variable),
            "--cmdline",       std::string(kDefaultKernelCmdline) + " " + extra_cmdline,
            "--memory",        "256M",
            "--console-input", "none",
            "--timeout",       std::to_string(timeout.count())};
}

// A child process running `arguments` (argv[0] a path) with its stdout, the guest's console, into a pipe;
// vmmlab's log stays on the test's stderr.
struct ConsoleChild {
    pid_t pid = -1;
    UniqueFd console; // the pipe's read end
};
inline ConsoleChild spawn_with_console(std::vector<std::string> arguments) {
    int pipe_fds[2];
    REQUIRE(::pipe2(pipe_fds, O_CLOEXEC) == 0);
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        ::dup2(pipe_fds[1], STDOUT_FILENO);
        std::vector<char*> argv;
        for (auto& argument : arguments)
            argv.push_back(argument.data());
        argv.push_back(nullptr);
        ::execv(argv[0], argv.data());
        std::perror(argv[0]);
        ::_exit(127);
    }
    ::close(pipe_fds[1]);
    return {child, UniqueFd(pipe_fds[0])};
}

} // namespace vmmlab::test
