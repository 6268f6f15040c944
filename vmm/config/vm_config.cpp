#include "config/vm_config.hpp"

#include <algorithm>
#include <charconv>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace vmmlab {

namespace {
using std::unexpected;

std::expected<std::uint64_t, std::string> parse_number(std::string_view text) {
    std::uint64_t value = 0;
    auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (error != std::errc{} || end != text.data() + text.size() || text.empty())
        return unexpected(fmt::format("'{}' is not a number", text));
    return value;
}

std::vector<std::string_view> split(std::string_view text, char separator) {
    std::vector<std::string_view> parts;
    while (true) {
        auto at = text.find(separator);
        parts.push_back(text.substr(0, at));
        if (at == std::string_view::npos) return parts;
        text.remove_prefix(at + 1);
    }
}

template <typename T>
std::expected<T, std::string> with_key(std::string_view key, std::expected<T, std::string> result) {
    if (!result) return unexpected(fmt::format("{}: {}", key, result.error()));
    return result;
}
} // namespace

std::expected<std::uint64_t, std::string> parse_size(std::string_view text) {
    std::uint64_t shift = 0;
    if (!text.empty()) {
        switch (text.back()) {
        case 'K':
        case 'k':
            shift = 10;
            break;
        case 'M':
        case 'm':
            shift = 20;
            break;
        case 'G':
        case 'g':
            shift = 30;
            break;
        case 'T':
        case 't':
            shift = 40;
            break;
        default:
            break;
        }
    }
    auto number = parse_number(shift != 0 ? text.substr(0, text.size() - 1) : text);
    if (!number || (*number << shift) >> shift != *number)
        return unexpected(fmt::format("'{}' is not a size (use e.g. 256M or 2G)", text));
    return *number << shift;
}

std::expected<Backing, std::string> parse_backing(std::string_view text) {
    for (auto backing : {Backing::Anonymous4K, Backing::Thp, Backing::Hugetlb2M, Backing::Hugetlb1G})
        if (text == to_string(backing)) return backing;
    return unexpected(fmt::format("'{}' is not a backing (4k, thp, 2m, 1g)", text));
}

std::expected<PageSize, std::string> parse_guest_page(std::string_view text) {
    for (auto size : {PageSize::k4K, PageSize::k2M, PageSize::k1G})
        if (text == to_string(size)) return size;
    return unexpected(fmt::format("'{}' is not a guest page size (4k, 2m, 1g)", text));
}

std::expected<std::vector<unsigned>, std::string> parse_cpu_list(std::string_view text) {
    std::vector<unsigned> cpus;
    if (text == "none" || text.empty()) return cpus;
    for (auto part : split(text, ',')) {
        auto dash = part.find('-');
        auto first = parse_number(part.substr(0, dash));
        auto last = dash == std::string_view::npos ? first : parse_number(part.substr(dash + 1));
        if (!first || !last || *last < *first || *last > 4095)
            return unexpected(fmt::format("'{}' is not a CPU list (e.g. 0,2-3 or none)", text));
        for (auto cpu = *first; cpu <= *last; ++cpu)
            cpus.push_back(static_cast<unsigned>(cpu));
    }
    return cpus;
}

std::expected<HaltPoll, std::string> parse_halt_poll(std::string_view text) {
    if (text == "default") return HaltPoll{};
    if (text == "off") return HaltPoll{HaltPoll::Mode::Off, 0};
    std::string_view digits = text.ends_with("ns") ? text.substr(0, text.size() - 2) : text;
    auto number = parse_number(digits);
    if (!number || *number > 0xffffffffULL)
        return unexpected(
            fmt::format("'{}' is not a halt-poll setting (default, off, or nanoseconds)", text));
    return HaltPoll{HaltPoll::Mode::Nanoseconds, *number};
}

