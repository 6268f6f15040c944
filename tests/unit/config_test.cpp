#include <catch2/catch.hpp>

#include "config/vm_config.hpp"

using namespace vmmlab;
using nlohmann::json;

TEST_CASE("sizes, CPU lists and knob values parse, and bad ones say what is accepted", "[config]") {
    CHECK(parse_size("256M").value() == 256ULL << 20);
    CHECK(parse_size("2G").value() == 2ULL << 30);
    CHECK(parse_size("4096").value() == 4096);
    CHECK(parse_size("12Q").error() == "'12Q' is not a size (use e.g. 256M or 2G)");
    CHECK_FALSE(parse_size("M"));
    CHECK_FALSE(parse_size("99999999999999999T"));
    CHECK(parse_cpu_list("0,2-3").value() == std::vector<unsigned>{0, 2, 3});
    CHECK(parse_cpu_list("none").value().empty());
    CHECK_FALSE(parse_cpu_list("3-1"));
    CHECK_FALSE(parse_cpu_list("a"));
    CHECK(parse_halt_poll("off").value().mode == HaltPoll::Mode::Off);
    CHECK(parse_halt_poll("200000").value().nanoseconds == 200000);
    CHECK(parse_halt_poll("50ns").value().nanoseconds == 50);
    CHECK(parse_halt_poll("fast").error() ==
          "'fast' is not a halt-poll setting (default, off, or nanoseconds)");
    CHECK(parse_disabled_exits("hlt,pause").value() == DisabledExits{true, true, false});
    CHECK(parse_disabled_exits("hlt,nap").error() ==
          "'nap' is not an exit kind (hlt, pause, mwait, or none)");
    CHECK(parse_backing("1g").value() == Backing::Hugetlb1G);
    CHECK(parse_backing("huge").error() == "'huge' is not a backing (4k, thp, 2m, 1g)");
    CHECK(parse_cpu_model("host").value() == x86::CpuModel::HostPassthrough);
    CHECK_FALSE(parse_guest_page("8k"));
}

TEST_CASE("the tuned profile switches the knobs that mattered in the seed study", "[config]") {
    auto untuned = profile_config("untuned", 2, 8).value();
    CHECK(untuned.pin.empty());
    CHECK(untuned.backing == Backing::Anonymous4K);
    CHECK(untuned.cpu_model == x86::CpuModel::Minimal);
    auto tuned = profile_config("tuned", 2, 8).value();
    CHECK(tuned.pin == std::vector<unsigned>{0, 1});
    CHECK(tuned.backing == Backing::Thp);
    CHECK(tuned.guest_page == PageSize::k2M);
    CHECK(tuned.cpu_model == x86::CpuModel::HostPassthrough);
    CHECK(profile_config("tuned", 4, 2).value().pin == std::vector<unsigned>{0, 1, 0, 1});
    CHECK(profile_config("fast", 1, 1).error() == "profile: 'fast' is not a profile (untuned, tuned)");
}

TEST_CASE("a JSON config round-trips and overrides its profile whatever the key order", "[config]") {
    auto config =
        apply_json(VmConfig{}, json::parse(R"({"memory": "512M", "profile": "tuned", "cpus": 2})"), 4);
    REQUIRE(config);
    CHECK(config->profile == "tuned");
    CHECK(config->memory == 512ULL << 20);
    CHECK(config->pin == std::vector<unsigned>{0, 1});
    CHECK(apply_json(VmConfig{}, to_json(*config)).value() == *config);
}

TEST_CASE("malformed JSON configs are refused naming the key", "[config]") {
    CHECK(apply_json({}, json::parse(R"({"cpus": 0})")).error() ==
          "config: cpus: '0' is not a vCPU count (1 to 288)");
    CHECK(apply_json({}, json::parse(R"({"memory": "lots"})")).error() ==
          "config: memory: 'lots' is not a size (use e.g. 256M or 2G)");
    CHECK(apply_json({}, json::parse(R"({"mem": 1})")).error() == "config: unknown key 'mem'");
    CHECK(apply_json({}, json::parse(R"({"prefault": "yes"})")).error() ==
          "config: prefault: 'yes' is not true or false");
    CHECK(apply_json({}, json::parse(R"([1, 2])")).error() == "config: the top level must be a JSON object");
    CHECK(apply_json({}, json::parse(R"({"profile": "x"})")).error() ==
          "config: profile: 'x' is not a profile (untuned, tuned)");
    CHECK(apply_json({}, json::parse(R"({"pin": [0, "a"]})")).error().starts_with("config: pin:"));
}

TEST_CASE("cross-field rules refuse what the host or KVM cannot honour", "[config]") {
    VmConfig config;
    CHECK(validate(config, true));
    config.disable_exits.hlt = true;
    CHECK(validate(config, true).error().starts_with("disable-exits: refused without --pin"));
    config.pin = {0, 1};
    CHECK(validate(config, true).error() == "pin: 2 host CPUs listed for 1 vCPUs; list one per vCPU");
    config.pin = {0};
    CHECK(validate(config, true));
    config.guest_page = PageSize::k1G;
    CHECK(validate(config, false).error() ==
          "guest-page: 1g needs 1 GiB page support (pdpe1gb), which this CPU lacks");
    config.memory = 1 << 20;
    CHECK_FALSE(validate(config, true));
}

