// KVM's binary statistics (KVM_GET_STATS_FD, Linux 5.14+): what the kernel counts per VM and per vCPU
// (exits, halt polling, I/O and MMIO exits, ...) without debugfs.
//
// The stats file, as the uapi describes it (all integers little-endian, host byte order):
//   struct kvm_stats_header at offset 0: flags, name_size, num_desc, id_offset, desc_offset, data_offset
//   id string at id_offset: name_size bytes, NUL-terminated ("kvm-1234" or "kvm-1234/vcpu-0")
//   num_desc descriptors at desc_offset, each sizeof(kvm_stats_desc) = 16 bytes followed by name_size
//     bytes of NUL-terminated name: flags (type | unit | base), exponent, size (number of u64 values),
//     offset (of the values from data_offset), bucket_size (linear histograms)
//   the values at data_offset + offset: `size` u64 each
//
// parse_kvm_stats_layout/parse_kvm_stats are pure functions over bytes: every offset, length and string
// is checked, and anything out of range comes back as a KvmStatsError, never a crash. KvmStatsReader owns
// a stats fd and reads value snapshots with pread (the descriptors are read once).
#pragma once

#include <cstddef>
#include <cstdint>
#include <expected>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/unique_fd.hpp"

namespace vmmlab {

enum class KvmStatType : std::uint8_t { Cumulative, Instant, Peak, LinearHistogram, LogHistogram, Unknown };
enum class KvmStatUnit : std::uint8_t { None, Bytes, Seconds, Cycles, Boolean, Unknown };
enum class KvmStatBase : std::uint8_t { Pow10, Pow2, Unknown };
const char* kvm_stat_type_name(KvmStatType type); // "cumulative", "instant", "peak", "linear-hist", ...

struct KvmStatDescriptor {
    std::string name;
    std::uint32_t flags = 0; // as the kernel wrote them; type/unit/base decoded below
    KvmStatType type = KvmStatType::Cumulative;
    KvmStatUnit unit = KvmStatUnit::None;
    KvmStatBase base = KvmStatBase::Pow10;
    std::int16_t exponent = 0; // value * base^exponent is in `unit` (e.g. Seconds, Pow10, -9: ns)
    std::uint16_t size = 1;    // number of u64 values (buckets for histograms)
    std::uint32_t offset = 0;  // of the first value from the data block's start
    std::uint32_t bucket_size = 0;
};

struct KvmStatsLayout {
    std::string id;                // "kvm-1234/vcpu-0"
    std::uint32_t data_offset = 0; // where the data block starts in the file
    std::uint64_t data_size = 0;   // bytes of data block the descriptors cover
    std::vector<KvmStatDescriptor> descriptors;
};

// One reading of every stat: values[i] holds descriptors[i].size values.
struct KvmStatsSnapshot {
    std::vector<std::vector<std::uint64_t>> values;
};

struct KvmStatsError {
    std::string message; // "descriptor 3: name is not NUL-terminated within 48 bytes"
};

// Parses header, id and descriptors from the start of a stats file (the data block need not be there).
std::expected<KvmStatsLayout, KvmStatsError> parse_kvm_stats_layout(std::span<const std::byte> file_start);
// Decodes the values from the data block (the bytes from data_offset on).
std::expected<KvmStatsSnapshot, KvmStatsError> parse_kvm_stats_values(const KvmStatsLayout& layout,
                                                                      std::span<const std::byte> data_block);
struct KvmStats {
    KvmStatsLayout layout;
    KvmStatsSnapshot snapshot;
};
// A whole stats file in memory: layout and values.
std::expected<KvmStats, KvmStatsError> parse_kvm_stats(std::span<const std::byte> file);

// end - start for cumulative stats and histograms (modulo 2^64), end's value for instant and peak stats.
// Throws std::invalid_argument when a snapshot does not match the layout's shape.
KvmStatsSnapshot kvm_stats_difference(const KvmStatsLayout& layout, const KvmStatsSnapshot& start,
                                      const KvmStatsSnapshot& end);

// The first value of the stat called `name`, if there is one.
std::optional<std::uint64_t> kvm_stat_value(const KvmStatsLayout& layout, const KvmStatsSnapshot& snapshot,
                                            std::string_view name);

// The stats worth reading first: exits, halt_exits, io_exits, mmio_exits, irq_exits, halt polling, ...
std::span<const std::string_view> interesting_kvm_stats();

// Every non-zero stat, one per line, the interesting ones first and marked with '*', values in their
// unit ("halt_wait_ns  1.20 ms"), histograms as their total and non-zero buckets.
std::string format_kvm_stats(const KvmStatsLayout& layout, const KvmStatsSnapshot& snapshot);
// {"id": ..., "stats": {"name": value or [bucket values], ...}} for every non-zero stat.
nlohmann::json kvm_stats_json(const KvmStatsLayout& layout, const KvmStatsSnapshot& snapshot);

// KVM_GET_STATS_FD on a VM or vCPU fd; throws SystemError ("KVM_GET_STATS_FD: ...", with a hint when
// the kernel is older than 5.14).
UniqueFd open_kvm_stats_fd(int vm_or_vcpu_fd);

class KvmStatsReader {
public:
    // Takes ownership of a stats fd (open_kvm_stats_fd, or any file with that layout) and reads its
    // header and descriptors. Throws SystemError when reading fails and std::runtime_error ("KVM stats:
    // ...") when the content is malformed.
    explicit KvmStatsReader(UniqueFd stats_fd);

    const KvmStatsLayout& layout() const noexcept { return layout_; }
    // Reads the data block (one pread) and decodes it. Throws like the constructor.
    KvmStatsSnapshot snapshot() const;

private:
    UniqueFd fd_;
    KvmStatsLayout layout_;
};

} // namespace vmmlab
