#include <catch2/catch.hpp>
#include <cstring>
#include <string>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

#include "base/error.hpp"
#include "kvm/kvm_uapi.hpp"
#include "trace/kvm_stats.hpp"

using namespace vmmlab;

namespace {

constexpr std::uint32_t kNameSize = 48; // KVM_STATS_NAME_SIZE

struct Descriptor {
    std::string name;
    std::uint32_t flags;
    std::int16_t exponent;
    std::uint16_t size;
    std::uint32_t offset;
    std::uint32_t bucket_size = 0;
};

// A stats file laid out as the kernel lays it out: header, id, descriptors (each followed by its name in
// name_size bytes), data block.
struct StatsBlob {
    std::string id = "kvm-1234/vcpu-0";
    std::vector<Descriptor> descriptors;
    std::vector<std::uint64_t> data; // the data block, in u64 units

    kvm_stats_header header() const {
        kvm_stats_header header{};
        header.name_size = kNameSize;
        header.num_desc = static_cast<std::uint32_t>(descriptors.size());
        header.id_offset = sizeof header;
        header.desc_offset = header.id_offset + kNameSize;
        header.data_offset = header.desc_offset +
                             header.num_desc * static_cast<std::uint32_t>(sizeof(kvm_stats_desc) + kNameSize);
        return header;
    }
    std::vector<std::byte> build() const { return build(header()); }
    std::vector<std::byte> build(const kvm_stats_header& header) const {
        const kvm_stats_header layout = this->header();
        std::vector<std::byte> bytes(layout.data_offset + data.size() * 8);
        std::memcpy(bytes.data(), &header, sizeof header);
        std::memcpy(bytes.data() + layout.id_offset, id.c_str(), id.size() + 1);
        std::size_t at = layout.desc_offset;
        for (const auto& descriptor : descriptors) {
            kvm_stats_desc raw{};
            raw.flags = descriptor.flags;
            raw.exponent = descriptor.exponent;
            raw.size = descriptor.size;
            raw.offset = descriptor.offset;
            raw.bucket_size = descriptor.bucket_size;
            std::memcpy(bytes.data() + at, &raw, sizeof raw);
            std::memcpy(bytes.data() + at + sizeof raw, descriptor.name.c_str(), descriptor.name.size() + 1);
            at += sizeof raw + kNameSize;
        }
        std::memcpy(bytes.data() + layout.data_offset, data.data(), data.size() * 8);
        return bytes;
    }
    std::size_t name_at(std::size_t descriptor) const {
        return header().desc_offset + descriptor * (sizeof(kvm_stats_desc) + kNameSize) +
               sizeof(kvm_stats_desc);
    }
};

// exits (cumulative), halt_wait_ns (cumulative seconds, 10^-9), pages_4k (instant), max_rmap (peak),
// halt_poll_success_hist (log histogram, 8 buckets), spread (linear histogram, 4 buckets of 10).
StatsBlob sample() {
    StatsBlob blob;
    blob.descriptors = {
        {"exits", KVM_STATS_TYPE_CUMULATIVE | KVM_STATS_UNIT_NONE | KVM_STATS_BASE_POW10, 0, 1, 0},
        {"halt_wait_ns", KVM_STATS_TYPE_CUMULATIVE | KVM_STATS_UNIT_SECONDS | KVM_STATS_BASE_POW10, -9, 1, 8},
        {"pages_4k", KVM_STATS_TYPE_INSTANT | KVM_STATS_UNIT_NONE | KVM_STATS_BASE_POW10, 0, 1, 16},
        {"max_rmap", KVM_STATS_TYPE_PEAK | KVM_STATS_UNIT_NONE | KVM_STATS_BASE_POW10, 0, 1, 24},
        {"halt_poll_success_hist", KVM_STATS_TYPE_LOG_HIST | KVM_STATS_UNIT_SECONDS | KVM_STATS_BASE_POW10,
         -9, 8, 32},
        {"spread", KVM_STATS_TYPE_LINEAR_HIST | KVM_STATS_UNIT_NONE | KVM_STATS_BASE_POW10, 0, 4, 96, 10},
    };
    blob.data = {1000, 2'500'000, 512, 7, 0, 3, 0, 9, 0, 0, 0, 1, 5, 0, 0, 2};
    return blob;
}

std::string error_of(const std::vector<std::byte>& bytes) {
    auto parsed = parse_kvm_stats(bytes);
    REQUIRE_FALSE(parsed.has_value());
    return parsed.error().message;
}

} // namespace

