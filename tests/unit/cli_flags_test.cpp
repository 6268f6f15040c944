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

TEST_CASE("cli: --kernel boots Linux with the host CPU model unless one is named", "[cli]") {
    KnobFlags flags;
    flags.kernel = "/boot/vmlinuz";
    flags.initrd = "initrd.img";
    auto config = build_config(flags, 2);
    REQUIRE(config.has_value());
    CHECK(config->boots_linux());
    CHECK(config->initrd == "initrd.img");
    CHECK(config->kernel_cmdline == kDefaultKernelCmdline);
    CHECK(config->cpu_model == x86::CpuModel::HostPassthrough); // the untuned profile says minimal
    flags.cpu_model = "minimal";
    CHECK(build_config(flags, 2).value().cpu_model == x86::CpuModel::Minimal);

    // The tiny guest keeps the profile's model; an empty --cmdline is a command line of its own.
    CHECK(build_config(KnobFlags{}, 2).value().cpu_model == x86::CpuModel::Minimal);
    flags.kernel_cmdline = "";
    CHECK(build_config(flags, 2).value().kernel_cmdline.empty());

    KnobFlags bad;
    bad.kernel_cmdline = "console=ttyS0\nx";
    CHECK_THAT(build_config(bad, 2).error(), Catch::StartsWith("--cmdline: must be one line"));
}

TEST_CASE("cli: --kernel, --initrd and --cmdline parse on the command line", "[cli]") {
    CLI::App app{"test"};
    KnobFlags flags;
    add_knob_flags(app, flags);
    add_linux_flags(app, flags);
    app.parse("--kernel vmlinuz --initrd initrd.img --cmdline \"console=ttyS0 rdinit=/bin/sh\"", false);
    CHECK(flags.kernel == "vmlinuz");
    CHECK(flags.initrd == "initrd.img");
    REQUIRE(flags.kernel_cmdline.has_value());
    CHECK(*flags.kernel_cmdline == "console=ttyS0 rdinit=/bin/sh");
}

TEST_CASE("cli: --disk is repeatable and its errors are one line naming --disk", "[cli]") {
    KnobFlags flags;
    flags.disks = {"path=a.img", "path=b.img,readonly=on,engine=threads"};
    auto config = build_config(flags, 2);
    REQUIRE(config.has_value());
    REQUIRE(config->disks.size() == 2);
    CHECK(config->disks[0].path == "a.img");
    CHECK(config->disks[1].readonly);
    CHECK(config->disks[1].engine == virtio::IoEngineKind::Threads);

    flags.disks = {"path=a.img,engine=fast"};
    auto bad = build_config(flags, 2);
    REQUIRE_FALSE(bad.has_value());
    CHECK_THAT(bad.error(), Catch::StartsWith("--disk: "));
    CHECK_THAT(bad.error(), Catch::Contains("engine='fast'"));
    CHECK(bad.error().find('\n') == std::string::npos);

    CLI::App app;
    KnobFlags parsed;
    add_linux_flags(app, parsed);
    app.parse(std::vector<std::string>{"path=y.img,direct=on", "--disk", "path=x.img", "--disk"});
    CHECK(parsed.disks == std::vector<std::string>{"path=x.img", "path=y.img,direct=on"});
}