std::expected<DisabledExits, std::string> parse_disabled_exits(std::string_view text) {
    DisabledExits exits;
    if (text == "none" || text.empty()) return exits;
    for (auto part : split(text, ',')) {
        if (part == "hlt")
            exits.hlt = true;
        else if (part == "pause")
            exits.pause = true;
        else if (part == "mwait")
            exits.mwait = true;
        else
            return unexpected(fmt::format("'{}' is not an exit kind (hlt, pause, mwait, or none)", part));
    }
    return exits;
}

std::expected<x86::CpuModel, std::string> parse_cpu_model(std::string_view text) {
    if (text == "host") return x86::CpuModel::HostPassthrough;
    if (text == "minimal") return x86::CpuModel::Minimal;
    return unexpected(fmt::format("'{}' is not a CPU model (host, minimal)", text));
}

std::expected<DiskConfig, std::string> parse_disk(std::string_view text) {
    DiskConfig disk;
    bool has_path = false, seen_readonly = false, seen_direct = false, seen_engine = false;
    auto on_off = [](std::string_view key, std::string_view value) -> std::expected<bool, std::string> {
        if (value == "on") return true;
        if (value == "off") return false;
        return unexpected(fmt::format("{}='{}' is not on or off", key, value));
    };
    for (std::string_view item : split(text, ',')) {
        auto equals = item.find('=');
        if (equals == std::string_view::npos)
            return unexpected(fmt::format("'{}' is not KEY=VALUE (path, readonly, direct, engine)", item));
        std::string_view key = item.substr(0, equals), value = item.substr(equals + 1);
        auto once = [&](bool& seen) -> std::expected<void, std::string> {
            if (seen) return unexpected(fmt::format("{} given twice", key));
            seen = true;
            return {};
        };
        if (key == "path") {
            if (auto ok = once(has_path); !ok) return unexpected(ok.error());
            if (value.empty()) return unexpected("path= is empty; name the image file");
            disk.path = value;
        } else if (key == "readonly" || key == "direct") {
            if (auto ok = once(key == "readonly" ? seen_readonly : seen_direct); !ok)
                return unexpected(ok.error());
            auto flag = on_off(key, value);
            if (!flag) return unexpected(flag.error());
            (key == "readonly" ? disk.readonly : disk.direct) = *flag;
        } else if (key == "engine") {
            if (auto ok = once(seen_engine); !ok) return unexpected(ok.error());
            if (value == "sync")
                disk.engine = virtio::IoEngineKind::Sync;
            else if (value == "threads")
                disk.engine = virtio::IoEngineKind::Threads;
            else if (value == "uring" || value == "io_uring")
                disk.engine = virtio::IoEngineKind::IoUring;
            else
                return unexpected(
                    fmt::format("engine='{}' is not an I/O engine (sync, threads, uring)", value));
        } else {
            return unexpected(fmt::format("unknown key '{}' (path, readonly, direct, engine)", key));
        }
    }
    if (!has_path) return unexpected(fmt::format("'{}' has no path=IMG", text));
    return disk;
}

std::string to_string(const DiskConfig& disk) {
    std::string_view engine = disk.engine == virtio::IoEngineKind::Threads   ? "threads"
                              : disk.engine == virtio::IoEngineKind::IoUring ? "uring"
                                                                             : "sync";
    return fmt::format("path={},readonly={},direct={},engine={}", disk.path, disk.readonly ? "on" : "off",
                       disk.direct ? "on" : "off", engine);
}

std::expected<IoNotify, std::string> parse_io_notify(std::string_view text) {
    if (text == "exit") return IoNotify::Exit;
    if (text == "ioeventfd") return IoNotify::Ioeventfd;
    return unexpected(fmt::format("'{}' is not a notification path (exit, ioeventfd)", text));
}

std::expected<IoIrq, std::string> parse_io_irq(std::string_view text) {
    if (text == "userspace") return IoIrq::Userspace;
    if (text == "irqfd") return IoIrq::Irqfd;
    return unexpected(fmt::format("'{}' is not an interrupt path (userspace, irqfd)", text));
}

std::expected<bool, std::string> parse_io_thread(std::string_view text) {
    if (text == "on") return true;
    if (text == "off") return false;
    return unexpected(fmt::format("'{}' is not on or off", text));
}

