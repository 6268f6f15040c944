#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include <sys/stat.h>
#include <unistd.h>

#include "base/error.hpp"
#include "trace/hw_exit_reasons.hpp"
#include "trace/tracefs.hpp"

using namespace vmmlab;
namespace fs = std::filesystem;

namespace {

// Lines as Linux 6.1 prints them in trace_pipe, on an AMD (SVM) and an Intel (VMX) host.
constexpr const char* kSvmIo =
    "       CPU 0/KVM-4242    [003] d..1.  5123.456789: kvm_exit: vcpu 0 reason io rip 0xffffffff81001234 "
    "info1 0x00000000003f8210 info2 0xffffffff81001236 intr_info 0x00000000 error_code 0x00000000";
constexpr const char* kSvmNpf =
    "       CPU 1/KVM-4243    [005] d..1.  5123.460001: kvm_exit: vcpu 1 reason npf rip 0xffffffff8100abcd "
    "info1 0x0000000100000006 info2 0x00000000fee000b0 intr_info 0x00000000 error_code 0x00000000";
constexpr const char* kVmxEpt =
    "           <...>-17725   [012] d..2. 1084311.637870: kvm_exit: vcpu 1 reason EPT_VIOLATION rip "
    "0xffffffffa1a4c5e4 info1 0x0000000000000181 info2 0x0000000000000000 intr_info 0x00000000 error_code "
    "0x00000000";
constexpr const char* kVmxIoWithRequests =
    " CPU 2/KVM-17726   [001] d..2. 1084311.700000: kvm_exit: vcpu 2 reason IO_INSTRUCTION rip 0xfff0 info1 "
    "0x0000000003f80000 info2 0x0000000000000000 intr_info 0x00000000 error_code 0x00000000 requests "
    "0x0000000000000000";

std::string slurp(const fs::path& path) {
    std::ifstream file(path);
    std::stringstream text;
    text << file.rdbuf();
    return text.str();
}

// A directory shaped like tracefs, with regular files in place of the control files.
struct FakeTracefs {
    fs::path root = fs::temp_directory_path() / ("vmmlab-tracefs-" + std::to_string(::getpid()));
    explicit FakeTracefs(const std::string& pipe_content) {
        fs::create_directories(root / "events/kvm/kvm_exit");
        std::ofstream(root / "events/kvm/kvm_exit/enable") << "0\n";
        std::ofstream(root / "set_event_pid") << "99\n100\n";
        std::ofstream(root / "tracing_on") << "0\n";
        std::ofstream(root / "trace_pipe") << pipe_content;
    }
    ~FakeTracefs() { fs::remove_all(root); }
};

} // namespace

