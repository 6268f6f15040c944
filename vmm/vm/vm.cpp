#include "vm/vm.hpp"

#include <charconv>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "arch/x86/acpi.hpp"
#include "arch/x86/cpuid.hpp"
#include "arch/x86/host_cpu.hpp"
#include "arch/x86/long_mode.hpp"
#include "base/error.hpp"
#include "base/read_file.hpp"
#include "base/unique_fd.hpp"
#include "boot/linux_guest.hpp"
#include "boot/tiny_guest.hpp"
#include "bus/interrupt_line.hpp"
#include "cpu/vcpu_thread.hpp"
#include "devices/legacy/acpi_power.hpp"
#include "devices/legacy/cmos_rtc.hpp"
#include "devices/legacy/debug_ports.hpp"
#include "devices/legacy/i8042.hpp"
#include "devices/legacy/pci_host.hpp"
#include "devices/legacy/port_sink.hpp"
#include "devices/legacy/serial.hpp"
#include "devices/legacy/serial_input.hpp"
#include "devices/virtio/block.hpp"
#include "devices/virtio/io_thread.hpp"
#include "devices/virtio/pci_transport.hpp"
#include "guest/abi/boot_abi.hpp"
#include "kvm/capabilities.hpp"
#include "kvm/gsi_router.hpp"
#include "kvm/kvm.hpp"
#include "memory/backing.hpp"
#include "trace/chrome_trace.hpp"
#include "trace/disassembler.hpp"
#include "trace/tracefs.hpp"
#include "vm/msi_sinks.hpp"

namespace vmmlab {

namespace {
const auto kProcessStart = std::chrono::steady_clock::now(); // static initialisation, before main()

double microseconds_since(std::chrono::steady_clock::time_point when) {
    return std::chrono::duration<double, std::micro>(when - kProcessStart).count();
}

// Platform pages KVM needs inside the 32-bit PCI hole (VMX real-mode emulation), away from devices.
constexpr std::uint64_t kIdentityMapPage = 0xfeffc000;
constexpr std::uint64_t kTssPages = 0xfeffd000;
constexpr std::uint32_t kSerialGsi = 4;
constexpr std::uint16_t kPostPort = 0x80;
// Ports Linux probes for hardware a PC may have and vmmlab does not; they read all ones, as if unclaimed,
// but are not counted or logged as unclaimed: the answer "nothing here" is the intended one.
struct AbsentRange {
    std::uint16_t port, size;
};
constexpr AbsentRange kAbsentPorts[] = {
    {0x2e, 2},  // Super I/O configuration index/data (the 8250_fintek probe)
    {0x4e, 2},  // the same, second address
    {0x81, 15}, // ISA DMA page registers (the i8237 probe reads 0x87)
    {0x2e8, 8}, // COM4
    {0x2f8, 8}, // COM2
    {0x3e8, 8}, // COM3
};
// What the Linux kernel prints when it panics; with panic=-1 it then reboots at once, which alone would
// look like a clean end of the run.
constexpr std::string_view kKernelPanicText = "Kernel panic - not syncing";
// Exit status of a run whose Linux guest panicked (EX_SOFTWARE, as the tiny guest's own panic).
constexpr int kKernelPanicStatus = 70;

class KvmIrqLine final : public InterruptLine {
public:
    KvmIrqLine(kvm::VmFd& vm, std::uint32_t gsi) : vm_(vm), gsi_(gsi) {}
    void set_level(bool high) override { vm_.set_irq_line(gsi_, high); }

private:
    kvm::VmFd& vm_;
    std::uint32_t gsi_;
};

void apply_vm_knobs(const VmConfig& config, kvm::VmFd& vm) {
    if (config.halt_poll.mode != HaltPoll::Mode::KernelDefault) {
        if (vm.check_extension(KVM_CAP_HALT_POLL) <= 0)
            throw SystemError("--halt-poll " + to_string(config.halt_poll) + ": KVM_CAP_HALT_POLL missing",
                              ENOTSUP, "this kernel cannot set halt polling per VM");
        const std::uint64_t ns =
            config.halt_poll.mode == HaltPoll::Mode::Off ? 0 : config.halt_poll.nanoseconds;
        vm.enable_cap(KVM_CAP_HALT_POLL, std::array{ns});
    }
    if (config.disable_exits.any()) {
        const int supported = vm.check_extension(KVM_CAP_X86_DISABLE_EXITS);
        std::uint64_t wanted = (config.disable_exits.hlt ? KVM_X86_DISABLE_EXITS_HLT : 0) |
                               (config.disable_exits.pause ? KVM_X86_DISABLE_EXITS_PAUSE : 0) |
                               (config.disable_exits.mwait ? KVM_X86_DISABLE_EXITS_MWAIT : 0);
        if ((wanted & ~static_cast<std::uint64_t>(supported)) != 0)
            throw SystemError("--disable-exits " + to_string(config.disable_exits) + ": KVM offers only " +
                                  kvm::describe_capability_value(KVM_CAP_X86_DISABLE_EXITS, supported),
                              ENOTSUP);
        vm.enable_cap(KVM_CAP_X86_DISABLE_EXITS, std::array{wanted});
    }
    // The I/O-path knobs: refused up front when this kernel cannot honour them.
    auto require = [&](bool wanted, unsigned capability, const char* name, const std::string& knob) {
        if (wanted && vm.check_extension(capability) <= 0)
            throw SystemError(fmt::format("{}: {} missing", knob, name), ENOTSUP);
    };
    const bool ioeventfd = config.io_notify == IoNotify::Ioeventfd;
    const bool irqfd = config.io_irq == IoIrq::Irqfd;
    require(ioeventfd, KVM_CAP_IOEVENTFD, "KVM_CAP_IOEVENTFD", "--io-notify ioeventfd");
    require(irqfd, KVM_CAP_IRQFD, "KVM_CAP_IRQFD", "--io-irq irqfd");
    require(irqfd, KVM_CAP_IRQ_ROUTING, "KVM_CAP_IRQ_ROUTING", "--io-irq irqfd");
}
// KVM's binary stats of the VM and every vCPU, read before the vCPUs start and after they stop.
class KernelStatsProbe {
public:
    void start(kvm::VmFd& vm, const std::vector<std::unique_ptr<VcpuThread>>& vcpus, RunReport& report) {
        try {
            vm_.emplace(open_kvm_stats_fd(vm.fd()));
            vm_start_ = vm_->snapshot();
            for (auto& vcpu : vcpus) {
                vcpus_.emplace_back(open_kvm_stats_fd(vcpu->fd().fd()));
                vcpu_start_.push_back(vcpus_.back().snapshot());
            }
        } catch (const std::exception& error) {
            report.kernel_stats_note = error.what();
            vm_.reset();
            vcpus_.clear();
        }
    }
    void finish(RunReport& report) {
        if (!vm_) return;
        report.kernel_vm_stats =
            KvmStats{vm_->layout(), kvm_stats_difference(vm_->layout(), vm_start_, vm_->snapshot())};
        if (vcpus_.empty()) return;
        const auto& layout = vcpus_.front().layout();
        last_ = vcpu_start_; // the whole run, whatever the interval lines have read since
        report.kernel_vcpu_stats = KvmStats{layout, vcpu_difference_since_last()};
    }