std::string to_string(IoNotify notify) {
    return notify == IoNotify::Ioeventfd ? "ioeventfd" : "exit";
}

std::string to_string(IoIrq irq) {
    return irq == IoIrq::Irqfd ? "irqfd" : "userspace";
}

std::string to_string(PageSize size) {
    switch (size) {
    case PageSize::k2M:
        return "2m";
    case PageSize::k1G:
        return "1g";
    case PageSize::k4K:
        break;
    }
    return "4k";
}

std::string to_string(const HaltPoll& halt_poll) {
    switch (halt_poll.mode) {
    case HaltPoll::Mode::Off:
        return "off";
    case HaltPoll::Mode::Nanoseconds:
        return std::to_string(halt_poll.nanoseconds);
    case HaltPoll::Mode::KernelDefault:
        break;
    }
    return "default";
}

std::string to_string(const DisabledExits& exits) {
    std::vector<std::string_view> names;
    if (exits.hlt) names.push_back("hlt");
    if (exits.pause) names.push_back("pause");
    if (exits.mwait) names.push_back("mwait");
    return names.empty() ? "none" : fmt::format("{}", fmt::join(names, ","));
}

std::string to_string(x86::CpuModel model) {
    return model == x86::CpuModel::HostPassthrough ? "host" : "minimal";
}

std::expected<VmConfig, std::string> profile_config(std::string_view name, unsigned cpus,
                                                    unsigned host_cpus) {
    VmConfig config;
    config.cpus = cpus;
    if (name == "untuned") {
        config.profile = "untuned"; // every knob at the value a default KVM set-up has
        return config;
    }
    if (name != "tuned")
        return unexpected(fmt::format("profile: '{}' is not a profile (untuned, tuned)", name));
    // The tuning that mattered in Felter et al. 2014: pinning, the host's cache topology, large pages.
    config.profile = "tuned";
    config.cpu_model = x86::CpuModel::HostPassthrough;
    config.backing = Backing::Thp;
    config.prefault = true;
    config.guest_page = PageSize::k2M;
    // The virtio I/O path without userspace on the way: kicks by ioeventfd, interrupts by irqfd, the
    // device's work on its own thread.
    config.io_notify = IoNotify::Ioeventfd;
    config.io_irq = IoIrq::Irqfd;
    config.io_thread = true;
    for (unsigned i = 0; i < cpus; ++i)
        config.pin.push_back(host_cpus == 0 ? i : i % host_cpus);
    return config;
}