TEST_CASE("kvm stats: a well-formed blob parses into descriptors and values", "[trace]") {
    const auto parsed = parse_kvm_stats(sample().build());
    REQUIRE(parsed.has_value());
    const auto& layout = parsed->layout;
    CHECK(layout.id == "kvm-1234/vcpu-0");
    REQUIRE(layout.descriptors.size() == 6);
    CHECK(layout.data_size == 128);
    CHECK(layout.data_offset == 24 + 48 + 6 * 64);

    const auto& exits = layout.descriptors[0];
    CHECK(exits.name == "exits");
    CHECK(exits.type == KvmStatType::Cumulative);
    CHECK(exits.unit == KvmStatUnit::None);
    const auto& wait = layout.descriptors[1];
    CHECK(wait.unit == KvmStatUnit::Seconds);
    CHECK(wait.base == KvmStatBase::Pow10);
    CHECK(wait.exponent == -9);
    CHECK(layout.descriptors[2].type == KvmStatType::Instant);
    CHECK(layout.descriptors[3].type == KvmStatType::Peak);
    const auto& hist = layout.descriptors[4];
    CHECK(hist.type == KvmStatType::LogHistogram);
    CHECK(hist.size == 8);
    CHECK(layout.descriptors[5].type == KvmStatType::LinearHistogram);
    CHECK(layout.descriptors[5].bucket_size == 10);
    CHECK(std::string(kvm_stat_type_name(hist.type)) == "log-hist");

    const auto& values = parsed->snapshot.values;
    REQUIRE(values.size() == 6);
    CHECK(values[0] == std::vector<std::uint64_t>{1000});
    CHECK(values[1] == std::vector<std::uint64_t>{2'500'000});
    CHECK(values[4] == std::vector<std::uint64_t>{0, 3, 0, 9, 0, 0, 0, 1});
    CHECK(values[5] == std::vector<std::uint64_t>{5, 0, 0, 2});
    CHECK(kvm_stat_value(layout, parsed->snapshot, "exits") == 1000u);
    CHECK(kvm_stat_value(layout, parsed->snapshot, "pages_4k") == 512u);
    CHECK_FALSE(kvm_stat_value(layout, parsed->snapshot, "io_exits").has_value());
}