    // "exits +N io_exits +N ..." for the vCPUs since the previous call (or the start).
    std::string interval_line() {
        if (vcpus_.empty()) return "KVM stats unavailable";
        const auto& layout = vcpus_.front().layout();
        const KvmStatsSnapshot delta = vcpu_difference_since_last();
        std::string line;
        for (auto name : interesting_kvm_stats())
            if (auto value = kvm_stat_value(layout, delta, name); value && *value > 0)
                line += fmt::format("{}{} +{}", line.empty() ? "" : ", ", name, *value);
        return line.empty() ? "no exits" : line;
    }

private:
    // Every vCPU's stats now minus at the previous call (the start for the first), summed over vCPUs.
    KvmStatsSnapshot vcpu_difference_since_last() {
        const auto& layout = vcpus_.front().layout();
        if (last_.empty()) last_ = vcpu_start_;
        KvmStatsSnapshot sum;
        for (std::size_t i = 0; i < vcpus_.size(); ++i) {
            auto now = vcpus_[i].snapshot();
            const auto difference = kvm_stats_difference(layout, last_[i], now);
            last_[i] = std::move(now);
            if (i == 0) {
                sum = difference;
                continue;
            }
            for (std::size_t stat = 0; stat < sum.values.size() && stat < difference.values.size(); ++stat)
                for (std::size_t k = 0; k < sum.values[stat].size() && k < difference.values[stat].size();
                     ++k)
                    sum.values[stat][k] += difference.values[stat][k];
        }
        return sum;
    }

