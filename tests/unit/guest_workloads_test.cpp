#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "guest/workloads/blk.hpp"
#include "guest/workloads/blk_pattern.hpp"
#include "guest/workloads/cmdline.hpp"
#include "guest/workloads/cpu.hpp"
#include "guest/workloads/gups.hpp"
#include "guest/workloads/latency.hpp"
#include "guest/workloads/stream.hpp"
#include "guest/workloads/text.hpp"

using namespace vmmlab::guest;

namespace {

std::string str(Text text) {
    return {text.data, text.size};
}

} // namespace

TEST_CASE("guest command line: workload first, then key=value options", "[guest][cmdline]") {
    CommandLine cmd;
    REQUIRE(parse_command_line("  stream\tsize=64M ntimes=3  ", cmd).ok());
    CHECK(str(cmd.workload) == "stream");
    REQUIRE(cmd.option_count == 2);
    CHECK(str(cmd.options[0].key) == "size");
    CHECK(str(cmd.options[0].value) == "64M");
    REQUIRE(cmd.find("ntimes") != nullptr);
    CHECK(str(cmd.find("ntimes")->value) == "3");
    CHECK(cmd.find("vcpus") == nullptr);
}

TEST_CASE("guest command line: empty means hello, a leading option belongs to hello", "[guest][cmdline]") {
    CommandLine cmd;
    REQUIRE(parse_command_line("", cmd).ok());
    CHECK(str(cmd.workload) == "hello");
    CHECK(cmd.option_count == 0);
    REQUIRE(parse_command_line("exit=3", cmd).ok());
    CHECK(str(cmd.workload) == "hello");
    REQUIRE(cmd.option_count == 1);
    CHECK(str(cmd.options[0].value) == "3");
}

TEST_CASE("guest command line: malformed options are errors that name the word", "[guest][cmdline]") {
    CommandLine cmd;
    auto error = parse_command_line("gups size", cmd);
    CHECK_FALSE(error.ok());
    CHECK(str(error.word) == "size");
    CHECK_FALSE(parse_command_line("gups =4", cmd).ok());
    CHECK_FALSE(parse_command_line("gups size=", cmd).ok());
    error = parse_command_line("gups size=1M size=2M", cmd);
    CHECK_FALSE(error.ok());
    CHECK(std::string(error.message) == "option given twice");
    std::string many = "pio";
    for (int i = 0; i <= static_cast<int>(kMaxOptions); ++i)
        many += " k" + std::to_string(i) + "=1";
    CHECK_FALSE(parse_command_line({many.data(), many.size()}, cmd).ok());
}

TEST_CASE("guest sizes take binary suffixes and reject anything else", "[guest][cmdline]") {
    auto size = [](const char* text) { return parse_size(text); };
    CHECK(size("4096").value == 4096);
    CHECK(size("64M").value == 64ULL << 20);
    CHECK(size("64m").value == 64ULL << 20);
    CHECK(size("2K").value == 2048);
    CHECK(size("2KiB").value == 2048);
    CHECK(size("3MB").value == 3ULL << 20);
    CHECK(size("1G").value == 1ULL << 30);
    CHECK(size("1T").value == 1ULL << 40);
    CHECK(size("512B").value == 512);
    CHECK(size("64M").ok);
    for (const char* bad : {"", "M", "64Q", "64MM", "-1", "1.5G", "0x10", "64 M", "64Mi",
                            "99999999999999999999", "17179869184G"})
        CHECK_FALSE(size(bad).ok);
    CHECK(parse_count("100000").value == 100000);
    CHECK(parse_count("18446744073709551615").ok);
    CHECK_FALSE(parse_count("18446744073709551616").ok);
    CHECK_FALSE(parse_count("10K").ok);
    CHECK_FALSE(parse_count("").ok);
}

TEST_CASE("guest result lines have the exact form the monitor parses", "[guest][format]") {
    Line line;
    format_result(line, "stream", "triad", ResultValue::fixed(12.3456, 3), "GB/s");
    CHECK(str(line.text()) == "@result workload=stream metric=triad value=12.346 unit=GB/s");
    line.clear();
    format_result(line, "hello", "vcpus_online", ResultValue::whole(4), "count");
    CHECK(str(line.text()) == "@result workload=hello metric=vcpus_online value=4 unit=count");
    line.clear();
    format_result(line, "pio", "cycles_per_exit", ResultValue::fixed(0.04, 1), "cycles", 2);
    CHECK(str(line.text()) == "@result workload=pio metric=cycles_per_exit value=0.0 unit=cycles vcpu=2");
}

TEST_CASE("guest number formatting", "[guest][format]") {
    Line line;
    line.put_fixed(0.0123456, 6)
        .put(' ')
        .put_fixed(1.0, 0)
        .put(' ')
        .put_fixed(2.5, 0)
        .put(' ')
        .put_fixed(-3.25, 2);
    line.put(' ')
        .put_fixed(0.999, 2)
        .put(' ')
        .put_u64(0)
        .put(' ')
        .put_u64(UINT64_MAX)
        .put(' ')
        .put_i64(INT64_MIN);
    line.put(' ').put_hex(0x200000).put(' ').put_hex(0);
    CHECK(str(line.text()) ==
          "0.012346 1 3 -3.25 1.00 0 18446744073709551615 -9223372036854775808 0x200000 0x0");
    line.clear();
    line.put_bytes(4096)
        .put(',')
        .put_bytes(2ULL << 20)
        .put(',')
        .put_bytes(1ULL << 30)
        .put(',')
        .put_bytes(1000);
    CHECK(str(line.text()) == "4 KiB,2 MiB,1 GiB,1000 bytes");
    line.clear();
    for (int i = 0; i < 400; ++i)
        line.put('x');
    CHECK(line.truncated());
    CHECK(line.text().size == Line::kCapacity);
}