TEST_CASE("kvm stats: difference subtracts cumulative stats and keeps instant and peak ones", "[trace]") {
    StatsBlob blob = sample();
    const auto start = parse_kvm_stats(blob.build());
    blob.data = {1600, 4'000'000, 300, 9, 0, 5, 1, 9, 0, 0, 0, 4, 6, 0, 0, 2};
    const auto end = parse_kvm_stats(blob.build());
    REQUIRE(start.has_value());
    REQUIRE(end.has_value());
    const auto delta = kvm_stats_difference(start->layout, start->snapshot, end->snapshot);
    CHECK(delta.values[0] == std::vector<std::uint64_t>{600});
    CHECK(delta.values[1] == std::vector<std::uint64_t>{1'500'000});
    CHECK(delta.values[2] == std::vector<std::uint64_t>{300}); // instant: the last value
    CHECK(delta.values[3] == std::vector<std::uint64_t>{9});   // peak: the last value
    CHECK(delta.values[4] == std::vector<std::uint64_t>{0, 2, 1, 0, 0, 0, 0, 3});
    CHECK(delta.values[5] == std::vector<std::uint64_t>{1, 0, 0, 0});

    KvmStatsSnapshot wrong = end->snapshot;
    wrong.values.pop_back();
    CHECK_THROWS_AS(kvm_stats_difference(start->layout, start->snapshot, wrong), std::invalid_argument);

    const std::string text = format_kvm_stats(start->layout, delta);
    INFO(text);
    CHECK(text.find("KVM stats kvm-1234/vcpu-0") == 0);
    CHECK(text.find("* exits") != std::string::npos);
    CHECK(text.find("600") != std::string::npos);
    CHECK(text.find("1.50 ms") != std::string::npos); // halt_wait_ns in its unit
    CHECK(text.find("  pages_4k") != std::string::npos);
    CHECK(text.find("6 total, [1, 2): 2, [2, 4): 1, [64, ...): 3") != std::string::npos);
    CHECK(text.find("1 total, [0, 10): 1") != std::string::npos);
    // The interesting stats come first.
    CHECK(text.find("exits") < text.find("pages_4k"));

    const auto json = kvm_stats_json(start->layout, delta);
    CHECK(json["id"] == "kvm-1234/vcpu-0");
    CHECK(json["stats"]["exits"] == 600);
    CHECK(json["stats"]["spread"] == nlohmann::json::array({1, 0, 0, 0}));

    // Zero stats are left out.
    StatsBlob zero = sample();
    zero.data.assign(16, 0);
    const auto zeros = parse_kvm_stats(zero.build());
    REQUIRE(zeros.has_value());
    CHECK(format_kvm_stats(zeros->layout, zeros->snapshot).find("(all zero)") != std::string::npos);
    CHECK(kvm_stats_json(zeros->layout, zeros->snapshot)["stats"].empty());
}

TEST_CASE("kvm stats: malformed blobs give clear errors", "[trace]") {
    const StatsBlob blob = sample();
    const kvm_stats_header good = blob.header();

    SECTION("shorter than the header") {
        auto bytes = blob.build();
        bytes.resize(10);
        CHECK(error_of(bytes) == "stats of 10 bytes are shorter than the 24-byte header");
    }
    SECTION("name_size 0") {
        auto header = good;
        header.name_size = 0;
        CHECK(error_of(blob.build(header)) == "header: name_size is 0");
    }
    SECTION("id outside the blob") {
        auto header = good;
        header.id_offset = 0xffff'fff0;
        CHECK(error_of(blob.build(header)).starts_with("id string at 0xfffffff0+0x30 is outside"));
    }
    SECTION("id not NUL-terminated") {
        auto bytes = blob.build();
        std::memset(bytes.data() + good.id_offset, 'x', kNameSize);
        CHECK(error_of(bytes) == "id string is not NUL-terminated within 48 bytes");
    }
    SECTION("descriptor name not NUL-terminated") {
        auto bytes = blob.build();
        std::memset(bytes.data() + blob.name_at(2), 'y', kNameSize);
        CHECK(error_of(bytes) == "descriptor 2: name is not NUL-terminated within 48 bytes");
    }
    SECTION("names and ids with bytes that are not printable ASCII") {
        auto bytes = blob.build();
        bytes[blob.name_at(3) + 1] = std::byte{0xff};
        CHECK(error_of(bytes) == "descriptor 3: name has a non-printable byte 0xff");
        bytes = blob.build();
        bytes[good.id_offset] = std::byte{'\n'};
        CHECK(error_of(bytes) == "id string has a non-printable byte 0x0a");
    }
    SECTION("empty descriptor name") {
        auto bytes = blob.build();
        bytes[blob.name_at(1)] = std::byte{0};
        CHECK(error_of(bytes) == "descriptor 1: empty name");
    }
    SECTION("more descriptors than fit") {
        auto header = good;
        header.num_desc = 0xffff'ffff;
        CHECK(error_of(blob.build(header)).find("4294967295 descriptors of 64 bytes") == 0);
        header = good;
        header.desc_offset = 0x7fff'ffff;
        CHECK(error_of(blob.build(header)).find("do not fit") != std::string::npos);
    }
    SECTION("values outside the data block: a huge size or offset") {
        StatsBlob big = blob;
        big.descriptors[4].size = 0xffff;
        CHECK(error_of(big.build())
                  .starts_with("descriptor 4 (halt_poll_success_hist): 65535 values at data "
                               "offset 0x20 are outside the 128-byte data block"));
        big = blob;
        big.descriptors[0].offset = 0xffff'fff8;
        CHECK(error_of(big.build()).starts_with("descriptor 0 (exits)"));
    }
    SECTION("data block outside the blob") {
        auto header = good;
        header.data_offset = 0xffff'0000;
        CHECK(error_of(blob.build(header)).starts_with("data block at 0xffff0000 is outside"));
    }
    SECTION("size 0") {
        StatsBlob empty = blob;
        empty.descriptors[3].size = 0;
        CHECK(error_of(empty.build()) == "descriptor 3 (max_rmap): size is 0");
    }
    SECTION("unknown type, unit and base are kept, not fatal") {
        StatsBlob future = blob;
        future.descriptors[0].flags = 0xf | 0xf0 | 0xf00;
        const auto parsed = parse_kvm_stats(future.build());
        REQUIRE(parsed.has_value());
        CHECK(parsed->layout.descriptors[0].type == KvmStatType::Unknown);
        CHECK(parsed->layout.descriptors[0].unit == KvmStatUnit::Unknown);
        CHECK(parsed->layout.descriptors[0].base == KvmStatBase::Unknown);
        CHECK_FALSE(format_kvm_stats(parsed->layout, parsed->snapshot).empty());
    }
}

