// Compiled with -O3 (see guest/CMakeLists.txt) so the kernel loops are vectorised; an AVX2 copy of each
// kernel is picked at run time when CPUID and XCR0 allow it.
#include "guest/workloads/stream.hpp"

#include "guest/workloads/barrier.hpp"
#include "guest/workloads/cpu.hpp"
#include "guest/workloads/platform.hpp"
#include "guest/workloads/workloads.hpp"

namespace vmmlab::guest {
namespace stream {
namespace {

[[gnu::always_inline]] inline void kernel_body(Kernel kernel, double* __restrict a, double* __restrict b,
                                               double* __restrict c, size_t begin, size_t end) {
    switch (kernel) {
    case Kernel::Copy:
        for (size_t i = begin; i < end; ++i)
            c[i] = a[i];
        break;
    case Kernel::Scale:
        for (size_t i = begin; i < end; ++i)
            b[i] = kScalar * c[i];
        break;
    case Kernel::Add:
        for (size_t i = begin; i < end; ++i)
            c[i] = a[i] + b[i];
        break;
    case Kernel::Triad:
        for (size_t i = begin; i < end; ++i)
            a[i] = b[i] + kScalar * c[i];
        break;
    }
}

void kernel_sse2(Kernel kernel, double* a, double* b, double* c, size_t begin, size_t end) {
    kernel_body(kernel, a, b, c, begin, end);
}

[[gnu::target("avx2")]] void kernel_avx2(Kernel kernel, double* a, double* b, double* c, size_t begin,
                                         size_t end) {
    kernel_body(kernel, a, b, c, begin, end);
}

} // namespace

void run_kernel(Kernel kernel, double* a, double* b, double* c, size_t begin, size_t end, bool avx2) {
    if (avx2)
        kernel_avx2(kernel, a, b, c, begin, end);
    else
        kernel_sse2(kernel, a, b, c, begin, end);
}

void expected_values(unsigned ntimes, double& a, double& b, double& c) {
    a = 1.0;
    b = 2.0;
    c = 0.0;
    for (unsigned k = 0; k < ntimes; ++k) {
        c = a;
        b = kScalar * c;
        c = a + b;
        a = b + kScalar * c;
    }
}

} // namespace stream

namespace {

constexpr unsigned kMaxTimes = 100;
constexpr Text kKernelNames[stream::kKernelCount] = {"copy", "scale", "add", "triad"};

struct StreamJob {
    double* a;
    double* b;
    double* c;
    size_t n;
    unsigned ntimes;
    bool avx2;
    SpinBarrier barrier;
    uint64_t ticks[stream::kKernelCount][kMaxTimes];
};

constinit StreamJob g_job{}; // one run at a time; static so the guest needs no allocation for it

void stream_job(void* context, unsigned index, unsigned count) {
    auto& job = *static_cast<StreamJob*>(context);
    // Slices are multiples of 8 elements (one cache line) so no two CPUs write the same line.
    const size_t per_cpu = (job.n / count) & ~static_cast<size_t>(7);
    const size_t begin = per_cpu * index;
    const size_t end = index + 1 == count ? job.n : begin + per_cpu;
    for (size_t i = begin; i < end; ++i) { // first touch by the CPU that will use the slice
        job.a[i] = 1.0;
        job.b[i] = 2.0;
        job.c[i] = 0.0;
    }
    for (unsigned k = 0; k < job.ntimes; ++k) {
        for (unsigned kernel = 0; kernel < stream::kKernelCount; ++kernel) {
            job.barrier.wait();
            const uint64_t start = index == 0 ? read_ticks() : 0;
            stream::run_kernel(static_cast<stream::Kernel>(kernel), job.a, job.b, job.c, begin, end,
                               job.avx2);
            job.barrier.wait();
            if (index == 0) job.ticks[kernel][k] = read_ticks() - start;
        }
    }
}

uint64_t count_mismatches(const double* values, size_t n, double expected) {
    uint64_t mismatches = 0;
    for (size_t i = 0; i < n; ++i) {
        const double difference = values[i] - expected;
        const double magnitude = expected < 0 ? -expected : expected;
        if (difference > magnitude * 1e-13 || -difference > magnitude * 1e-13) ++mismatches;
    }
    return mismatches;
}

} // namespace

int run_stream(const Args& args) {
    constexpr Text kOptions[] = {"size", "ntimes", "vcpus"};
    uint64_t size = 0;
    uint64_t ntimes = 0;
    if (!args.only(kOptions) || !args.size("size", 64ULL << 20, size) || !args.count("ntimes", 5, ntimes))
        return kExitUsage;
    if (ntimes == 0 || ntimes > kMaxTimes) {
        args.error("ntimes must be 1..100");
        return kExitUsage;
    }
    const Text vcpus = args.text("vcpus", "1");
    unsigned cpus = 1;
    if (vcpus == Text{"all"}) {
        cpus = platform::cpu_count();
    } else {
        const NumberResult parsed = parse_count(vcpus);
        if (!parsed.ok || parsed.value == 0 || parsed.value > platform::cpu_count()) {
            Line line;
            line.put("vcpus must be 'all' or 1..").put_u64(platform::cpu_count()).put(", not '").put(vcpus);
            line.put('\'');
            args.error(line.text());
            return kExitUsage;
        }
        cpus = static_cast<unsigned>(parsed.value);
    }
    // size = the bytes of all three arrays together; each array holds n doubles, n a multiple of 8.
    const size_t n = static_cast<size_t>(size / (3 * sizeof(double))) & ~static_cast<size_t>(7);
    if (n < 1024) {
        args.error("size too small: the three arrays need at least 24K");
        return kExitUsage;
    }
    const size_t array_bytes = n * sizeof(double);
    StreamJob* job = &g_job;
    auto* a = static_cast<double*>(platform::allocate(array_bytes, 4096));
    auto* b = static_cast<double*>(platform::allocate(array_bytes, 4096));
    auto* c = static_cast<double*>(platform::allocate(array_bytes, 4096));
    if (a == nullptr || b == nullptr || c == nullptr) {
        platform::release(a);
        platform::release(b);
        platform::release(c);
        Line line;
        line.put("size=").put_u64(size).put(" does not fit: 3 arrays of ").put_u64(array_bytes);
        line.put(" bytes, largest free block ").put_u64(platform::largest_free_block()).put(" bytes");
        args.error(line.text());
        return kExitUsage;
    }
    job->a = a;
    job->b = b;
    job->c = c;
    job->n = n;
    job->ntimes = static_cast<unsigned>(ntimes);
    job->avx2 = cpu_has_avx2();
    job->barrier.reset(cpus);

    Line line;
    line.put("stream: 3 arrays of ")
        .put_u64(n)
        .put(" doubles (")
        .put_fixed(static_cast<double>(array_bytes) / 1048576.0, 1);
    line.put(" MiB each), ntimes=")
        .put_u64(ntimes)
        .put(", ")
        .put_u64(cpus)
        .put(' ')
        .put(platform::cpu_noun());
    line.put(", kernels ").put(job->avx2 ? "avx2" : "sse2");
    print_line(line);

    platform::run_on_cpus(cpus, stream_job, job);

    // Best of ntimes, leaving out the first round (it pays for first-touch faults) when there are more.
    const unsigned first = ntimes > 1 ? 1 : 0;
    for (unsigned kernel = 0; kernel < stream::kKernelCount; ++kernel) {
        uint64_t best = UINT64_MAX;
        for (unsigned k = first; k < ntimes; ++k)
            best = job->ticks[kernel][k] < best ? job->ticks[kernel][k] : best;
        if (best == 0) best = 1;
        const double seconds = ticks_to_seconds(best);
        const double gbs =
            static_cast<double>(stream::bytes_moved(static_cast<stream::Kernel>(kernel), n)) / seconds / 1e9;
        line.clear();
        line.put("stream: ").put(kKernelNames[kernel]).put(' ').put_fixed(gbs, 3).put(" GB/s (best ");
        line.put_fixed(seconds * 1e3, 3).put(" ms)");
        print_line(line);
        report("stream", kKernelNames[kernel], ResultValue::fixed(gbs, 3), "GB/s");
    }

    double expected_a;
    double expected_b;
    double expected_c;
    stream::expected_values(static_cast<unsigned>(ntimes), expected_a, expected_b, expected_c);
    const uint64_t errors = count_mismatches(a, n, expected_a) + count_mismatches(b, n, expected_b) +
                            count_mismatches(c, n, expected_c);
    line.clear();
    line.put("stream: validation ");
    if (errors == 0)
        line.put("ok");
    else
        line.put("FAILED, ").put_u64(errors).put(" wrong elements");
    print_line(line);
    report("stream", "errors", ResultValue::whole(errors), "count");
    platform::release(c);
    platform::release(b);
    platform::release(a);
    return errors == 0 ? kExitOk : kExitFailed;
}

} // namespace vmmlab::guest
