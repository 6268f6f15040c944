#include "cli/info.hpp"

#include <fmt/format.h>
#include <sys/utsname.h>

#include "arch/x86/host_cpu.hpp"
#include "base/error.hpp"
#include "kvm/capabilities.hpp"
#include "kvm/kvm.hpp"
#include "memory/host_pages.hpp"

namespace vmmlab::cli {

using nlohmann::json;

namespace {
json kvm_section(const std::string& path) {
    json kvm{{"path", path}};
    if (auto reason = kvm::kvm_unusable_reason(path)) {
        kvm["usable"] = false;
        kvm["reason"] = *reason;
        kvm["tests_run_in"] = "sandbox";
        return kvm;
    }
    kvm["usable"] = true;
    kvm["tests_run_in"] = "host";
    try {
        auto system = kvm::KvmSystem::open(path);
        kvm["api_version"] = system.api_version();
        json capabilities = json::array();
        for (const auto& capability : kvm::known_capabilities()) {
            int value = system.check_extension(capability.id);
            capabilities.push_back({{"name", capability.name},
                                    {"value", value},
                                    {"meaning", kvm::describe_capability_value(capability.id, value)},
                                    {"needed_for", capability.needed_for},
                                    {"required", capability.required}});
        }
        kvm["capabilities"] = capabilities;
    } catch (const SystemError& error) {
        kvm["usable"] = false;
        kvm["reason"] = error.what();
    }
    return kvm;
}
} // namespace

json gather_info(const InfoOptions& options) {
    json info;
    utsname host{};
    ::uname(&host);
    auto cpu = x86::read_host_cpu();
    info["host"] = {{"kernel", host.release},   {"cpu", cpu.brand}, {"vendor", cpu.vendor},
                    {"cpus", cpu.logical_cpus}, {"vmx", cpu.vmx},   {"svm", cpu.svm},
                    {"pdpe1gb", cpu.pdpe1gb}};
    info["kvm"] = kvm_section(options.kvm_path);
    json pools = json::array();
    for (const auto& pool : read_hugepage_pools(options.hugepages_root))
        pools.push_back({{"page_size", format_page_size(pool.page_size)},
                         {"total", pool.total},
                         {"free", pool.free},
                         {"reserved", pool.reserved}});
    info["hugepages"] = pools;
    auto thp = read_thp_mode(options.thp_file);
    info["thp"] = thp ? json(*thp) : json(nullptr);
    return info;
}

std::string render_info(const json& info) {
    std::string out;
    auto line = [&out](std::string_view key, const std::string& value) {
        out += fmt::format("{:<12}{}\n", key, value);
    };
    const auto& host = info.at("host");
    line("host", fmt::format("{} ({} CPUs), Linux {}", host.at("cpu").get<std::string>(),
                             host.at("cpus").get<unsigned>(), host.at("kernel").get<std::string>()));
    line("cpu flags", fmt::format("vmx {} svm {} pdpe1gb {}", host.at("vmx").get<bool>() ? "yes" : "no",
                                  host.at("svm").get<bool>() ? "yes" : "no",
                                  host.at("pdpe1gb").get<bool>() ? "yes" : "no"));
    const auto& kvm = info.at("kvm");
    if (!kvm.at("usable").get<bool>()) {
        line("kvm", fmt::format("not usable: {}", kvm.at("reason").get<std::string>()));
        line("kvm tests", "run in the nested-KVM sandbox (tools/kvm-sandbox), because " +
                              kvm.at("reason").get<std::string>());
    } else {
        line("kvm", fmt::format("{} usable, API version {}", kvm.at("path").get<std::string>(),
                                kvm.at("api_version").get<int>()));
        line("kvm tests", "run directly on this host's /dev/kvm");
        out += "capabilities:\n";
        for (const auto& capability : kvm.at("capabilities"))
            out += fmt::format("  {:<28}{:<20}{}{}\n", capability.at("name").get<std::string>(),
                               capability.at("meaning").get<std::string>(),
                               capability.at("needed_for").get<std::string>(),
                               capability.at("required").get<bool>() ? " (required)" : "");
    }
    const auto& pools = info.at("hugepages");
    if (pools.empty()) line("hugepages", "no hugetlbfs pools");
    for (const auto& pool : pools)
        line("hugepages",
             fmt::format("{} pool: {} total, {} free, {} reserved", pool.at("page_size").get<std::string>(),
                         pool.at("total").get<std::uint64_t>(), pool.at("free").get<std::uint64_t>(),
                         pool.at("reserved").get<std::uint64_t>()));
    line("thp", info.at("thp").is_null() ? "not available" : info.at("thp").get<std::string>());
    return out;
}

} // namespace vmmlab::cli