    std::vector<KvmStatsSnapshot> last_;
    std::optional<KvmStatsReader> vm_;
    KvmStatsSnapshot vm_start_;
    std::vector<KvmStatsReader> vcpus_;
    std::vector<KvmStatsSnapshot> vcpu_start_;
};

// The files of a Linux guest, read and checked before any VM exists.
struct LinuxFiles {
    std::vector<std::byte> kernel, initrd;
};

LinuxFiles read_linux_files(const VmConfig& config) {
    LinuxFiles files;
    auto kernel = read_binary_file(config.kernel);
    if (!kernel) throw GuestImageError("kernel " + kernel.error());
    if (auto header = parse_bzimage(*kernel); !header)
        throw GuestImageError(fmt::format("kernel {}: {}", config.kernel, header.error().message));
    files.kernel = std::move(*kernel);
    if (!config.initrd.empty()) {
        auto initrd = read_binary_file(config.initrd);
        if (!initrd) throw GuestImageError("initrd " + initrd.error());
        files.initrd = std::move(*initrd);
    }
    return files;
}

// One line for a layout error, naming the file at fault.
std::string describe_linux_error(const VmConfig& config, const LinuxGuestError& error) {
    switch (error.part) {
    case LinuxGuestError::Part::Kernel:
        return fmt::format("kernel {}: {}", config.kernel, error.message);
    case LinuxGuestError::Part::Initrd:
        return fmt::format("initrd {}: {}", config.initrd, error.message);
    case LinuxGuestError::Part::CommandLine:
        return fmt::format("cmdline: {}", error.message);
    case LinuxGuestError::Part::Platform:
        break;
    }
    return fmt::format("Linux guest in {} MiB of RAM: {}", config.memory >> 20, error.message);
}
} // namespace

double microseconds_since_process_start() {
    return microseconds_since(std::chrono::steady_clock::now());
}

std::optional<GuestResult> parse_result_line(std::string_view line) {
    constexpr std::string_view prefix = abi::kResultPrefix;
    if (!line.starts_with(prefix)) return std::nullopt;
    line.remove_prefix(prefix.size());
    GuestResult result;
    bool has_value = false;
    while (!line.empty()) {
        auto space = line.find(' ');
        auto field = line.substr(0, space);
        line = space == std::string_view::npos ? std::string_view{} : line.substr(space + 1);
        auto equals = field.find('=');
        if (equals == std::string_view::npos) continue;
        auto key = field.substr(0, equals), value = field.substr(equals + 1);
        if (key == "workload")
            result.workload = value;
        else if (key == "metric")
            result.metric = value;
        else if (key == "unit")
            result.unit = value;
        else if (key == "value") {
            // from_chars for double is in libstdc++ 11+.
            auto [end, error] = std::from_chars(value.data(), value.data() + value.size(), result.value);
            has_value = error == std::errc{} && end == value.data() + value.size();
        } else if (key == "vcpu") {
            std::from_chars(value.data(), value.data() + value.size(), result.vcpu);
        }
    }
    if (!has_value || result.workload.empty() || result.metric.empty()) return std::nullopt;
    return result;
}

// The virtio PCI functions: BAR0 of virtio device k (disks first, then nets) at kVirtioBarBase + k *
// kBarSize (in the 32-bit PCI hole, above the tiny guest's bench MMIO page at 0xD0000000 and far below
// the IO-APIC at 0xFEC00000), INTx on GSI kVirtioIntxGsiBase + k (IO-APIC pins 16-23, one each:
// KVM_IRQ_LINE levels of one source cannot be shared). Linux uses MSI-X; INTx is for drivers that do not.
constexpr std::uint64_t kVirtioBarBase = x86::acpi::kPciMmioBase; // the root bridge's window in the DSDT
constexpr std::uint32_t kVirtioIntxGsiBase = 16;
constexpr std::size_t kMaxVirtioDevices = 8;

// A window of a device's BAR inserted on the bus as its own range (so exits to it are counted as their
// own site, e.g. "virtio-blk0-notify"): accesses are forwarded at `base` + offset.
class BarWindow final : public Device {
public:
    BarWindow(std::string name, Device& target, std::uint64_t base)
        : name_(std::move(name)), target_(target), base_(base) {}
    std::string_view name() const override { return name_; }
    ExitAction read(std::uint64_t offset, std::span<std::byte> data) override {
        return target_.read(base_ + offset, data);
    }
    ExitAction write(std::uint64_t offset, std::span<const std::byte> data) override {
        return target_.write(base_ + offset, data);
    }

private:
    std::string name_;
    Device& target_;
    std::uint64_t base_;
};

// One virtio PCI function and its I/O path (--io-notify, --io-irq, --io-thread). Torn down in an order
// that keeps every callback's target alive: the I/O thread stops (no more kicks), the ioeventfds are
// unbound, the transport resets the device (requests in flight complete and signal through the MSI
// sink), then the sink, the INTx line and the device go.
struct VirtioFunction {
    kvm::VmFd* vm = nullptr;
    std::string name;
    unsigned slot = 0;
    std::unique_ptr<virtio::VirtioDevice> device;
    std::unique_ptr<InterruptLine> intx;
    std::unique_ptr<IrqfdMsiSink> irqfd; // --io-irq irqfd; otherwise the VM's KvmMsiSink
    std::vector<UniqueFd> queue_fds;     // --io-thread on, per queue: what the I/O thread waits on
    std::size_t ioeventfds_bound = 0;    // --io-notify ioeventfd: queue_fds[0..n) bound with KVM_IOEVENTFD
    std::uint32_t ioeventfd_length = 0;  // the length they were bound for (0: a write of any length)
    std::unique_ptr<virtio::VirtioPciTransport> transport;
    std::unique_ptr<BarWindow> notify_window, msix_window;
    std::unique_ptr<virtio::IoThread> io_thread;

