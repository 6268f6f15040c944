#include <catch2/catch.hpp>

#include "cli/info.hpp"
#include "kvm/capabilities.hpp"
#include "kvm/kvm_uapi.hpp"

using namespace vmmlab;

TEST_CASE("info reports a missing KVM device and says the tests use the sandbox", "[info]") {
    cli::InfoOptions options;
    options.kvm_path = "/nonexistent/kvm";
    options.hugepages_root = "/nonexistent/hugepages";
    options.thp_file = "/nonexistent/thp";
    auto info = cli::gather_info(options);
    CHECK(info["kvm"]["usable"] == false);
    CHECK(info["kvm"]["reason"] == "/nonexistent/kvm absent");
    CHECK(info["kvm"]["tests_run_in"] == "sandbox");
    CHECK(info["hugepages"].empty());
    CHECK(info["thp"].is_null());

    auto text = cli::render_info(info);
    CHECK_THAT(text, Catch::Contains("kvm         not usable: /nonexistent/kvm absent"));
    CHECK_THAT(text, Catch::Contains("nested-KVM sandbox"));
    CHECK_THAT(text, Catch::Contains("no hugetlbfs pools"));
}

TEST_CASE("capability values are described for people", "[info]") {
    CHECK(kvm::describe_capability_value(KVM_CAP_IRQFD, 0) == "no");
    CHECK(kvm::describe_capability_value(KVM_CAP_IRQFD, 1) == "yes");
    CHECK(kvm::describe_capability_value(KVM_CAP_MAX_VCPUS, 710) == "710");
    CHECK(kvm::describe_capability_value(KVM_CAP_X86_DISABLE_EXITS,
                                         KVM_X86_DISABLE_EXITS_HLT | KVM_X86_DISABLE_EXITS_PAUSE) ==
          "yes (hlt,pause)");
}

TEST_CASE("the capabilities vmmlab cannot run without are marked required", "[info]") {
    auto is_required = [](unsigned id) {
        for (const auto& capability : kvm::known_capabilities())
            if (capability.id == id) return capability.required;
        return false;
    };
    CHECK(is_required(KVM_CAP_USER_MEMORY));
    CHECK(is_required(KVM_CAP_IRQCHIP));
    CHECK(is_required(KVM_CAP_IMMEDIATE_EXIT));
    CHECK_FALSE(is_required(KVM_CAP_HALT_POLL)); // a knob: refused when absent, the VM still runs
}
