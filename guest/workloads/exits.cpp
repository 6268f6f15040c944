// Exit microbenchmarks: the cost of one round trip guest -> hypervisor -> guest for each kind of exit.
#include "guest/workloads/platform.hpp"
#include "guest/workloads/workloads.hpp"

namespace vmmlab::guest {
namespace {

using platform::ExitKind;

struct ExitSpec {
    Text name;
    ExitKind kind;
};

constexpr ExitSpec kExits[] = {
    {"pio", ExitKind::Pio},     {"pio-ioeventfd", ExitKind::PioIoeventfd}, {"mmio", ExitKind::Mmio},
    {"cpuid", ExitKind::Cpuid}, {"vmcall", ExitKind::Hypercall},           {"hlt", ExitKind::Hlt},
};

constexpr uint64_t kDefaultIterations = 100000;
constexpr uint64_t kDefaultHltIterations = 1000;
constexpr uint64_t kDefaultBudgetMs = 10000;
constexpr uint64_t kDefaultTimerTicks = 1000; // 1 us with KVM's default 1 GHz APIC bus

bool measure_one(const ExitSpec& spec, platform::ExitRequest request) {
    request.kind = spec.kind;
    const platform::ExitMeasurement m = platform::measure_exits(request);
    Line line;
    if (!m.supported) {
        line.put(spec.name).put(": not measured: ").put(m.note);
        print_line(line);
        return true;
    }
    const bool hlt = spec.kind == ExitKind::Hlt;
    if (spec.kind == ExitKind::PioIoeventfd) {
        const bool bound = platform::ioeventfd_bound();
        if (!bound) {
            print_text(
                "pio-ioeventfd: the port is not bound to an ioeventfd (BootInfo flags): these exits go to "
                "monitor userspace like pio");
        }
        report(spec.name, "ioeventfd_bound", ResultValue::whole(bound ? 1 : 0), "bool");
    }
    if (m.completed == 0) {
        line.put(spec.name).put(": no round trip completed within the budget");
        print_line(line);
        report(spec.name, hlt ? "wakeups" : "exits", ResultValue::whole(0), "count");
        return false;
    }
    const double cycles = static_cast<double>(m.ticks) / static_cast<double>(m.completed);
    const double ns = cycles * 1e9 / static_cast<double>(platform::tick_hz());
    line.put(spec.name).put(": ").put_u64(m.completed).put(hlt ? " wake-ups" : " round trips").put(", ");
    line.put_fixed(cycles, 1).put(" cycles");
    if (platform::tick_rate_known()) line.put(" (").put_fixed(ns, 1).put(" ns)");
    line.put(" each");
    if (!m.note.empty()) line.put("; ").put(m.note);
    print_line(line);
    if (m.completed < request.iterations) {
        line.clear();
        line.put(spec.name).put(": stopped at the time budget after ").put_u64(m.completed).put(" of ");
        line.put_u64(request.iterations);
        print_line(line);
    }
    if (spec.kind == ExitKind::Hypercall) {
        line.clear();
        line.put(spec.name).put(": the hypervisor answered rax=").put_i64(m.detail);
        print_line(line);
    }
    report(spec.name, hlt ? "wakeups" : "exits", ResultValue::whole(m.completed), "count");
    report(spec.name, hlt ? "cycles_per_wakeup" : "cycles_per_exit", ResultValue::fixed(cycles, 1), "cycles");
    if (platform::tick_rate_known())
        report(spec.name, hlt ? "ns_per_wakeup" : "ns_per_exit", ResultValue::fixed(ns, 1), "ns");
    if (hlt) {
        report(spec.name, "timer_ticks", ResultValue::whole(request.timer_ticks), "ticks");
        // Interrupts the hypervisor delivered between STI and HLT, which the chip never does.
        report(spec.name, "sti_shadow_misses", ResultValue::whole(static_cast<uint64_t>(m.detail)), "count");
    }
    return true;
}

} // namespace

int run_exits(const Args& args) {
    const bool all = args.workload() == Text{"exits"};
    const bool hlt_only = args.workload() == Text{"hlt"};
    constexpr Text kOptions[] = {"iterations", "budget_ms", "timer", "hlt_iterations"};
    if (!args.only(kOptions, all ? 4 : (hlt_only ? 3 : 2))) return kExitUsage;
    uint64_t iterations = 0;
    uint64_t hlt_iterations = 0;
    uint64_t budget_ms = 0;
    uint64_t timer = 0;
    if (!args.count("iterations", hlt_only ? kDefaultHltIterations : kDefaultIterations, iterations) ||
        !args.count("hlt_iterations", kDefaultHltIterations, hlt_iterations) ||
        !args.count("budget_ms", kDefaultBudgetMs, budget_ms) ||
        !args.count("timer", kDefaultTimerTicks, timer))
        return kExitUsage;
    if (iterations == 0 || hlt_iterations == 0 || budget_ms == 0 || timer == 0 || timer > UINT32_MAX) {
        args.error("iterations, hlt_iterations, budget_ms and timer must be above 0 (timer below 2^32)");
        return kExitUsage;
    }
    platform::ExitRequest request;
    request.budget_ticks = budget_ms * (platform::tick_hz() / 1000);
    request.timer_ticks = timer;
    bool ok = true;
    for (const ExitSpec& spec : kExits) {
        if (!all && !(spec.name == args.workload())) continue;
        request.iterations = (all && spec.kind == ExitKind::Hlt) ? hlt_iterations : iterations;
        ok = measure_one(spec, request) && ok;
    }
    return ok ? kExitOk : kExitFailed;
}

} // namespace vmmlab::guest
