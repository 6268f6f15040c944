// Hardware exit reasons as the kernel's kvm:kvm_exit tracepoint reports them (every exit, including the
// ones KVM handles without coming back to userspace), and the parsing of tracefs text lines into counts.
//
// Names are the kernel's own (SVM_EXIT_REASONS / VMX_EXIT_REASONS of the uapi headers <asm/svm.h> and
// <asm/vmx.h>), i.e. exactly what the tracepoint prints: lowercase for SVM ("io", "hlt", "npf",
// "hypercall" for VMMCALL, "DE excp"), uppercase for VMX ("IO_INSTRUCTION", "EPT_VIOLATION"). The two
// sets do not share a name, so a name alone tells the ISA.
//
// A line of /sys/kernel/tracing/trace_pipe for the event looks like (Linux 5.10+; older kernels print
// "reason %s rip 0x%lx info %llx %llx" without the vcpu, newer ones append "requests 0x...")
//   CPU 0/KVM-1234    [001] d..2.  123.456789: kvm_exit: vcpu 0 reason io rip 0xffffffff81001234
//     info1 0x0000000000000070 info2 0x0000000000001001 intr_info 0x00000000 error_code 0x00000000
// An exit code without a name is printed in hex ("reason 0x4e"); a failed VMX entry adds
// "FAILED_VMENTRY" after the name.
#pragma once

#include <cstdint>
#include <expected>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace vmmlab {

enum class HwIsa : std::uint8_t { Svm, Vmx };
const char* hw_isa_name(HwIsa isa); // "svm", "vmx"

struct HwExitReason {
    HwIsa isa;
    std::uint32_t code; // SVM: the exit code (SVM_EXIT_ERR as 0xffffffff); VMX: the basic reason
    std::string_view name;
};

std::span<const HwExitReason> svm_exit_reasons();
std::span<const HwExitReason> vmx_exit_reasons();
// The tracepoint's name for a code (VMX: bits 15..0 are the basic reason), or nothing.
std::optional<std::string_view> hw_exit_reason_name(HwIsa isa, std::uint32_t code);
// The reason with that name, as printed by the tracepoint (case-sensitive), or nothing.
std::optional<HwExitReason> hw_exit_reason_by_name(std::string_view name);

struct KvmExitEvent {
    std::string task;           // "CPU 0/KVM" (the thread's comm; may hold spaces)
    std::uint32_t tid = 0;      // the thread id after the comm
    std::uint32_t host_cpu = 0; // "[001]"
    double timestamp_s = 0;
    std::optional<std::uint32_t> vcpu; // absent on kernels before 5.10
    std::string reason;                // the name ("io", "EPT_VIOLATION"), or the number as printed
    std::optional<HwIsa> isa;          // from the name, or from the caller's hint for a numeric reason
    std::optional<std::uint32_t> code; // when the name is known or the reason is numeric
    bool failed_vmentry = false;
    std::uint64_t rip = 0;
    std::uint64_t info1 = 0, info2 = 0;
    std::uint32_t intr_info = 0, error_code = 0;
};

struct KvmExitParseError {
    enum class Kind {
        NotKvmExit, // another event, a comment ("# tracer: nop"), an empty line
        Malformed,  // a kvm_exit line without a reason or rip, or with fields that are not numbers
    };
    Kind kind;
    std::string message;
};

// Parses one line of tracefs text output (trace or trace_pipe). `isa_hint` names numeric reasons.
std::expected<KvmExitEvent, KvmExitParseError> parse_kvm_exit_line(std::string_view line,
                                                                   std::optional<HwIsa> isa_hint = {});

// Counts kvm_exit lines by reason for a set of thread ids (e.g. a VM's vCPU threads; empty: every
// thread). Not thread-safe: feed it from one thread, read it after that thread has stopped.
class KvmExitCounter {
public:
    explicit KvmExitCounter(std::vector<std::uint32_t> tids = {}, std::optional<HwIsa> isa_hint = {});

    void add_line(std::string_view line);
    void add(const KvmExitEvent& event);

    std::uint64_t total() const noexcept { return total_; }         // counted exits
    std::uint64_t malformed() const noexcept { return malformed_; } // kvm_exit lines that did not parse
    std::uint64_t filtered() const noexcept { return filtered_; }   // exits of other threads
    std::uint64_t count(std::string_view reason) const;
    // Reasons with their counts, most first (ties by name). A numeric reason whose ISA is known by a hint
    // is counted under its name.
    std::vector<std::pair<std::string, std::uint64_t>> by_reason() const;
    // "reason   count   share" table plus a total line.
    std::string format() const;

private:
    std::vector<std::uint32_t> tids_; // sorted
    std::optional<HwIsa> isa_hint_;
    std::map<std::string, std::uint64_t, std::less<>> counts_;
    std::uint64_t total_ = 0;
    std::uint64_t malformed_ = 0;
    std::uint64_t filtered_ = 0;
};

} // namespace vmmlab