TEST_CASE("kvm stats: the reader reads layout once and values with pread", "[trace]") {
    StatsBlob blob = sample();
    const int fd = ::memfd_create("vmmlab-kvm-stats", MFD_CLOEXEC);
    REQUIRE(fd >= 0);
    const auto bytes = blob.build();
    REQUIRE(::pwrite(fd, bytes.data(), bytes.size(), 0) == static_cast<ssize_t>(bytes.size()));
    KvmStatsReader reader{UniqueFd(fd)};
    CHECK(reader.layout().id == "kvm-1234/vcpu-0");
    CHECK(reader.layout().descriptors.size() == 6);
    const auto before = reader.snapshot();
    CHECK(kvm_stat_value(reader.layout(), before, "exits") == 1000u);

    const std::uint64_t exits = 1234;
    REQUIRE(::pwrite(fd, &exits, sizeof exits, reader.layout().data_offset) == sizeof exits);
    const auto after = reader.snapshot();
    CHECK(kvm_stat_value(reader.layout(), after, "exits") == 1234u);
    CHECK(kvm_stats_difference(reader.layout(), before, after).values[0][0] == 234);

    // A file cut short inside the data block: snapshot() reports it.
    REQUIRE(::ftruncate(fd, static_cast<off_t>(bytes.size() - 8)) == 0);
    CHECK_THROWS_WITH(reader.snapshot(), Catch::Matchers::StartsWith("KVM stats: descriptor 5 (spread)"));
}

TEST_CASE("kvm stats: malformed content and non-KVM fds fail with clear errors", "[trace]") {
    const int fd = ::memfd_create("vmmlab-kvm-stats", MFD_CLOEXEC);
    REQUIRE(fd >= 0);
    REQUIRE(::write(fd, "short", 5) == 5);
    CHECK_THROWS_WITH(KvmStatsReader{UniqueFd(fd)},
                      "KVM stats: the stats fd holds 5 bytes, less than a header");

    const int other = ::memfd_create("not-kvm", MFD_CLOEXEC);
    REQUIRE(other >= 0);
    UniqueFd owner(other);
    CHECK_THROWS_AS(open_kvm_stats_fd(other), SystemError);
    CHECK_THROWS_WITH(open_kvm_stats_fd(other), Catch::Matchers::StartsWith("KVM_GET_STATS_FD: "));
}