std::expected<VmConfig, std::string> apply_json(VmConfig config, const nlohmann::json& json,
                                                unsigned host_cpus) {
    if (!json.is_object()) return unexpected("config: the top level must be a JSON object");
    // A profile names the starting values; the file's other keys override it whatever their order.
    if (auto profile = json.find("profile"); profile != json.end()) {
        if (!profile->is_string()) return unexpected("config: profile: must be a string");
        auto cpus = json.value("cpus", nlohmann::json(config.cpus));
        auto base = profile_config(profile->get<std::string>(),
                                   cpus.is_number_unsigned() ? cpus.get<unsigned>() : 1, host_cpus);
        if (!base) return unexpected("config: " + base.error());
        config = *base;
    }
    for (const auto& [key, value] : json.items()) {
        // Every knob accepts the same text as its command-line flag; numbers are allowed where natural.
        const std::string text = value.is_string() ? value.get<std::string>() : value.dump();
        auto fail = [&](const std::string& why) {
            return unexpected(fmt::format("config: {}: {}", key, why));
        };
        if (key == "profile") {
            continue; // applied first, above
        } else if (key == "cpus") {
            if (!value.is_number_unsigned() || value.get<std::uint64_t>() == 0 ||
                value.get<std::uint64_t>() > 288)
                return fail(fmt::format("'{}' is not a vCPU count (1 to 288)", text));
            config.cpus = value.get<unsigned>();
        } else if (key == "memory") {
            auto size = value.is_number_unsigned()
                            ? std::expected<std::uint64_t, std::string>(value.get<std::uint64_t>())
                            : parse_size(text);
            if (!size) return fail(size.error());
            config.memory = *size;
        } else if (key == "backing") {
            auto backing = parse_backing(text);
            if (!backing) return fail(backing.error());
            config.backing = *backing;
        } else if (key == "prefault") {
            if (!value.is_boolean()) return fail(fmt::format("'{}' is not true or false", text));
            config.prefault = value.get<bool>();
        } else if (key == "guest_page") {
            auto page = parse_guest_page(text);
            if (!page) return fail(page.error());
            config.guest_page = *page;
        } else if (key == "pin") {
            std::string list = text;
            if (value.is_array()) {
                list.clear();
                for (const auto& cpu : value) {
                    if (!cpu.is_number_unsigned()) return fail(fmt::format("'{}' is not a CPU list", text));
                    list += (list.empty() ? "" : ",") + cpu.dump();
                }
            }
            auto cpus = parse_cpu_list(list);
            if (!cpus) return fail(cpus.error());
            config.pin = *cpus;
        } else if (key == "halt_poll") {
            auto halt_poll = parse_halt_poll(text);
            if (!halt_poll) return fail(halt_poll.error());
            config.halt_poll = *halt_poll;
        } else if (key == "disable_exits") {
            auto exits = parse_disabled_exits(text);
            if (!exits) return fail(exits.error());
            config.disable_exits = *exits;
        } else if (key == "io_notify") {
            auto notify = parse_io_notify(text);
            if (!notify) return fail(notify.error());
            config.io_notify = *notify;
        } else if (key == "io_irq") {
            auto irq = parse_io_irq(text);
            if (!irq) return fail(irq.error());
            config.io_irq = *irq;
        } else if (key == "io_thread") {
            auto thread = value.is_boolean() ? std::expected<bool, std::string>(value.get<bool>())
                                             : parse_io_thread(text);
            if (!thread) return fail(thread.error());
            config.io_thread = *thread;
        } else if (key == "cpu_model") {
            auto model = parse_cpu_model(text);
            if (!model) return fail(model.error());
            config.cpu_model = *model;
        } else if (key == "guest_cmdline") {
            if (!value.is_string()) return fail("must be a string");
            config.guest_cmdline = text;
        } else if (key == "kernel" || key == "initrd") {
            if (!value.is_string()) return fail("must be a string (a file path, or empty for none)");
            (key == "kernel" ? config.kernel : config.initrd) = text;
        } else if (key == "kernel_cmdline") {
            if (!value.is_string()) return fail("must be a string");
            if (text.find('\0') != std::string::npos || text.find('\n') != std::string::npos)
                return fail("must be one line without NUL bytes");
            config.kernel_cmdline = text;
        } else if (key == "disks") {
            // An array of disks, each the --disk text or an object of the same keys.
            if (!value.is_array()) return fail("must be an array of disks");
            std::vector<DiskConfig> disks;
            for (const auto& item : value) {
                std::string disk_text;
                if (item.is_string()) {
                    disk_text = item.get<std::string>();
                } else if (item.is_object()) {
                    for (const auto& [disk_key, disk_value] : item.items()) {
                        std::string field = disk_value.is_string() ? disk_value.get<std::string>()
                                            : disk_value.is_boolean()
                                                ? (disk_value.get<bool>() ? "on" : "off")
                                                : disk_value.dump();
                        disk_text += (disk_text.empty() ? "" : ",") + disk_key + "=" + field;
                    }
                } else {
                    return fail(fmt::format("'{}' is not a disk (a string or an object)", item.dump()));
                }
                auto disk = parse_disk(disk_text);
                if (!disk) return fail(disk.error());
                disks.push_back(*disk);
            }
            config.disks = std::move(disks);
        } else {
            return unexpected(fmt::format("config: unknown key '{}'", key));
        }
    }
    return config;
}

