// VmConfig: every knob of a run in one value. Named profiles (untuned, tuned) are sets of knob values;
// a JSON file and command-line flags override them, in that order. Everything a user can get wrong
// comes back as a one-line error naming the key and the accepted values.
#pragma once

#include <cstdint>
#include <expected>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "arch/x86/cpuid.hpp"
#include "devices/virtio/io_engine.hpp"
#include "memory/backing.hpp"
#include "memory/page_tables.hpp"

namespace vmmlab {

struct HaltPoll {
    enum class Mode { KernelDefault, Off, Nanoseconds } mode = Mode::KernelDefault;
    std::uint64_t nanoseconds = 0;
    bool operator==(const HaltPoll&) const = default;
};

struct DisabledExits {
    bool hlt = false, pause = false, mwait = false;
    bool any() const { return hlt || pause || mwait; }
    bool operator==(const DisabledExits&) const = default;
};

// The command line a Linux guest gets unless the configuration names another: its console on the first
// serial port (the 8250 at 0x3f8, IRQ 4); reboot through the FADT's reset register (without reboot=,
// Linux 6.1 on a hardware-reduced ACPI platform tries EFI, then the BIOS reset vector, where vmmlab's
// firmware stub pulses the i8042 reset line); and a panic ends the VM at once (the kernel reboots, which
// ends a vmmlab run; the monitor reports the panic it saw on the console). Nothing else is needed: the
// platform answers every probe (ACPI tables and devices, i8042, CMOS RTC, PCI config space).
inline constexpr std::string_view kDefaultKernelCmdline = "console=ttyS0 reboot=acpi panic=-1";

// A virtio-blk disk: an image file (raw), opened read-only or read-write, with O_DIRECT or through the
// page cache, served by one of the block device's I/O engines. Written on the command line as
// "path=IMG[,readonly=on][,direct=on][,engine=sync|threads|uring]".
struct DiskConfig {
    std::string path;
    bool readonly = false;
    bool direct = false;
    virtio::IoEngineKind engine = virtio::IoEngineKind::Sync;
    bool operator==(const DiskConfig&) const = default;
};

// The virtio devices' I/O path (VM-wide). io_notify: how a guest's queue kick reaches the device (an MMIO
// write that exits to userspace, or an ioeventfd KVM signals); io_irq: how an interrupt reaches the guest
// (a KVM_SIGNAL_MSI ioctl, or an irqfd write); io_thread: where the device's work runs (the kicking vCPU's
// thread, or a per-device I/O thread). ioeventfd needs io_thread on: someone must read the eventfd.
enum class IoNotify { Exit, Ioeventfd };
enum class IoIrq { Userspace, Irqfd };

struct VmConfig {
    std::string profile = "untuned";
    unsigned cpus = 1;
    std::uint64_t memory = 256ULL << 20;
    Backing backing = Backing::Anonymous4K;
    bool prefault = false;
    PageSize guest_page = PageSize::k4K;
    std::vector<unsigned> pin; // host CPU of vCPU i; empty: not pinned
    HaltPoll halt_poll;
    DisabledExits disable_exits;
    x86::CpuModel cpu_model = x86::CpuModel::Minimal;
    std::string guest_cmdline = "hello";
    // A Linux guest instead of the embedded tiny guest: a bzImage, an optional initrd (paths, relative to
    // the working directory) and the kernel's command line.
    std::string kernel;
    std::string initrd;
    std::string kernel_cmdline{kDefaultKernelCmdline};
    bool boots_linux() const { return !kernel.empty(); }
    std::vector<DiskConfig> disks; // one virtio-blk PCI function each, in slot order
    IoNotify io_notify = IoNotify::Exit;
    IoIrq io_irq = IoIrq::Userspace;
    bool io_thread = false;
    bool operator==(const VmConfig&) const = default;
};

// "untuned" or "tuned" for a VM of `cpus` vCPUs on a host of `host_cpus` CPUs.
std::expected<VmConfig, std::string> profile_config(std::string_view name, unsigned cpus, unsigned host_cpus);

// Overlays the keys present in `json` on `base`; unknown keys are errors. A "profile" key first resets
// `base` to that profile (for a host of `host_cpus` CPUs), whatever the key order.
std::expected<VmConfig, std::string> apply_json(VmConfig base, const nlohmann::json& json,
                                                unsigned host_cpus = 0);
nlohmann::json to_json(const VmConfig& config);

// Cross-field rules: pin list length, exits disabled only with pinning, 1G guest pages need pdpe1gb, an
// initrd or a kernel command line only with a kernel...
std::expected<void, std::string> validate(const VmConfig& config, bool host_has_pdpe1gb);

// Knob value parsers shared by the JSON loader and the command line.
std::expected<std::uint64_t, std::string> parse_size(std::string_view text);             // 256M, 2G, 4096
std::expected<Backing, std::string> parse_backing(std::string_view text);                // 4k thp 2m 1g
std::expected<PageSize, std::string> parse_guest_page(std::string_view text);            // 4k 2m 1g
std::expected<std::vector<unsigned>, std::string> parse_cpu_list(std::string_view text); // 0,2-3 or none
std::expected<HaltPoll, std::string> parse_halt_poll(std::string_view text);             // default off 200000
std::expected<DisabledExits, std::string> parse_disabled_exits(std::string_view text);   // none hlt,pause
std::expected<x86::CpuModel, std::string> parse_cpu_model(std::string_view text);        // host minimal
std::expected<IoNotify, std::string> parse_io_notify(std::string_view text);             // exit ioeventfd
std::expected<IoIrq, std::string> parse_io_irq(std::string_view text);                   // userspace irqfd
std::expected<bool, std::string> parse_io_thread(std::string_view text);                 // off on
// path=IMG[,readonly=on|off][,direct=on|off][,engine=sync|threads|uring]; the path cannot hold a comma.
std::expected<DiskConfig, std::string> parse_disk(std::string_view text);

std::string to_string(PageSize size);
std::string to_string(const HaltPoll& halt_poll);
std::string to_string(const DisabledExits& exits);
std::string to_string(x86::CpuModel model);
std::string to_string(const DiskConfig& disk); // the text parse_disk reads back
std::string to_string(IoNotify notify);
std::string to_string(IoIrq irq);

// The effective configuration, one knob per line, as every run prints it.
std::string describe(const VmConfig& config);

} // namespace vmmlab