TEST_CASE("hw exits: SVM and VMX tables carry the kernel's names", "[trace]") {
    CHECK(hw_exit_reason_name(HwIsa::Svm, 0x07b) == "io");
    CHECK(hw_exit_reason_name(HwIsa::Svm, 0x078) == "hlt");
    CHECK(hw_exit_reason_name(HwIsa::Svm, 0x072) == "cpuid");
    CHECK(hw_exit_reason_name(HwIsa::Svm, 0x400) == "npf");
    CHECK(hw_exit_reason_name(HwIsa::Svm, 0x060) == "interrupt");
    CHECK(hw_exit_reason_name(HwIsa::Svm, 0x081) == "hypercall");
    CHECK(hw_exit_reason_name(HwIsa::Svm, 0x07c) == "msr");
    CHECK(hw_exit_reason_name(HwIsa::Svm, 0x04e) == "PF excp");
    CHECK(hw_exit_reason_name(HwIsa::Svm, 0xffff'ffff) == "invalid_guest_state");
    CHECK_FALSE(hw_exit_reason_name(HwIsa::Svm, 0x3ff).has_value());

    CHECK(hw_exit_reason_name(HwIsa::Vmx, 0) == "EXCEPTION_NMI");
    CHECK(hw_exit_reason_name(HwIsa::Vmx, 1) == "EXTERNAL_INTERRUPT");
    CHECK(hw_exit_reason_name(HwIsa::Vmx, 10) == "CPUID");
    CHECK(hw_exit_reason_name(HwIsa::Vmx, 12) == "HLT");
    CHECK(hw_exit_reason_name(HwIsa::Vmx, 18) == "VMCALL");
    CHECK(hw_exit_reason_name(HwIsa::Vmx, 30) == "IO_INSTRUCTION");
    CHECK(hw_exit_reason_name(HwIsa::Vmx, 48) == "EPT_VIOLATION");
    CHECK(hw_exit_reason_name(HwIsa::Vmx, 49) == "EPT_MISCONFIG");
    CHECK(hw_exit_reason_name(HwIsa::Vmx, 0x8000'0021) == "INVALID_STATE"); // basic reason of a failed entry
    CHECK_FALSE(hw_exit_reason_name(HwIsa::Vmx, 4000).has_value());

    CHECK(svm_exit_reasons().size() > 90);
    CHECK(vmx_exit_reasons().size() > 60);
    const auto io = hw_exit_reason_by_name("IO_INSTRUCTION");
    REQUIRE(io.has_value());
    CHECK(io->isa == HwIsa::Vmx);
    CHECK(io->code == 30);
    CHECK(hw_exit_reason_by_name("hlt")->isa == HwIsa::Svm);
    CHECK(hw_exit_reason_by_name("HLT")->isa == HwIsa::Vmx);
    CHECK_FALSE(hw_exit_reason_by_name("Hlt").has_value());
    // No name is in both tables, so a name tells the ISA.
    for (const auto& svm : svm_exit_reasons())
        for (const auto& vmx : vmx_exit_reasons())
            REQUIRE(svm.name != vmx.name);
}

TEST_CASE("hw exits: tracefs kvm_exit lines of SVM and VMX hosts parse", "[trace]") {
    const auto io = parse_kvm_exit_line(kSvmIo);
    REQUIRE(io.has_value());
    CHECK(io->task == "CPU 0/KVM");
    CHECK(io->tid == 4242);
    CHECK(io->host_cpu == 3);
    CHECK(io->timestamp_s == Approx(5123.456789));
    CHECK(io->vcpu == 0u);
    CHECK(io->reason == "io");
    CHECK(io->isa == HwIsa::Svm);
    CHECK(io->code == 0x7bu);
    CHECK(io->rip == 0xffffffff81001234);
    CHECK(io->info1 == 0x3f8210);
    CHECK(io->info2 == 0xffffffff81001236);

    const auto npf = parse_kvm_exit_line(kSvmNpf);
    REQUIRE(npf.has_value());
    CHECK(npf->code == 0x400u);
    CHECK(npf->vcpu == 1u);
    CHECK(npf->info2 == 0xfee000b0);

    const auto ept = parse_kvm_exit_line(kVmxEpt);
    REQUIRE(ept.has_value());
    CHECK(ept->task == "<...>");
    CHECK(ept->tid == 17725);
    CHECK(ept->host_cpu == 12);
    CHECK(ept->isa == HwIsa::Vmx);
    CHECK(ept->code == 48u);
    CHECK(ept->info1 == 0x181);

    const auto requests = parse_kvm_exit_line(kVmxIoWithRequests);
    REQUIRE(requests.has_value());
    CHECK(requests->reason == "IO_INSTRUCTION");
    CHECK(requests->rip == 0xfff0);
    CHECK(requests->vcpu == 2u);
}

TEST_CASE("hw exits: older formats, numeric reasons, flags and spaces in names", "[trace]") {
    // Before Linux 5.10: no vcpu, "info %llx %llx" without 0x.
    const auto old = parse_kvm_exit_line(" qemu-system-x86-2345  [001] .... 1234.567890: kvm_exit: reason "
                                         "IO_INSTRUCTION rip 0xffffffff8104b8e6 info 3f80008 0");
    REQUIRE(old.has_value());
    CHECK_FALSE(old->vcpu.has_value());
    CHECK(old->task == "qemu-system-x86");
    CHECK(old->code == 30u);
    CHECK(old->info1 == 0x3f80008);
    CHECK(old->info2 == 0);

    // No flags column, record-tgid column, a reason with a space, a failed VMX entry.
    const auto bare =
        parse_kvm_exit_line("CPU 1/KVM-77 [000] 10.5: kvm_exit: vcpu 1 reason DE excp rip 0x1000 "
                            "info1 0x0 info2 0x0 intr_info 0x0 error_code 0x0");
    REQUIRE(bare.has_value());
    CHECK(bare->tid == 77);
    CHECK(bare->reason == "DE excp");
    CHECK(bare->code == 0x40u);
    const auto tgid =
        parse_kvm_exit_line("CPU 1/KVM-77 (   70) [002] d..1. 10.5: kvm_exit: vcpu 1 reason hlt "
                            "rip 0x1000 info1 0x0 info2 0x0 intr_info 0x0 error_code 0x0");
    REQUIRE(tgid.has_value());
    CHECK(tgid->task == "CPU 1/KVM");
    CHECK(tgid->tid == 77);
    CHECK(tgid->host_cpu == 2);
    const auto failed =
        parse_kvm_exit_line("CPU 0/KVM-5 [000] d..2. 1.0: kvm_exit: vcpu 0 reason INVALID_STATE "
                            "FAILED_VMENTRY rip 0xfff0 info1 0x0 info2 0x0 intr_info 0x0 "
                            "error_code 0x0");
    REQUIRE(failed.has_value());
    CHECK(failed->failed_vmentry);
    CHECK(failed->reason == "INVALID_STATE");
    CHECK(failed->code == 33u);

    // A code the kernel has no name for prints as a number; the hint says which table to use.
    const std::string numeric =
        "CPU 0/KVM-5 [000] d..2. 1.0: kvm_exit: vcpu 0 reason 0x4e rip 0x10 info1 0x0 "
        "info2 0x0 intr_info 0x0 error_code 0x0";
    const auto plain = parse_kvm_exit_line(numeric);
    REQUIRE(plain.has_value());
    CHECK(plain->code == 0x4eu);
    CHECK_FALSE(plain->isa.has_value());
    CHECK(parse_kvm_exit_line(numeric, HwIsa::Svm)->isa == HwIsa::Svm);
}

TEST_CASE("hw exits: other lines and malformed kvm_exit lines are told apart", "[trace]") {
    using Kind = KvmExitParseError::Kind;
    CHECK(parse_kvm_exit_line("# tracer: nop").error().kind == Kind::NotKvmExit);
    CHECK(parse_kvm_exit_line("").error().kind == Kind::NotKvmExit);
    CHECK(parse_kvm_exit_line("CPU 0/KVM-4242 [003] d..1. 5.1: kvm_entry: vcpu 0, rip 0x1234").error().kind ==
          Kind::NotKvmExit);
    const auto no_rip = parse_kvm_exit_line("CPU 0/KVM-1 [003] d..1. 5.1: kvm_exit: vcpu 0 reason io");
    REQUIRE_FALSE(no_rip.has_value());
    CHECK(no_rip.error().kind == Kind::Malformed);
    CHECK(no_rip.error().message == "kvm_exit line without a rip");
    CHECK(parse_kvm_exit_line("CPU 0/KVM-1 [003] d..1. 5.1: kvm_exit: vcpu 0 reason io rip zzz")
              .error()
              .message == "rip 'zzz' is not a number");
    CHECK(parse_kvm_exit_line("CPU 0/KVM-1 [003] d..1. 5.1: kvm_exit: vcpu 0 rip 0x1").error().message ==
          "kvm_exit line without a reason");
    CHECK(
        parse_kvm_exit_line("CPU 0/KVM-1 [003] d..1. xyz: kvm_exit: vcpu 0 reason io rip 0x1").error().kind ==
        Kind::Malformed);
    CHECK(parse_kvm_exit_line("CPU 0/KVM [003] d..1. 5.1: kvm_exit: vcpu 0 reason io rip 0x1").error().kind ==
          Kind::Malformed);
    CHECK(parse_kvm_exit_line(": kvm_exit: reason io rip 0x1").error().kind == Kind::Malformed);
}

TEST_CASE("hw exits: the counter counts by reason for the given threads", "[trace]") {
    KvmExitCounter counter({4242, 4243}, HwIsa::Svm);
    counter.add_line(kSvmIo);
    counter.add_line(kSvmIo);
    counter.add_line(kSvmNpf);
    counter.add_line(kVmxEpt); // thread 17725: not ours
    counter.add_line("# tracer: nop");
    counter.add_line("CPU 0/KVM-4242 [003] d..1. 5.1: kvm_exit: vcpu 0 reason io");
    counter.add_line("CPU 0/KVM-4242 [003] d..1. 5.1: kvm_exit: vcpu 0 reason 0x4e rip 0x1");
    CHECK(counter.total() == 4);
    CHECK(counter.filtered() == 1);
    CHECK(counter.malformed() == 1);
    CHECK(counter.count("io") == 2);
    CHECK(counter.count("npf") == 1);
    CHECK(counter.count("PF excp") == 1); // the numeric reason, named through the hint
    CHECK(counter.count("EPT_VIOLATION") == 0);
    const auto rows = counter.by_reason();
    REQUIRE(rows.size() == 3);
    CHECK(rows[0] == std::pair<std::string, std::uint64_t>{"io", 2});
    const std::string table = counter.format();
    CHECK(table.find("io") != std::string::npos);
    CHECK(table.find("50.0%") != std::string::npos);
    CHECK(table.find("1 kvm_exit lines did not parse") != std::string::npos);

    KvmExitCounter everyone;
    everyone.add_line(kSvmIo);
    everyone.add_line(kVmxEpt);
    CHECK(everyone.total() == 2);
}

TEST_CASE("tracefs: enables kvm_exit for the threads, streams lines, restores on destruction", "[trace]") {
    FakeTracefs tracefs(std::string(kSvmIo) + "\n" + kSvmNpf + "\n" + kVmxEpt);
    std::mutex mutex;
    std::vector<std::string> lines;
    {
        KvmExitTracepoint tracepoint(
            {4242, 4243},
            [&](std::string_view line) {
                std::lock_guard lock(mutex);
                lines.emplace_back(line);
            },
            tracefs.root.string());
        CHECK(tracepoint.root() == tracefs.root.string());
        CHECK(slurp(tracefs.root / "events/kvm/kvm_exit/enable") == "1");
        CHECK(slurp(tracefs.root / "set_event_pid") == "4242 4243");
        CHECK(slurp(tracefs.root / "tracing_on") == "1");
        // The two complete lines arrive while running; the last one (no newline) on stop.
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        for (;;) {
            {
                std::lock_guard lock(mutex);
                if (lines.size() >= 2 || std::chrono::steady_clock::now() > deadline) break;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
    }
    REQUIRE(lines.size() == 3);
    CHECK(lines[0] == kSvmIo);
    CHECK(lines[2] == kVmxEpt);
    CHECK(slurp(tracefs.root / "events/kvm/kvm_exit/enable") == "0");
    CHECK(slurp(tracefs.root / "set_event_pid") == "99 100 ");
    CHECK(slurp(tracefs.root / "tracing_on") == "0");

    KvmExitCounter counter({4242});
    for (const auto& line : lines)
        counter.add_line(line);
    CHECK(counter.count("io") == 1);
}

TEST_CASE("tracefs: absent or unwritable tracefs fails clearly and leaves settings alone", "[trace]") {
    CHECK_THROWS_WITH(
        KvmExitTracepoint(
            {1}, [](std::string_view) {}, "/nonexistent/tracefs"),
        "/nonexistent/tracefs/events/kvm/kvm_exit/enable: No such file or directory (is tracefs "
        "mounted there, and the kvm module loaded?)");

    SECTION("a control file that cannot be used: what was changed before is restored") {
        FakeTracefs tracefs("");
        fs::remove(tracefs.root / "tracing_on");
        fs::create_directory(tracefs.root / "tracing_on"); // reading it fails with EISDIR
        CHECK_THROWS_WITH(KvmExitTracepoint(
                              {1}, [](std::string_view) {}, tracefs.root.string()),
                          Catch::Matchers::StartsWith("reading " + (tracefs.root / "tracing_on").string() +
                                                      ": Is a directory"));
        CHECK(slurp(tracefs.root / "set_event_pid") == "99 100 ");
        CHECK(slurp(tracefs.root / "events/kvm/kvm_exit/enable") == "0");
    }
    SECTION("a read-only control file (only meaningful when not root)") {
        if (::geteuid() == 0) return; // root writes read-only files anyway
        FakeTracefs tracefs("");
        fs::permissions(tracefs.root / "events/kvm/kvm_exit/enable", fs::perms::owner_read);
        CHECK_THROWS_WITH(KvmExitTracepoint(
                              {1}, [](std::string_view) {}, tracefs.root.string()),
                          Catch::Matchers::Contains("events/kvm/kvm_exit/enable: Permission denied (tracing "
                                                    "needs root, or write access to tracefs)"));
        CHECK(slurp(tracefs.root / "set_event_pid") == "99 100 ");
        CHECK(slurp(tracefs.root / "tracing_on") == "0\n");
    }
}
