// `vmmlab info`: what this host offers the knobs (KVM API and capabilities, hugepage pools, THP mode,
// CPU features) and whether kvm tests run directly or in the nested sandbox.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace vmmlab::cli {

struct InfoOptions {
    std::string kvm_path = "/dev/kvm";
    std::string hugepages_root = "/sys/kernel/mm/hugepages";
    std::string thp_file = "/sys/kernel/mm/transparent_hugepage/enabled";
};

// Gathers the report; never throws for a missing /dev/kvm (that is a fact to report).
nlohmann::json gather_info(const InfoOptions& options);
std::string render_info(const nlohmann::json& info);

} // namespace vmmlab::cli
