// The host side of guest/workloads/platform.hpp, for vmmlab-native and the unit tests: stdout, threads,
// aligned_alloc, and a TSC rate calibrated against CLOCK_MONOTONIC_RAW.
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#include <poll.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#include "guest/workloads/cpu.hpp"
#include "guest/workloads/platform.hpp"
#include "guest/workloads/workloads.hpp"

namespace vmmlab::guest::platform {
namespace {

uint64_t monotonic_ns() {
    timespec now{};
    clock_gettime(CLOCK_MONOTONIC_RAW, &now);
    return static_cast<uint64_t>(now.tv_sec) * 1000000000ULL + static_cast<uint64_t>(now.tv_nsec);
}

// TSC ticks per second over ~50 ms; the kernel's constant_tsc makes this rate fixed.
uint64_t calibrate_tick_hz() {
    const uint64_t ns0 = monotonic_ns();
    const uint64_t tsc0 = read_ticks();
    while (monotonic_ns() - ns0 < 50000000ULL) {
    }
    const uint64_t ns1 = monotonic_ns();
    const uint64_t tsc1 = read_ticks();
    const double hz = static_cast<double>(tsc1 - tsc0) * 1e9 / static_cast<double>(ns1 - ns0);
    return hz < 1.0 ? 1 : static_cast<uint64_t>(hz);
}

unsigned online_cpus() {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) == 0) return static_cast<unsigned>(CPU_COUNT(&set));
    const unsigned n = std::thread::hardware_concurrency();
    return n == 0 ? 1 : n;
}

} // namespace

Text name() {
    return "vmmlab-native";
}

Text cpu_noun() {
    return "CPUs";
}

void write(Text text) {
    std::fwrite(text.data, 1, text.size, stdout);
    if (text.size > 0 && text.data[text.size - 1] == '\n') std::fflush(stdout);
}

int read_byte(uint64_t timeout_ticks) {
    pollfd input{STDIN_FILENO, POLLIN, 0};
    const double ms = static_cast<double>(timeout_ticks) * 1e3 / static_cast<double>(tick_hz());
    if (::poll(&input, 1, static_cast<int>(ms) + 1) <= 0) return -1;
    unsigned char value = 0;
    return ::read(STDIN_FILENO, &value, 1) == 1 ? value : -1;
}

void fail(Text message) {
    std::fflush(stdout);
    std::fprintf(stderr, "vmmlab-native: panic: %.*s\n", static_cast<int>(message.size), message.data);
    std::exit(kExitPanic);
}

uint64_t tick_hz() {
    static const uint64_t hz = calibrate_tick_hz();
    return hz;
}

bool tick_rate_known() {
    return true;
}

unsigned cpu_count() {
    static const unsigned count = online_cpus();
    return count;
}

unsigned cpus_expected() {
    return cpu_count();
}

uint64_t memory_bytes() {
    const long pages = sysconf(_SC_PHYS_PAGES);
    const long page = sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) : 0;
}

uint64_t page_size() {
    const long page = sysconf(_SC_PAGESIZE);
    return page > 0 ? static_cast<uint64_t>(page) : 4096;
}

void* allocate(size_t bytes, size_t alignment) {
    if (bytes == 0) bytes = 1;
    const size_t rounded = (bytes + alignment - 1) & ~(alignment - 1);
    return rounded < bytes ? nullptr : std::aligned_alloc(alignment, rounded);
}

void release(void* memory) {
    std::free(memory);
}

uint64_t largest_free_block() {
    return 0;
}

void run_on_cpus(unsigned count, Job job, void* context) {
    std::vector<std::thread> threads;
    threads.reserve(count > 0 ? count - 1 : 0);
    for (unsigned index = 1; index < count; ++index)
        threads.emplace_back(job, context, index, count);
    job(context, 0, count);
    for (auto& thread : threads)
        thread.join();
}

ExitMeasurement measure_exits(const ExitRequest& request) {
    ExitMeasurement m;
    if (request.kind != ExitKind::Cpuid) {
        m.note = "not applicable natively (it measures a VM exit; only CPUID has a native counterpart)";
        return m;
    }
    m.supported = true;
    m.note = "native CPUID leaf 0, no VM exit";
    for (unsigned i = 0; i < 1000; ++i) // warm-up
        (void)cpuid(0);
    const uint64_t start = read_ticks();
    const uint64_t deadline = start + request.budget_ticks;
    uint64_t done = 0;
    while (done < request.iterations) {
        const uint64_t chunk = request.iterations - done < 64 ? request.iterations - done : 64;
        for (uint64_t i = 0; i < chunk; ++i)
            (void)cpuid(0);
        done += chunk;
        if (read_ticks() > deadline) break;
    }
    m.ticks = read_ticks() - start;
    m.completed = done;
    return m;
}

bool raise_exception(Text) {
    return false;
}

bool ioeventfd_bound() {
    return false;
}

// No block devices natively: the blk workload measures the guest's virtio-blk path (the monitor's device,
// its I/O engine and the interrupt route), which has no host-side counterpart here; for the host's own
// figure on the same image, run fio against the image file.
bool block_supported() {
    return false;
}

bool block_open(const BlockOpen&, BlockInfo&, Line& error) {
    error.put(
        "not available natively (vmmlab-native has no virtio disk; run fio on the image for a host figure)");
    return false;
}

void block_submit(uint16_t, bool, uint64_t, void*, uint32_t) {
    fail("block_submit: no block device natively");
}

void block_kick() {
}

size_t block_reap(BlockCompletion*, size_t, uint64_t) {
    fail("block_reap: no block device natively");
}

uint64_t block_interrupts() {
    return 0;
}

uint64_t block_kicks() {
    return 0;
}

void block_close() {
}

// No network devices natively: the net workload measures the guest's virtio-net path.
bool net_supported() {
    return false;
}

bool net_open(NetInfo&, Line& error) {
    error.put("not available natively (vmmlab-native has no virtio-net device)");
    return false;
}

void net_send(const void*, size_t, uint64_t) {
    fail("net_send: no network device natively");
}

size_t net_receive(void*, size_t, uint64_t) {
    fail("net_receive: no network device natively");
}

uint64_t net_frames_sent() {
    return 0;
}

void net_close() {
}

} // namespace vmmlab::guest::platform