TEST_CASE("a Linux guest's kernel, initrd and command line load from JSON and are checked", "[config]") {
    auto config = apply_json(VmConfig{}, json::parse(R"({"kernel": "/boot/vmlinuz", "initrd": "initrd.img",
                                                         "kernel_cmdline": "console=ttyS0 quiet"})"));
    REQUIRE(config);
    CHECK(config->boots_linux());
    CHECK(config->kernel == "/boot/vmlinuz");
    CHECK(config->initrd == "initrd.img");
    CHECK(config->kernel_cmdline == "console=ttyS0 quiet");
    CHECK(validate(*config, true));
    CHECK(apply_json(VmConfig{}, to_json(*config)).value() == *config);
    CHECK_THAT(describe(*config), Catch::Contains("kernel /boot/vmlinuz | initrd initrd.img | cmdline "
                                                  "\"console=ttyS0 quiet\""));

    CHECK_FALSE(VmConfig{}.boots_linux());
    CHECK(VmConfig{}.kernel_cmdline == kDefaultKernelCmdline);
    CHECK_THAT(describe(VmConfig{}), Catch::Contains("guest-cmdline \"hello\""));
    CHECK(apply_json({}, json::parse(R"({"kernel": 7})")).error() ==
          "config: kernel: must be a string (a file path, or empty for none)");
    CHECK(apply_json({}, json::parse(R"({"kernel_cmdline": "a\nb"})")).error() ==
          "config: kernel_cmdline: must be one line without NUL bytes");

    VmConfig tiny;
    tiny.initrd = "initrd.img";
    CHECK(validate(tiny, true).error() == "initrd: needs a kernel to go with it (--kernel)");
    tiny.initrd.clear();
    tiny.kernel_cmdline = "console=ttyS0";
    CHECK(validate(tiny, true)
              .error()
              .starts_with("cmdline: is the Linux kernel's command line and needs --kernel"));
}

TEST_CASE("disks parse from their flag text and from JSON, and bad ones name the key", "[config]") {
    auto disk = parse_disk("path=/tmp/a.img,readonly=on,direct=on,engine=uring");
    REQUIRE(disk.has_value());
    CHECK(disk->path == "/tmp/a.img");
    CHECK(disk->readonly);
    CHECK(disk->direct);
    CHECK(disk->engine == virtio::IoEngineKind::IoUring);
    CHECK(parse_disk(to_string(*disk)) == disk);

    auto plain = parse_disk("path=disk.raw");
    REQUIRE(plain.has_value());
    CHECK_FALSE(plain->readonly);
    CHECK_FALSE(plain->direct);
    CHECK(plain->engine == virtio::IoEngineKind::Sync);
    CHECK(parse_disk("path=x,engine=threads")->engine == virtio::IoEngineKind::Threads);

    CHECK_THAT(parse_disk("readonly=on").error(), Catch::Contains("no path=IMG"));
    CHECK_THAT(parse_disk("disk.raw").error(), Catch::Contains("not KEY=VALUE"));
    CHECK_THAT(parse_disk("path=").error(), Catch::Contains("empty"));
    CHECK_THAT(parse_disk("path=a,readonly=yes").error(), Catch::Contains("readonly='yes' is not on or off"));
    CHECK_THAT(parse_disk("path=a,engine=aio").error(), Catch::Contains("sync, threads, uring"));
    CHECK_THAT(parse_disk("path=a,cache=none").error(), Catch::Contains("unknown key 'cache'"));
    CHECK_THAT(parse_disk("path=a,path=b").error(), Catch::Contains("path given twice"));

    VmConfig config;
    config.disks = {*disk, *plain};
    auto back = apply_json(VmConfig{}, to_json(config));
    REQUIRE(back.has_value());
    CHECK(back->disks == config.disks);
    CHECK_THAT(describe(config), Catch::Contains("disk path=disk.raw,readonly=off"));

    auto mixed = apply_json(
        VmConfig{},
        nlohmann::json::parse(R"({"disks": ["path=a.img", {"path": "b.img", "readonly": true}]})"));
    REQUIRE(mixed.has_value());
    REQUIRE(mixed->disks.size() == 2);
    CHECK(mixed->disks[1].path == "b.img");
    CHECK(mixed->disks[1].readonly);
    CHECK_THAT(apply_json(VmConfig{}, nlohmann::json::parse(R"({"disks": "path=a"})")).error(),
               Catch::StartsWith("config: disks:"));
    CHECK_THAT(
        apply_json(VmConfig{}, nlohmann::json::parse(R"({"disks": [{"path": "a", "direct": "maybe"}]})"))
            .error(),
        Catch::Contains("direct='maybe'"));
}
