#include "trace/kvm_stats.hpp"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include <fmt/format.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "base/error.hpp"
#include "kvm/kvm_uapi.hpp"
#include "trace/histogram.hpp"

namespace vmmlab {

namespace {

static_assert(sizeof(kvm_stats_header) == 24, "kvm_stats_header must have the kernel's layout");
static_assert(sizeof(kvm_stats_desc) == 16, "kvm_stats_desc must have the kernel's layout");

// Upper bound for the header + id + descriptors area the reader loads (the kernel's is a few KiB).
constexpr std::uint64_t kMaxLayoutBytes = 64ULL << 20;

constexpr std::array<std::string_view, 24> kInteresting = {
    "exits",
    "halt_exits",
    "io_exits",
    "mmio_exits",
    "irq_exits",
    "signal_exits",
    "irq_window_exits",
    "nmi_window_exits",
    "request_irq_exits",
    "halt_successful_poll",
    "halt_attempted_poll",
    "halt_poll_invalid",
    "halt_wakeup",
    "halt_poll_success_ns",
    "halt_poll_fail_ns",
    "halt_wait_ns",
    "insn_emulation",
    "insn_emulation_fail",
    "hypercalls",
    "irq_injections",
    "nmi_injections",
    "pf_taken",
    "tlb_flush",
    "directed_yield_successful",
};

std::unexpected<KvmStatsError> fail(std::string message) {
    return std::unexpected(KvmStatsError{std::move(message)});
}

// A NUL-terminated string in exactly `length` bytes at `offset`; `what` names it for the error.
std::expected<std::string, KvmStatsError> read_string(std::span<const std::byte> bytes, std::uint64_t offset,
                                                      std::uint64_t length, const std::string& what) {
    if (offset > bytes.size() || length > bytes.size() - offset)
        return fail(fmt::format("{} at {:#x}+{:#x} is outside the {} bytes read", what, offset, length,
                                bytes.size()));
    const auto* begin = reinterpret_cast<const char*>(bytes.data() + offset);
    const auto* end = static_cast<const char*>(std::memchr(begin, '\0', length));
    if (end == nullptr) return fail(fmt::format("{} is not NUL-terminated within {} bytes", what, length));
    // The kernel's names and ids are plain ASCII ("halt_exits", "kvm-1234/vcpu-0"); anything else is not
    // a stats file, and would not survive printing or JSON.
    for (const char* at = begin; at != end; ++at)
        if (*at < 0x20 || *at > 0x7e)
            return fail(fmt::format("{} has a non-printable byte {:#04x}", what,
                                    static_cast<unsigned>(static_cast<unsigned char>(*at))));
    return std::string(begin, end);
}

KvmStatType decode_type(std::uint32_t flags) {
    switch (flags & KVM_STATS_TYPE_MASK) {
    case KVM_STATS_TYPE_CUMULATIVE:
        return KvmStatType::Cumulative;
    case KVM_STATS_TYPE_INSTANT:
        return KvmStatType::Instant;
    case KVM_STATS_TYPE_PEAK:
        return KvmStatType::Peak;
    case KVM_STATS_TYPE_LINEAR_HIST:
        return KvmStatType::LinearHistogram;
    case KVM_STATS_TYPE_LOG_HIST:
        return KvmStatType::LogHistogram;
    default:
        return KvmStatType::Unknown;
    }
}

KvmStatUnit decode_unit(std::uint32_t flags) {
    switch (flags & KVM_STATS_UNIT_MASK) {
    case KVM_STATS_UNIT_NONE:
        return KvmStatUnit::None;
    case KVM_STATS_UNIT_BYTES:
        return KvmStatUnit::Bytes;
    case KVM_STATS_UNIT_SECONDS:
        return KvmStatUnit::Seconds;
    case KVM_STATS_UNIT_CYCLES:
        return KvmStatUnit::Cycles;
    case KVM_STATS_UNIT_BOOLEAN:
        return KvmStatUnit::Boolean;
    default:
        return KvmStatUnit::Unknown;
    }
}

KvmStatBase decode_base(std::uint32_t flags) {
    switch (flags & KVM_STATS_BASE_MASK) {
    case KVM_STATS_BASE_POW10:
        return KvmStatBase::Pow10;
    case KVM_STATS_BASE_POW2:
        return KvmStatBase::Pow2;
    default:
        return KvmStatBase::Unknown;
    }
}

bool is_histogram(KvmStatType type) {
    return type == KvmStatType::LinearHistogram || type == KvmStatType::LogHistogram;
}

bool is_interesting(std::string_view name) {
    return std::ranges::find(kInteresting, name) != kInteresting.end();
}

bool all_zero(const std::vector<std::uint64_t>& values) {
    return std::ranges::all_of(values, [](std::uint64_t value) { return value == 0; });
}

// A scalar in its unit: "1.20 ms", "4096 B", "17 cycles", "yes", "42".
std::string format_scalar(const KvmStatDescriptor& stat, std::uint64_t value) {
    const auto scaled = [&](int extra_exponent) {
        const double base = stat.base == KvmStatBase::Pow2 ? 2.0 : 10.0;
        return static_cast<double>(value) * std::pow(base, stat.exponent + extra_exponent);
    };
    switch (stat.unit) {
    case KvmStatUnit::Seconds:
        if (stat.base == KvmStatBase::Pow10) return format_nanoseconds(scaled(9));
        break;
    case KvmStatUnit::Bytes:
        return fmt::format("{:.0f} B", scaled(0));
    case KvmStatUnit::Cycles:
        return fmt::format("{:.0f} cycles", scaled(0));
    case KvmStatUnit::Boolean:
        return value != 0 ? "yes" : "no";
    default:
        break;
    }
    if (stat.exponent == 0) return fmt::format("{}", value);
    return fmt::format("{} (x{}^{})", value, stat.base == KvmStatBase::Pow2 ? 2 : 10, stat.exponent);
}

// The range of values bucket `index` counts: "[64, 128)" for log histograms, "[10, 20)" for linear ones.
std::string bucket_range(const KvmStatDescriptor& stat, std::size_t index) {
    const bool last = index + 1 == stat.size;
    if (stat.type == KvmStatType::LogHistogram) {
        // Bucket 0 counts zeros, bucket i counts [2^(i-1), 2^i); the last one everything above.
        if (index == 0) return "0";
        if (index > 64) return fmt::format("[2^{}, ...)", index - 1);
        const std::uint64_t low = std::uint64_t{1} << (index - 1);
        if (last || index == 64) return fmt::format("[{}, ...)", low);
        return fmt::format("[{}, {})", low, low * 2);
    }
    const std::uint64_t width = stat.bucket_size;
    if (last) return fmt::format("[{}, ...)", width * index);
    return fmt::format("[{}, {})", width * index, width * (index + 1));
}

std::string format_stat(const KvmStatDescriptor& stat, const std::vector<std::uint64_t>& values) {
    if (!is_histogram(stat.type)) {
        if (values.size() == 1) return format_scalar(stat, values[0]);
        std::string text = "[";
        for (std::size_t i = 0; i < values.size(); ++i)
            text += (i == 0 ? "" : ", ") + format_scalar(stat, values[i]);
        return text + "]";
    }
    std::uint64_t total = 0;
    for (const std::uint64_t value : values)
        total += value;
    std::string text = fmt::format("{} total", total);
    for (std::size_t i = 0; i < values.size(); ++i)
        if (values[i] != 0) text += fmt::format(", {}: {}", bucket_range(stat, i), values[i]);
    return text;
}

} // namespace

const char* kvm_stat_type_name(KvmStatType type) {
    switch (type) {
    case KvmStatType::Cumulative:
        return "cumulative";
    case KvmStatType::Instant:
        return "instant";
    case KvmStatType::Peak:
        return "peak";
    case KvmStatType::LinearHistogram:
        return "linear-hist";
    case KvmStatType::LogHistogram:
        return "log-hist";
    case KvmStatType::Unknown:
        break;
    }
    return "unknown";
}

std::expected<KvmStatsLayout, KvmStatsError> parse_kvm_stats_layout(std::span<const std::byte> file_start) {
    kvm_stats_header header{};
    if (file_start.size() < sizeof header)
        return fail(fmt::format("stats of {} bytes are shorter than the {}-byte header", file_start.size(),
                                sizeof header));
    std::memcpy(&header, file_start.data(), sizeof header);
    if (header.name_size == 0) return fail("header: name_size is 0");

    KvmStatsLayout layout;
    layout.data_offset = header.data_offset;
    auto id = read_string(file_start, header.id_offset, header.name_size, "id string");
    if (!id) return std::unexpected(id.error());
    layout.id = std::move(*id);

    const std::uint64_t stride = sizeof(kvm_stats_desc) + std::uint64_t{header.name_size};
    if (header.desc_offset > file_start.size() ||
        header.num_desc > (file_start.size() - header.desc_offset) / stride)
        return fail(fmt::format("{} descriptors of {} bytes at {:#x} do not fit in the {} bytes read",
                                header.num_desc, stride, header.desc_offset, file_start.size()));

    layout.descriptors.reserve(header.num_desc);
    for (std::uint32_t i = 0; i < header.num_desc; ++i) {
        const std::uint64_t at = header.desc_offset + i * stride;
        kvm_stats_desc raw{};
        std::memcpy(&raw, file_start.data() + at, sizeof raw);
        auto name =
            read_string(file_start, at + sizeof raw, header.name_size, fmt::format("descriptor {}: name", i));
        if (!name) return std::unexpected(name.error());
        if (name->empty()) return fail(fmt::format("descriptor {}: empty name", i));
        if (raw.size == 0) return fail(fmt::format("descriptor {} ({}): size is 0", i, *name));
        KvmStatDescriptor stat;
        stat.name = std::move(*name);
        stat.flags = raw.flags;
        stat.type = decode_type(raw.flags);
        stat.unit = decode_unit(raw.flags);
        stat.base = decode_base(raw.flags);
        stat.exponent = raw.exponent;
        stat.size = raw.size;
        stat.offset = raw.offset;
        stat.bucket_size = raw.bucket_size;
        // No overflow: offset < 2^32 and size * 8 < 2^19.
        layout.data_size =
            std::max(layout.data_size, std::uint64_t{raw.offset} + std::uint64_t{raw.size} * 8);
        layout.descriptors.push_back(std::move(stat));
    }
    return layout;
}

std::expected<KvmStatsSnapshot, KvmStatsError> parse_kvm_stats_values(const KvmStatsLayout& layout,
                                                                      std::span<const std::byte> data_block) {
    KvmStatsSnapshot snapshot;
    snapshot.values.reserve(layout.descriptors.size());
    for (std::size_t i = 0; i < layout.descriptors.size(); ++i) {
        const KvmStatDescriptor& stat = layout.descriptors[i];
        const std::uint64_t bytes = std::uint64_t{stat.size} * 8;
        if (stat.offset > data_block.size() || bytes > data_block.size() - stat.offset)
            return fail(fmt::format("descriptor {} ({}): {} values at data offset {:#x} are outside the "
                                    "{}-byte data block",
                                    i, stat.name, stat.size, stat.offset, data_block.size()));
        std::vector<std::uint64_t> values(stat.size);
        std::memcpy(values.data(), data_block.data() + stat.offset, bytes);
        snapshot.values.push_back(std::move(values));
    }
    return snapshot;
}

std::expected<KvmStats, KvmStatsError> parse_kvm_stats(std::span<const std::byte> file) {
    auto layout = parse_kvm_stats_layout(file);
    if (!layout) return std::unexpected(layout.error());
    if (layout->data_offset > file.size())
        return fail(fmt::format("data block at {:#x} is outside the {}-byte stats", layout->data_offset,
                                file.size()));
    auto snapshot = parse_kvm_stats_values(*layout, file.subspan(layout->data_offset));
    if (!snapshot) return std::unexpected(snapshot.error());
    return KvmStats{std::move(*layout), std::move(*snapshot)};
}

KvmStatsSnapshot kvm_stats_difference(const KvmStatsLayout& layout, const KvmStatsSnapshot& start,
                                      const KvmStatsSnapshot& end) {
    const auto fits = [&](const KvmStatsSnapshot& snapshot) {
        if (snapshot.values.size() != layout.descriptors.size()) return false;
        for (std::size_t i = 0; i < snapshot.values.size(); ++i)
            if (snapshot.values[i].size() != layout.descriptors[i].size) return false;
        return true;
    };
    if (!fits(start) || !fits(end))
        throw std::invalid_argument("kvm_stats_difference: a snapshot does not match the stats layout");
    KvmStatsSnapshot difference = end;
    for (std::size_t i = 0; i < layout.descriptors.size(); ++i) {
        const KvmStatType type = layout.descriptors[i].type;
        if (type != KvmStatType::Cumulative && !is_histogram(type)) continue;
        for (std::size_t j = 0; j < difference.values[i].size(); ++j)
            difference.values[i][j] -= start.values[i][j];
    }
    return difference;
}

std::optional<std::uint64_t> kvm_stat_value(const KvmStatsLayout& layout, const KvmStatsSnapshot& snapshot,
                                            std::string_view name) {
    for (std::size_t i = 0; i < layout.descriptors.size() && i < snapshot.values.size(); ++i)
        if (layout.descriptors[i].name == name && !snapshot.values[i].empty()) return snapshot.values[i][0];
    return std::nullopt;
}

std::span<const std::string_view> interesting_kvm_stats() {
    return kInteresting;
}

std::string format_kvm_stats(const KvmStatsLayout& layout, const KvmStatsSnapshot& snapshot) {
    std::vector<std::size_t> order;
    for (std::size_t i = 0; i < layout.descriptors.size() && i < snapshot.values.size(); ++i)
        if (!all_zero(snapshot.values[i])) order.push_back(i);
    // Interesting ones first, in the order of the list; then the rest in the kernel's order.
    const auto rank = [&](std::size_t i) {
        const auto found = std::ranges::find(kInteresting, layout.descriptors[i].name);
        return static_cast<std::size_t>(found - kInteresting.begin());
    };
    std::ranges::sort(
        order, [&](std::size_t a, std::size_t b) { return rank(a) != rank(b) ? rank(a) < rank(b) : a < b; });
    std::string out = fmt::format("KVM stats {}\n", layout.id);
    for (const std::size_t i : order) {
        const KvmStatDescriptor& stat = layout.descriptors[i];
        out += fmt::format("{} {:<32} {}\n", is_interesting(stat.name) ? '*' : ' ', stat.name,
                           format_stat(stat, snapshot.values[i]));
    }
    if (order.empty()) out += "  (all zero)\n";
    return out;
}

nlohmann::json kvm_stats_json(const KvmStatsLayout& layout, const KvmStatsSnapshot& snapshot) {
    nlohmann::json stats = nlohmann::json::object();
    for (std::size_t i = 0; i < layout.descriptors.size() && i < snapshot.values.size(); ++i) {
        const auto& values = snapshot.values[i];
        if (all_zero(values)) continue;
        const KvmStatDescriptor& stat = layout.descriptors[i];
        if (values.size() == 1 && !is_histogram(stat.type))
            stats[stat.name] = values[0];
        else
            stats[stat.name] = values;
    }
    return {{"id", layout.id}, {"stats", std::move(stats)}};
}

UniqueFd open_kvm_stats_fd(int vm_or_vcpu_fd) {
    const int fd = ::ioctl(vm_or_vcpu_fd, KVM_GET_STATS_FD, 0);
    if (fd < 0) {
        const int error = errno;
        throw SystemError("KVM_GET_STATS_FD", error,
                          error == ENOTTY || error == EINVAL
                              ? "not a KVM VM or vCPU fd, or a kernel older than 5.14 without binary stats"
                              : "");
    }
    return UniqueFd(fd);
}

namespace {
// Reads exactly `length` bytes at `offset`, or fewer at end of file.
std::vector<std::byte> read_at(int fd, std::uint64_t offset, std::uint64_t length) {
    std::vector<std::byte> bytes(length);
    std::uint64_t done = 0;
    while (done < length) {
        const ssize_t got =
            ::pread(fd, bytes.data() + done, length - done, static_cast<off_t>(offset + done));
        if (got < 0) {
            if (errno == EINTR) continue;
            throw SystemError("reading the KVM stats fd", errno);
        }
        if (got == 0) break;
        done += static_cast<std::uint64_t>(got);
    }
    bytes.resize(done);
    return bytes;
}

[[noreturn]] void malformed(const KvmStatsError& error) {
    throw std::runtime_error("KVM stats: " + error.message);
}
} // namespace

KvmStatsReader::KvmStatsReader(UniqueFd stats_fd) : fd_(std::move(stats_fd)) {
    auto header_bytes = read_at(fd_.get(), 0, sizeof(kvm_stats_header));
    if (header_bytes.size() < sizeof(kvm_stats_header))
        malformed({fmt::format("the stats fd holds {} bytes, less than a header", header_bytes.size())});
    kvm_stats_header header{};
    std::memcpy(&header, header_bytes.data(), sizeof header);
    const std::uint64_t stride = sizeof(kvm_stats_desc) + std::uint64_t{header.name_size};
    // Each term is below 2^33 except the descriptors' product, bounded first.
    const std::uint64_t descriptors =
        header.num_desc > kMaxLayoutBytes / stride ? kMaxLayoutBytes + 1 : header.num_desc * stride;
    const std::uint64_t end =
        std::max({std::uint64_t{sizeof header}, std::uint64_t{header.id_offset} + header.name_size,
                  std::uint64_t{header.desc_offset} + descriptors});
    if (end > kMaxLayoutBytes)
        malformed(
            {fmt::format("header asks for {} bytes of descriptors (more than {})", end, kMaxLayoutBytes)});
    auto layout = parse_kvm_stats_layout(read_at(fd_.get(), 0, end));
    if (!layout) malformed(layout.error());
    layout_ = std::move(*layout);
}

KvmStatsSnapshot KvmStatsReader::snapshot() const {
    auto data = read_at(fd_.get(), layout_.data_offset, layout_.data_size);
    auto snapshot = parse_kvm_stats_values(layout_, data);
    if (!snapshot) malformed(snapshot.error());
    return std::move(*snapshot);
}

} // namespace vmmlab