nlohmann::json to_json(const VmConfig& config) {
    nlohmann::json disks = nlohmann::json::array();
    for (const auto& disk : config.disks) {
        auto text = to_string(disk);
        auto engine = text.substr(text.rfind('=') + 1);
        disks.push_back(
            {{"path", disk.path}, {"readonly", disk.readonly}, {"direct", disk.direct}, {"engine", engine}});
    }
    return {
        {"profile", config.profile},
        {"cpus", config.cpus},
        {"memory", config.memory},
        {"backing", std::string(to_string(config.backing))},
        {"prefault", config.prefault},
        {"guest_page", to_string(config.guest_page)},
        {"pin", config.pin},
        {"halt_poll", to_string(config.halt_poll)},
        {"disable_exits", to_string(config.disable_exits)},
        {"cpu_model", to_string(config.cpu_model)},
        {"guest_cmdline", config.guest_cmdline},
        {"kernel", config.kernel},
        {"initrd", config.initrd},
        {"kernel_cmdline", config.kernel_cmdline},
        {"disks", disks},
        {"io_notify", to_string(config.io_notify)},
        {"io_irq", to_string(config.io_irq)},
        {"io_thread", config.io_thread ? "on" : "off"},
    };
}

std::expected<void, std::string> validate(const VmConfig& config, bool host_has_pdpe1gb) {
    if (config.cpus == 0) return unexpected("cpus: at least one vCPU");
    if (config.memory < (16ULL << 20) || config.memory % 4096 != 0)
        return unexpected(
            fmt::format("memory: {} bytes; need at least 16M, in whole 4K pages", config.memory));
    if (!config.pin.empty() && config.pin.size() != config.cpus)
        return unexpected(fmt::format("pin: {} host CPUs listed for {} vCPUs; list one per vCPU",
                                      config.pin.size(), config.cpus));
    if (config.disable_exits.any() && config.pin.empty())
        return unexpected(
            "disable-exits: refused without --pin: a vCPU that never exits on HLT/PAUSE must own its "
            "host CPU");
    if (config.guest_page == PageSize::k1G && !host_has_pdpe1gb)
        return unexpected("guest-page: 1g needs 1 GiB page support (pdpe1gb), which this CPU lacks");
    if (config.io_notify == IoNotify::Ioeventfd && !config.io_thread)
        return unexpected("io-notify: ioeventfd needs --io-thread on (the I/O thread reads the eventfds)");
    if (!config.boots_linux() && !config.initrd.empty())
        return unexpected("initrd: needs a kernel to go with it (--kernel)");
    if (!config.boots_linux() && config.kernel_cmdline != kDefaultKernelCmdline)
        return unexpected(
            "cmdline: is the Linux kernel's command line and needs --kernel (the tiny guest's is "
            "--guest-cmdline)");
    return {};
}

std::string describe(const VmConfig& config) {
    std::string pin = config.pin.empty() ? "none" : fmt::format("{}", fmt::join(config.pin, ","));
    // The guest: the tiny guest's workload, or the Linux kernel, initrd and command line.
    std::string guest = fmt::format("guest-cmdline \"{}\"", config.guest_cmdline);
    if (config.boots_linux())
        guest = fmt::format("kernel {} | initrd {} | cmdline \"{}\"", config.kernel,
                            config.initrd.empty() ? "none" : config.initrd, config.kernel_cmdline);
    for (const auto& disk : config.disks)
        guest += fmt::format(" | disk {}", to_string(disk));
    return fmt::format("profile {} | cpus {} | memory {} MiB | backing {}{} | guest-page {} | pin {} | "
                       "halt-poll {} | disable-exits {} | cpu-model {} | io-notify {} | io-irq {} | "
                       "io-thread {} | {}",
                       config.profile, config.cpus, config.memory >> 20, to_string(config.backing),
                       config.prefault ? " (prefault)" : "", to_string(config.guest_page), pin,
                       to_string(config.halt_poll), to_string(config.disable_exits),
                       to_string(config.cpu_model), to_string(config.io_notify), to_string(config.io_irq),
                       config.io_thread ? "on" : "off", guest);
}

} // namespace vmmlab
