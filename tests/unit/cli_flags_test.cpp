// Knob flags -> VmConfig: profile, then file, then flags; errors name the flag; --variant flag text.
#include <catch2/catch.hpp>

#include "cli/run_command.hpp"

using namespace vmmlab;
using namespace vmmlab::cli;

TEST_CASE("cli: flags override the profile, and the tuned profile pins every vCPU", "[cli]") {
    KnobFlags flags;
    flags.profile = "tuned";
    flags.cpus = 3;
    flags.guest_page = "4k";
    auto config = build_config(flags, 8);
    REQUIRE(config.has_value());
    CHECK(config->cpus == 3);
    CHECK(config->pin == std::vector<unsigned>{0, 1, 2});
    CHECK(config->guest_page == PageSize::k4K); // the flag beats the profile's 2M
    CHECK(config->backing == Backing::Thp);     // the profile's value stays
}

TEST_CASE("cli: a bad flag value is one line naming the flag", "[cli]") {
    KnobFlags flags;
    flags.guest_page = "3k";
    auto config = build_config(flags, 2);
    REQUIRE_FALSE(config.has_value());
    CHECK_THAT(config.error(), Catch::StartsWith("--guest-page"));
    CHECK(config.error().find('\n') == std::string::npos);

    flags = {};
    flags.profile = "fast";
    REQUIRE_FALSE(build_config(flags, 2).has_value());
    CHECK_THAT(build_config(flags, 2).error(), Catch::Contains("'fast' is not a profile"));
}

TEST_CASE("cli: variant flag text is parsed like the command line", "[cli]") {
    KnobFlags base;
    base.memory = "512M";
    auto variant = apply_flag_text(base, "--guest-page 2m --backing=thp --prefault");
    REQUIRE(variant.has_value());
    CHECK(variant->guest_page == "2m");
    CHECK(variant->backing == "thp");
    CHECK(variant->prefault);
    CHECK(variant->memory == "512M"); // from the base

    auto bad = apply_flag_text(base, "--guest-page");
    REQUIRE_FALSE(bad.has_value());
    CHECK_THAT(bad.error(), Catch::Contains("--guest-page"));
    CHECK_FALSE(apply_flag_text(base, "--no-such-knob 1").has_value());
}