    VirtioFunction() = default;
    VirtioFunction(const VirtioFunction&) = delete;
    VirtioFunction& operator=(const VirtioFunction&) = delete;
    ~VirtioFunction() {
        if (io_thread) io_thread->stop();
        for (std::size_t q = 0; q < ioeventfds_bound; ++q) {
            try {
                vm->remove_mmio_ioeventfd(transport->notify_address(static_cast<std::uint16_t>(q)),
                                          ioeventfd_length, queue_fds[q].get());
            } catch (const std::exception& error) {
                spdlog::warn("{}: {}", name, error.what());
            }
        }
        transport.reset();
        irqfd.reset();
    }
};

struct Vm::State {
    VmConfig config;
    kvm::KvmSystem system;
    kvm::VmFd vm;
    GuestMemory memory;
    RunControl control;
    UnclaimedAccesses unclaimed;
    PioBus pio;
    MmioBus mmio;
    std::mutex output_mutex;
    std::vector<GuestResult> results;
    devices::SerialLineTap tap;
    ConsoleOptions console;
    KvmIrqLine serial_irq;
    devices::Uart16550 serial;
    devices::ExitPort exit_port{control};
    devices::BootMarker boot_marker;
    devices::BenchSink bench_pio{"bench-pio"};
    devices::BenchSink bench_ioeventfd{"bench-ioeventfd"};
    devices::BenchSink bench_mmio{"bench-mmio"};
    devices::AcpiPower acpi_power{control};
    KvmIrqLine keyboard_irq{vm, devices::I8042::kKeyboardIrq};
    KvmIrqLine aux_irq{vm, devices::I8042::kAuxIrq};
    devices::I8042 i8042{control, keyboard_irq, aux_irq};
    devices::CmosRtc rtc;
    devices::PortSink post_port{"post-port"};
    devices::PortSink absent_ports{"absent"};
    devices::PciHost pci; // configuration mechanism #1: the host bridge at 00:00.0 and the virtio functions
    KvmMsiSink msi{vm};
    std::unique_ptr<kvm::VmGsiRouting> gsi_routing; // --io-irq irqfd: the VM's routing table
    std::unique_ptr<kvm::GsiRouter> gsi_router;
    std::unique_ptr<VmIrqfdBinder> irqfd_binder;
    std::vector<std::unique_ptr<VirtioFunction>> virtio; // in slot order (disks, then nets)
    std::optional<std::string> kernel_panic; // the console line, once seen (guarded by output_mutex)
    UniqueFd bench_eventfd;
    std::vector<std::unique_ptr<VcpuThread>> vcpus;
    double setup_done_us = 0;
    TraceOptions trace;
    std::shared_ptr<const SiteTable> sites;

    State(const VmConfig& vm_config, ConsoleOptions console_options, TraceOptions trace_options)
        : config(vm_config), system(kvm::KvmSystem::open()), vm(system.create_vm()),
          tap([this](const devices::SerialLineTap::Line& line) {
              if (auto result = parse_result_line(line.text);
                  result && line.complete && !line.continues_previous)
                  results.push_back(*result);
              if (config.boots_linux() && !kernel_panic && line.text.find(kKernelPanicText) != line.text.npos)
                  kernel_panic = std::string(line.text);
          }),
          console(std::move(console_options)), serial_irq(vm, kSerialGsi),
          serial(
              "serial0", [this](std::span<const std::byte> bytes) { on_serial_output(bytes); }, serial_irq),
          trace(std::move(trace_options)) {}