TEST_CASE("GUPS updates undo themselves and verification counts wrong entries", "[guest][gups]") {
    constexpr uint64_t entries = 1024;
    std::vector<uint64_t> table(entries);
    gups::init_table(table.data(), entries);
    CHECK(gups::count_errors(table.data(), entries) == 0);
    gups::update_table(table.data(), entries, 4 * entries + 7, 42);
    const uint64_t changed = gups::count_errors(table.data(), entries);
    CHECK(changed > entries / 2); // the updates really touch the table
    gups::update_table(table.data(), entries, 4 * entries + 7, 42);
    CHECK(gups::count_errors(table.data(), entries) == 0);
    table[17] ^= 1;
    table[900] = 0;
    CHECK(gups::count_errors(table.data(), entries) == 2);
}

TEST_CASE("GUPS random stream is the GF(2) shift with feedback 7", "[guest][gups]") {
    CHECK(gups::next_random(1) == 2);
    CHECK(gups::next_random(0x8000000000000000ULL) == 7);
    CHECK(gups::next_random(0xC000000000000001ULL) == (0x8000000000000002ULL ^ 7));
    CHECK(gups::next_random(0) == 0);
}

TEST_CASE("pointer-chase permutation is one cycle through every element", "[guest][latency]") {
    for (size_t n : {size_t{1}, size_t{2}, size_t{3}, size_t{64}, size_t{1000}, size_t{4097}}) {
        for (size_t stride : {size_t{1}, size_t{8}}) {
            std::vector<uint64_t> words(n * stride, 0xdeadbeef);
            latency::build_cycle(words.data(), n, stride, 7 + n);
            std::vector<bool> seen(n, false);
            size_t at = 0;
            size_t steps = 0;
            do {
                REQUIRE(words[at * stride] < n);
                REQUIRE_FALSE(seen[at]);
                seen[at] = true;
                at = static_cast<size_t>(words[at * stride]);
                ++steps;
            } while (at != 0 && steps <= n);
            CHECK(steps == n);
            CHECK(at == 0);
        }
    }
}

TEST_CASE("STREAM kernels compute what the validation expects", "[guest][stream]") {
    constexpr size_t n = 1003; // not a multiple of the vector width
    std::vector<double> a(n, 1.0), b(n, 2.0), c(n, 0.0);
    for (bool avx2 : {false, true}) {
        std::fill(a.begin(), a.end(), 1.0);
        std::fill(b.begin(), b.end(), 2.0);
        std::fill(c.begin(), c.end(), 0.0);
        constexpr unsigned rounds = 3;
        for (unsigned k = 0; k < rounds; ++k)
            for (auto kernel :
                 {stream::Kernel::Copy, stream::Kernel::Scale, stream::Kernel::Add, stream::Kernel::Triad})
                stream::run_kernel(kernel, a.data(), b.data(), c.data(), 0, n, avx2 && cpu_has_avx2());
        double ea, eb, ec;
        stream::expected_values(rounds, ea, eb, ec);
        CHECK(a[0] == ea);
        CHECK(b[n - 1] == eb);
        CHECK(c[n / 2] == ec);
    }
    CHECK(stream::bytes_moved(stream::Kernel::Copy, 10) == 160);
    CHECK(stream::bytes_moved(stream::Kernel::Triad, 10) == 240);
}

TEST_CASE("blk latency histogram: exact below 32, within 3% above, percentiles by rank", "[guest][blk]") {
    blk::LatencyHistogram small;
    for (std::uint64_t v = 1; v <= 20; ++v)
        small.add(v);
    CHECK(small.percentile(0.5) == 10);
    CHECK(small.percentile(0.99) == 20);
    CHECK(small.max() == 20);

    blk::LatencyHistogram wide;
    CHECK(wide.percentile(0.5) == 0); // empty
    for (std::uint64_t v = 1; v <= 100000; ++v)
        wide.add(v * 10);
    CHECK(wide.max() == 1000000);
    CHECK(static_cast<double>(wide.percentile(0.5)) == Approx(500000).epsilon(0.03));
    CHECK(static_cast<double>(wide.percentile(0.99)) == Approx(990000).epsilon(0.03));
    CHECK(wide.percentile(1.0) <= wide.max());

    blk::LatencyHistogram outlier; // 99 fast requests and one slow one: p99 is fast, the maximum is not
    for (int i = 0; i < 99; ++i)
        outlier.add(1000);
    outlier.add(5000000);
    CHECK(static_cast<double>(outlier.percentile(0.99)) == Approx(1000).epsilon(0.03));
    CHECK(outlier.max() == 5000000);
}

TEST_CASE("blk pattern: every word of a disk differs, and a sector's words name the sector", "[guest][blk]") {
    std::vector<std::uint64_t> words(4 * blk::kWordsPerSector);
    blk::fill_pattern(words.data(), 100, 4);
    CHECK(words[0] == (100 * 64 ^ 0x766d6d6c61620000ULL));
    CHECK(words[64 + 3] == ((101 * 64 + 3) ^ 0x766d6d6c61620000ULL));
    std::vector<std::uint64_t> sorted = words;
    std::sort(sorted.begin(), sorted.end());
    CHECK(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end());
    CHECK(blk::pattern_word(0, 0) != 0); // an all-zero (never written) sector does not match
}