    void on_serial_output(std::span<const std::byte> bytes) {
        std::lock_guard lock(output_mutex);
        tap.feed(bytes);
        if (console.output)
            console.output(bytes);
        else {
            std::fwrite(bytes.data(), 1, bytes.size(), stdout);
            std::fflush(stdout);
        }
    }
};

Vm::Vm(const VmConfig& config, std::span<const std::byte> guest_image, ConsoleOptions console,
       TraceOptions trace) {
    const auto host = x86::read_host_cpu();
    if (auto valid = validate(config, host.pdpe1gb); !valid) throw SystemError(valid.error(), EINVAL);
    // A Linux guest's files first: a wrong path or a file that is no bzImage is refused before any VM exists.
    std::optional<LinuxFiles> linux_files;
    if (config.boots_linux()) linux_files = read_linux_files(config);

    state_ = std::make_unique<State>(config, std::move(console), std::move(trace));
    auto& s = *state_;
    kvm::require_capabilities(s.system);

    s.vm.set_identity_map_address(kIdentityMapPage);
    s.vm.set_tss_address(kTssPages);
    s.vm.create_irqchip();
    s.vm.create_pit2();
    apply_vm_knobs(config, s.vm);

    s.memory = allocate_guest_ram(config.memory, {.backing = config.backing, .prefault = config.prefault});
    std::uint32_t slot = 0;
    for (const auto& region : s.memory.regions())
        s.vm.set_user_memory_region(slot++, region.start.value, region.size, region.host);

    auto insert = [](auto& bus, auto base, std::uint64_t size, Device& device) {
        if (auto inserted = bus.insert(base, size, device); !inserted)
            throw SystemError(inserted.error(), EEXIST);
    };
    insert(s.pio, PioAddress{abi::kSerialPort}, 8, s.serial);
    insert(s.pio, PioAddress{abi::kExitPort}, 4, s.exit_port);
    insert(s.pio, PioAddress{abi::kBootMarkerPort}, 1, s.boot_marker);
    insert(s.pio, PioAddress{abi::kBenchPioPort}, 4, s.bench_pio);
    insert(s.pio, PioAddress{abi::kBenchIoeventfdPort}, 4, s.bench_ioeventfd);
    insert(s.mmio, MmioAddress{abi::kBenchMmioAddress}, 0x1000, s.bench_mmio);
    // The PC platform pieces Linux probes (any guest may use them).
    insert(s.pio, PioAddress{devices::I8042::kDataPort}, 1, s.i8042.data_port());
    insert(s.pio, PioAddress{devices::I8042::kCommandPort}, 1, s.i8042.command_port());
    insert(s.pio, PioAddress{devices::CmosRtc::kIndexPort}, devices::CmosRtc::kRegisterCount, s.rtc);
    insert(s.pio, PioAddress{kPostPort}, 1, s.post_port);
    for (const auto& range : kAbsentPorts)
        insert(s.pio, PioAddress{range.port}, range.size, s.absent_ports);
    insert(s.pio, PioAddress{x86::acpi::kSleepControlPort}, devices::AcpiPower::kRegisterCount, s.acpi_power);
    insert(s.pio, PioAddress{devices::PciHost::kBasePort}, devices::PciHost::kPortCount, s.pci);
    attach_disks(s);
    std::uint32_t flags = 0;
    if (s.system.check_extension(KVM_CAP_IOEVENTFD) > 0) {
        s.bench_eventfd = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
        if (!s.bench_eventfd) throw SystemError("eventfd", errno);
        s.vm.add_pio_ioeventfd(abi::kBenchIoeventfdPort, 4, s.bench_eventfd.get());
        flags |= abi::kFlagIoeventfdBound;
    }

    bool guest_avx = false;
    const auto supported = s.system.supported_cpuid();
    const auto host_caches = x86::read_host_cache_facts(x86::native_cpuid());
    for (unsigned id = 0; id < config.cpus; ++id) {
        auto vcpu = s.vm.create_vcpu(id);
        auto cpuid = x86::guest_cpuid(supported, config.cpu_model,
                                      {.vcpu_count = config.cpus, .vcpu_index = id}, host_caches);
        if (!cpuid) throw SystemError("CPU model: " + cpuid.error(), EINVAL);
        vcpu.set_cpuid(*cpuid);
        // XSAVE state for AVX only where the guest's CPUID offers AVX (the minimal model does not).
        guest_avx = host.avx_usable && x86::cpuid_has_avx(*cpuid).value_or(false);
        std::optional<unsigned> pin;
        if (!config.pin.empty()) pin = config.pin[id];
        s.vcpus.push_back(std::make_unique<VcpuThread>(std::move(vcpu), pin));
    }

    if (linux_files) {
        auto layout = prepare_linux_guest(s.memory, {.vcpus = config.cpus,
                                                     .kernel = linux_files->kernel,
                                                     .initrd = linux_files->initrd,
                                                     .command_line = config.kernel_cmdline,
                                                     .mp_table = true});
        if (!layout) throw GuestImageError(describe_linux_error(config, layout.error()));
        // Only the boot vCPU starts. The others stay as KVM created them (waiting for INIT/SIPI in the
        // in-kernel local APIC), and Linux starts them through the APIC as on real hardware.
        auto& boot = s.vcpus[0]->fd();
        boot.set_sregs(
            x86::long_mode_sregs(boot.sregs(), {.cr3 = layout->cr3, .gdt = layout->gdt, .osxsave = false}));
        boot.set_regs(layout->boot_regs);
    } else {
        start_tiny_guest(s, guest_image, flags, guest_avx);
    }
    s.sites = std::make_shared<const SiteTable>(SiteTable::from_buses(s.pio, s.mmio));
    s.control.set_on_stop([&s] {
        for (auto& vcpu : s.vcpus)
            vcpu->kick();
    });
    s.setup_done_us = microseconds_since_process_start();
    spdlog::info("guest memory: {}", describe_achieved_backing(config.backing, config.memory));
}

// One virtio-blk PCI function per configured disk, in order (see attach_virtio_device).
void Vm::attach_disks(State& s) {
    if (s.config.disks.size() > kMaxVirtioDevices)
        throw SystemError(
            fmt::format("disks: {} given; at most {}", s.config.disks.size(), kMaxVirtioDevices), EINVAL);
    for (std::size_t i = 0; i < s.config.disks.size(); ++i) {
        const auto& disk = s.config.disks[i];
        auto blk = virtio::VirtioBlk::open({.path = disk.path,
                                            .read_only = disk.readonly,
                                            .direct = disk.direct,
                                            .engine = disk.engine,
                                            .serial = fmt::format("vmmlab-disk{}", i)});
        if (!blk) throw SystemError(fmt::format("disk {}: {}", disk.path, blk.error()), EINVAL);
        auto& function = attach_virtio_device(s, std::move(*blk), fmt::format("virtio-blk{}", i));
        spdlog::info("disk {}: {} at 00:{:02x}.0{}", disk.path, function.name, function.slot,
                     disk.readonly ? ", read-only" : "");
    }
}

// Virtio device k (k = the number attached so far) at PCI slot k+1: BAR0 on the MMIO bus (the notify
// region and the MSI-X table as sites of their own), INTx on GSI 16 + k, and the I/O path the knobs ask
// for: interrupts by KVM_SIGNAL_MSI or per-vector irqfds; with --io-thread on, an I/O thread per device
// that waits on one eventfd per queue, signalled by KVM (--io-notify ioeventfd, on notify_address(q)) or
// by the vCPU's MMIO notify write (--io-notify exit, and any notify write that still exits), and kicks
// the queue; with --io-thread off, the vCPU's notify write runs the device itself.
VirtioFunction& Vm::attach_virtio_device(State& s, std::unique_ptr<virtio::VirtioDevice> device,
                                         std::string name) {
    const std::size_t k = s.virtio.size();
    if (k >= kMaxVirtioDevices)
        throw SystemError(fmt::format("{}: at most {} virtio devices in all", name, kMaxVirtioDevices),
                          ENOSPC);
    const std::uint64_t bar = kVirtioBarBase + k * virtio::VirtioPciTransport::kBarSize;
    const auto gsi = static_cast<std::uint32_t>(kVirtioIntxGsiBase + k);
    auto function = std::make_unique<VirtioFunction>();
    auto& f = *function;
    f.vm = &s.vm;
    f.name = std::move(name);
    f.device = std::move(device);
    f.intx = std::make_unique<KvmIrqLine>(s.vm, gsi);
    const std::uint16_t queues = f.device->queue_count();
    const auto vectors = static_cast<std::uint16_t>(queues + 1);
    virtio::MsiSink* msi = &s.msi;
    if (s.config.io_irq == IoIrq::Irqfd) {
        if (!s.gsi_router) {
            const int limit = s.vm.check_extension(KVM_CAP_IRQ_ROUTING);
            s.gsi_routing = std::make_unique<kvm::VmGsiRouting>(s.vm);
            s.gsi_router = std::make_unique<kvm::GsiRouter>(*s.gsi_routing,
                                                            limit > 0 ? static_cast<std::uint32_t>(limit)
                                                                      : kvm::GsiRouter::kDefaultGsiLimit);
            s.irqfd_binder = std::make_unique<VmIrqfdBinder>(s.vm);
        }
        f.irqfd = std::make_unique<IrqfdMsiSink>(*s.gsi_router, *s.irqfd_binder, vectors);
        msi = f.irqfd.get();
    }
    f.transport = std::make_unique<virtio::VirtioPciTransport>(f.name, *f.device, s.memory, *msi, *f.intx,
                                                               bar, static_cast<std::uint8_t>(gsi), vectors);
    if (s.config.io_thread) {
        f.io_thread = std::make_unique<virtio::IoThread>("io-" + f.name);
        std::vector<int> fds;
        for (std::uint16_t q = 0; q < queues; ++q) {
            f.queue_fds.emplace_back(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
            if (!f.queue_fds.back()) throw SystemError(f.name + ": eventfd", errno);
            fds.push_back(f.queue_fds.back().get());
        }
        if (s.config.io_notify == IoNotify::Ioeventfd) {
            // Linux's virtio-pci writes the notify register 16 bits wide; any width where KVM can match it.
            f.ioeventfd_length = s.vm.check_extension(KVM_CAP_IOEVENTFD_ANY_LENGTH) > 0 ? 0 : 2;
            for (std::uint16_t q = 0; q < queues; ++q) {
                s.vm.add_mmio_ioeventfd(f.transport->notify_address(q), f.ioeventfd_length, fds[q]);
                f.ioeventfds_bound = q + 1U;
            }
            f.transport->set_kick_fds(fds);
        }
        // A notify write that exits anyway (--io-notify exit, or a width the ioeventfd does not match)
        // signals the same eventfd: the device's work stays on its I/O thread.
        f.transport->set_notify_hook([fds](std::uint16_t q) {
            if (q < fds.size()) virtio::signal_event_fd(fds[q]);
        });
        // A device that hands its kick eventfds to the kernel (vhost) reads them itself.
        if (!(s.config.io_notify == IoNotify::Ioeventfd && f.device->consumes_kicks()))
            for (std::uint16_t q = 0; q < queues; ++q)
                f.io_thread->watch(fds[q], [transport = f.transport.get(), q] { transport->kick(q); });
        f.io_thread->start();
    }
    f.slot = s.pci.free_slot();
    if (!s.pci.attach(f.slot, *f.transport))
        throw SystemError(fmt::format("{}: no free PCI slot", f.name), ENOSPC);
    using Transport = virtio::VirtioPciTransport;
    f.notify_window = std::make_unique<BarWindow>(f.name + "-notify", *f.transport, Transport::kNotifyOffset);
    f.msix_window = std::make_unique<BarWindow>(f.name + "-msix", *f.transport, Transport::kMsixTableOffset);
    auto insert = [&](std::uint64_t offset, std::uint64_t size, Device& window) {
        if (auto inserted = s.mmio.insert(MmioAddress{bar + offset}, size, window); !inserted)
            throw SystemError(inserted.error(), EEXIST);
    };
    insert(0, Transport::kNotifyOffset, *f.transport);
    insert(Transport::kNotifyOffset, Transport::kMsixTableOffset - Transport::kNotifyOffset,
           *f.notify_window);
    insert(Transport::kMsixTableOffset, Transport::kBarSize - Transport::kMsixTableOffset, *f.msix_window);
    spdlog::info("{}: 00:{:02x}.0, BAR0 {:#x}, INTx GSI {}, notify {}, interrupts {}, I/O thread {}", f.name,
                 f.slot, bar, gsi, to_string(s.config.io_notify), to_string(s.config.io_irq),
                 s.config.io_thread ? "on" : "off");
    s.virtio.push_back(std::move(function));
    return *s.virtio.back();
}

void Vm::start_tiny_guest(State& s, std::span<const std::byte> guest_image, std::uint32_t flags,
                          bool guest_avx) {
    const auto& config = s.config;
    TinyGuestParams params{.vcpus = config.cpus,
                           .guest_page = config.guest_page,
                           .command_line = config.guest_cmdline,
                           .tsc_khz = s.vcpus[0]->fd().tsc_khz(),
                           .flags = flags};
    auto layout = prepare_tiny_guest(s.memory, guest_image, params);
    if (!layout) throw SystemError(layout.error(), EINVAL);

    for (unsigned id = 0; id < config.cpus; ++id) {
        auto& vcpu = s.vcpus[id]->fd();
        vcpu.set_sregs(x86::long_mode_sregs(
            vcpu.sregs(), {.cr3 = layout->cr3, .gdt = GuestAddress{abi::kGdtAddress}, .osxsave = guest_avx}));
        if (guest_avx) vcpu.set_xcr0(x86::kXcr0X87 | x86::kXcr0Sse | x86::kXcr0Avx);
        vcpu.set_regs(layout->vcpu_regs[id]);
        // With the in-kernel LAPIC, application processors wait for INIT/SIPI; ours start directly.
        if (id != 0) vcpu.set_mp_state(KVM_MP_STATE_RUNNABLE);
    }
}

Vm::~Vm() {
    if (!state_) return;
    state_->control.request_stop(state_->control.status(), "the monitor is shutting down");
    for (auto& vcpu : state_->vcpus)
        vcpu->join();
}

namespace {
template <typename Alternative, std::size_t Index = 0>
constexpr std::uint8_t variant_index() {
    if constexpr (std::is_same_v<std::variant_alternative_t<Index, VcpuExit>, Alternative>)
        return static_cast<std::uint8_t>(Index);
    else
        return variant_index<Alternative, Index + 1>();
}
} // namespace

// The exits the rings kept, as Chrome trace-event JSON, each with the instruction at its RIP (read through
// the guest's page tables as they are at the end of the run).
void Vm::write_timeline(State& s, RunReport& report) {
    std::vector<const TraceRing*> rings;
    for (auto& vcpu : s.vcpus)
        if (vcpu->trace_ring() != nullptr) {
            rings.push_back(vcpu->trace_ring());
            report.trace_records += vcpu->trace_ring()->size();
            report.trace_dropped += vcpu->trace_ring()->dropped();
        }
    Disassembler disassembler;
    std::vector<kvm_sregs> sregs;
    for (auto& vcpu : s.vcpus)
        sregs.push_back(vcpu->fd().sregs());
    ChromeTraceOptions options;
    // KVM reports an MMIO exit after emulating the access, with RIP past the instruction (PIO exits stop
    // at it). For those, look for the instruction with a memory operand that ends exactly at RIP.
    const auto text = [](const Instruction& instruction) {
        return instruction.operands.empty() ? instruction.mnemonic
                                            : instruction.mnemonic + " " + instruction.operands;
    };
    options.instruction_at = [&](std::uint32_t vcpu, std::uint64_t rip,
                                 std::uint8_t reason) -> std::optional<std::string> {
        if (vcpu >= sregs.size()) return std::nullopt;
        const bool paging = (sregs[vcpu].cr0 & (1U << 31)) != 0;
        const bool after = reason == variant_index<MmioRead>() || reason == variant_index<MmioWrite>();
        if (!after) {
            auto instruction = disassemble_guest(disassembler, s.memory, sregs[vcpu].cr3, paging, rip);
            return instruction ? std::optional(text(*instruction)) : std::nullopt;
        }
        for (std::uint64_t back = 1; back <= kMaxInstructionLength && back <= rip; ++back) {
            auto instruction = disassemble_guest(disassembler, s.memory, sregs[vcpu].cr3, paging, rip - back);
            if (instruction && instruction->length == back &&
                instruction->operands.find('[') != std::string::npos)
                return text(*instruction);
        }
        return std::nullopt;
    };
    const auto json = chrome_trace(rings, *s.sites, options);
    std::ofstream out(s.trace.timeline_path);
    out << json.dump() << '\n';
    if (!out) throw SystemError("writing the trace " + s.trace.timeline_path, errno);
}

// Turns on kvm:kvm_exit for the vCPU threads (started a moment ago: their first exits may be missed).
void Vm::start_exit_tracepoint(State& s, std::optional<KvmExitCounter>& counter,
                               std::optional<KvmExitTracepoint>& tracepoint, RunReport& report) {
    std::vector<pid_t> tids;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    for (auto& vcpu : s.vcpus) {
        while (vcpu->tid() == 0 && std::chrono::steady_clock::now() < deadline)
            std::this_thread::yield();
        if (vcpu->tid() != 0) tids.push_back(vcpu->tid());
    }
    std::vector<std::uint32_t> ids(tids.begin(), tids.end());
    const auto host = x86::read_host_cpu();
    counter.emplace(ids, host.svm   ? std::optional<HwIsa>(HwIsa::Svm)
                         : host.vmx ? std::optional<HwIsa>(HwIsa::Vmx)
                                    : std::nullopt);
    try {
        tracepoint.emplace(tids, [&counter](std::string_view line) { counter->add_line(line); });
    } catch (const std::exception& error) {
        report.kvm_exits_note = error.what();
        counter.reset();
    }
}

RunReport Vm::run(std::chrono::milliseconds timeout) {
    auto& s = *state_;
    RunReport report;
    report.setup_done_us = s.setup_done_us;
    report.first_run_us = microseconds_since_process_start();
    KernelStatsProbe kernel_stats;
    if (s.trace.kernel_stats) kernel_stats.start(s.vm, s.vcpus, report);
    const VcpuTracing tracing{.sites = s.sites.get(),
                              .counters = s.trace.counters,
                              .ring_capacity = s.trace.timeline_path.empty() ? 0 : s.trace.ring_capacity};
    for (auto& vcpu : s.vcpus)
        vcpu->start(s.pio, s.mmio, s.unclaimed, s.control, tracing);
    std::optional<KvmExitCounter> kvm_exits;
    std::optional<KvmExitTracepoint> tracepoint;
    if (s.trace.kvm_exit_tracepoint) start_exit_tracepoint(s, kvm_exits, tracepoint, report);
    std::optional<devices::SerialInputPump> input;
    if (s.console.input_fd >= 0)
        input.emplace(s.serial, s.console.input_fd,
                      devices::SerialInputPump::Options{.escape = s.console.escape, .on_quit = [&s] {
                                                            s.control.request_stop(
                                                                0, "the user quit with Ctrl-A x");
                                                        }});
    // Wait for the guest to end the VM: bounded by `timeout`, waking every stats interval to report.
    const auto started = std::chrono::steady_clock::now();
    bool timed_out = false;
    const bool periodic = s.trace.kernel_stats && s.trace.stats_interval.count() > 0 && s.trace.on_interval;
    while (timeout.count() > 0 || periodic) {
        auto wait = periodic ? s.trace.stats_interval : timeout;
        if (timeout.count() > 0) {
            const auto left = timeout - std::chrono::duration_cast<std::chrono::milliseconds>(
                                            std::chrono::steady_clock::now() - started);
            if (left.count() <= 0) {
                timed_out = true;
                s.control.request_stop(
                    124, fmt::format("timed out after {} ms; the guest did not end the VM", timeout.count()));
                break;
            }
            wait = std::min(wait, left);
        }
        if (s.control.wait_for_stop(wait)) break;
        if (periodic) s.trace.on_interval(kernel_stats.interval_line());
    }
    for (auto& vcpu : s.vcpus)
        vcpu->join();
    input.reset();
    // Where a wedged guest was: each vCPU's instruction pointer, readable now that its thread has left
    // KVM_RUN (an application processor Linux never started reads as the reset vector's 0xfff0).
    std::string where;
    if (timed_out)
        for (auto& vcpu : s.vcpus) {
            try {
                where += fmt::format("{}vCPU {} at rip {:#x}", where.empty() ? "" : ", ", vcpu->fd().id(),
                                     vcpu->fd().regs().rip);
            } catch (const SystemError& error) {
                where +=
                    fmt::format("{}vCPU {}: {}", where.empty() ? "" : ", ", vcpu->fd().id(), error.what());
            }
        }
    report.end_us = microseconds_since_process_start();
    if (tracepoint) {
        tracepoint->stop(); // delivers what the pipe still holds; no callback after this
        report.kvm_exits = std::move(kvm_exits);
    }
    if (s.trace.kernel_stats) kernel_stats.finish(report);
    if (s.trace.kvm_exit_tracepoint && !report.kvm_exits && report.kvm_exits_note.empty())
        report.kvm_exits_note = "the tracepoint was not started";
    report.sites = s.sites;
    if (s.trace.counters) {
        std::vector<const ExitStats*> per_vcpu;
        for (auto& vcpu : s.vcpus)
            per_vcpu.push_back(vcpu->exit_stats());
        report.exit_stats = merge_exit_stats(per_vcpu, s.sites->size());
    }
    if (!s.trace.timeline_path.empty()) write_timeline(s, report);
    {
        std::lock_guard lock(s.output_mutex);
        s.tap.flush();
        report.results = s.results;
    }
    report.exit_status = s.control.status();
    report.stop_reason = s.control.reason();
    if (!where.empty() && report.exit_status == 124) report.stop_reason += " (" + where + ")";
    if (std::lock_guard lock(s.output_mutex); s.kernel_panic) {
        // panic=-1 makes the kernel reboot, which ends the run with status 0: report the panic instead.
        report.stop_reason =
            fmt::format("the guest kernel panicked (\"{}\"), then: {}", *s.kernel_panic, report.stop_reason);
        if (report.exit_status == 0) report.exit_status = kKernelPanicStatus;
    }
    for (auto& vcpu : s.vcpus)
        report.exit_counts.push_back(vcpu->exit_counts());
    report.unclaimed_pio = s.unclaimed.pio.load();
    report.unclaimed_mmio = s.unclaimed.mmio.load();
    report.achieved_backing = describe_achieved_backing(s.config.backing, s.config.memory);
    for (const auto& mark : s.boot_marker.marks())
        if (mark.value == 1 && report.init_marker_us < 0)
            report.init_marker_us = microseconds_since(mark.when);
    return report;
}

} // namespace vmmlab
