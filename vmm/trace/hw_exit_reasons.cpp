#include "trace/hw_exit_reasons.hpp"

#include <algorithm>
#include <array>
#include <charconv>

#include <asm/svm.h>
#include <asm/vmx.h>
#include <fmt/format.h>

#include "kvm/kvm_uapi.hpp" // <asm/kvm.h>: the exception vector numbers SVM_EXIT_REASONS refers to

namespace vmmlab {

namespace {

struct RawReason {
    long long code; // SVM_EXIT_ERR is -1
    const char* name;
};
constexpr RawReason kSvmRaw[] = {SVM_EXIT_REASONS};
constexpr RawReason kVmxRaw[] = {VMX_EXIT_REASONS};

template <std::size_t N>
constexpr std::array<HwExitReason, N> convert(HwIsa isa, const RawReason (&raw)[N]) {
    std::array<HwExitReason, N> reasons{};
    for (std::size_t i = 0; i < N; ++i)
        reasons[i] = HwExitReason{isa, static_cast<std::uint32_t>(raw[i].code), raw[i].name};
    return reasons;
}

constexpr auto kSvm = convert(HwIsa::Svm, kSvmRaw);
constexpr auto kVmx = convert(HwIsa::Vmx, kVmxRaw);

static_assert(std::ranges::any_of(kSvm, [](const auto& r) { return r.code == 0x07b && r.name == "io"; }));
static_assert(std::ranges::any_of(kVmx,
                                  [](const auto& r) { return r.code == 30 && r.name == "IO_INSTRUCTION"; }));

constexpr std::uint32_t kVmxBasicReasonMask = 0xffff;

std::string_view trim(std::string_view text) {
    const auto first = text.find_first_not_of(" \t\r\n");
    if (first == std::string_view::npos) return {};
    const auto last = text.find_last_not_of(" \t\r\n");
    return text.substr(first, last - first + 1);
}

std::vector<std::string_view> split(std::string_view text) {
    std::vector<std::string_view> tokens;
    std::size_t at = 0;
    while (at < text.size()) {
        const auto start = text.find_first_not_of(" \t\r\n", at);
        if (start == std::string_view::npos) break;
        auto end = text.find_first_of(" \t\r\n", start);
        if (end == std::string_view::npos) end = text.size();
        tokens.push_back(text.substr(start, end - start));
        at = end;
    }
    return tokens;
}

// Decimal, or hex with a 0x prefix; `hex_default` reads unprefixed digits as hex (the old "info %llx").
template <typename Integer>
std::optional<Integer> parse_integer(std::string_view text, bool hex_default = false) {
    int base = hex_default ? 16 : 10;
    if (text.starts_with("0x") || text.starts_with("0X")) {
        text.remove_prefix(2);
        base = 16;
    }
    Integer value{};
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value, base);
    if (text.empty() || error != std::errc{} || end != text.data() + text.size()) return std::nullopt;
    return value;
}

bool is_numeric(std::string_view text) {
    return !text.empty() && text.front() >= '0' && text.front() <= '9';
}

std::unexpected<KvmExitParseError> malformed(std::string message) {
    return std::unexpected(KvmExitParseError{KvmExitParseError::Kind::Malformed, std::move(message)});
}

// "CPU 0/KVM-1234    [001] d..2.  123.456789" (the part before ": kvm_exit: ").
std::expected<void, KvmExitParseError> parse_prefix(std::string_view prefix, KvmExitEvent& event) {
    const auto tokens = split(prefix);
    if (tokens.size() < 3) return malformed("kvm_exit line without task, CPU and timestamp");
    const auto timestamp = tokens.back();
    const auto [end, error] =
        std::from_chars(timestamp.data(), timestamp.data() + timestamp.size(), event.timestamp_s);
    if (error != std::errc{} || end != timestamp.data() + timestamp.size())
        return malformed(fmt::format("timestamp '{}' is not a number", timestamp));
    // The CPU is the last "[NNN]" token; the flags column between it and the timestamp is optional.
    std::size_t cpu_token = tokens.size();
    for (std::size_t i = tokens.size() - 1; i-- > 0;) {
        const auto token = tokens[i];
        if (token.size() >= 3 && token.front() == '[' && token.back() == ']') {
            if (auto cpu = parse_integer<std::uint32_t>(token.substr(1, token.size() - 2))) {
                event.host_cpu = *cpu;
                cpu_token = i;
                break;
            }
        }
    }
    if (cpu_token == tokens.size()) return malformed("kvm_exit line without a [CPU] column");
    // Everything before the CPU column is "comm-tid", optionally followed by "(tgid)" (record-tgid).
    auto task = trim(prefix.substr(0, static_cast<std::size_t>(tokens[cpu_token].data() - prefix.data())));
    if (task.ends_with(')')) {
        if (const auto open = task.rfind('('); open != std::string_view::npos)
            task = trim(task.substr(0, open));
    }
    const auto dash = task.rfind('-');
    if (dash == std::string_view::npos) return malformed(fmt::format("task '{}' has no -TID", task));
    const auto tid = parse_integer<std::uint32_t>(task.substr(dash + 1));
    if (!tid) return malformed(fmt::format("task '{}' has no numeric TID", task));
    event.tid = *tid;
    event.task = std::string(task.substr(0, dash));
    return {};
}

} // namespace

const char* hw_isa_name(HwIsa isa) {
    return isa == HwIsa::Svm ? "svm" : "vmx";
}

std::span<const HwExitReason> svm_exit_reasons() {
    return kSvm;
}

std::span<const HwExitReason> vmx_exit_reasons() {
    return kVmx;
}

std::optional<std::string_view> hw_exit_reason_name(HwIsa isa, std::uint32_t code) {
    if (isa == HwIsa::Vmx) code &= kVmxBasicReasonMask;
    const auto table = isa == HwIsa::Svm ? svm_exit_reasons() : vmx_exit_reasons();
    const auto found = std::ranges::find(table, code, &HwExitReason::code);
    if (found == table.end()) return std::nullopt;
    return found->name;
}

std::optional<HwExitReason> hw_exit_reason_by_name(std::string_view name) {
    for (const auto table : {svm_exit_reasons(), vmx_exit_reasons()}) {
        const auto found = std::ranges::find(table, name, &HwExitReason::name);
        if (found != table.end()) return *found;
    }
    return std::nullopt;
}

std::expected<KvmExitEvent, KvmExitParseError> parse_kvm_exit_line(std::string_view line,
                                                                   std::optional<HwIsa> isa_hint) {
    constexpr std::string_view kMarker = ": kvm_exit: ";
    const auto marker = line.find(kMarker);
    if (marker == std::string_view::npos)
        return std::unexpected(KvmExitParseError{KvmExitParseError::Kind::NotKvmExit, "not a kvm_exit line"});
    KvmExitEvent event;
    if (auto prefix = parse_prefix(line.substr(0, marker), event); !prefix)
        return std::unexpected(std::move(prefix.error()));

    const auto tokens = split(line.substr(marker + kMarker.size()));
    bool have_reason = false;
    bool have_rip = false;
    const auto number = [&](std::size_t index, const char* field, bool hex_default,
                            auto& out) -> std::expected<void, KvmExitParseError> {
        using Integer = std::remove_reference_t<decltype(out)>;
        if (index >= tokens.size()) return malformed(fmt::format("'{}' without a value", field));
        auto value = parse_integer<Integer>(tokens[index], hex_default);
        if (!value) return malformed(fmt::format("{} '{}' is not a number", field, tokens[index]));
        out = *value;
        return {};
    };
    for (std::size_t i = 0; i < tokens.size(); ++i) {
        const auto key = tokens[i];
        std::expected<void, KvmExitParseError> parsed;
        if (key == "vcpu") {
            std::uint32_t vcpu = 0;
            parsed = number(++i, "vcpu", false, vcpu);
            event.vcpu = vcpu;
        } else if (key == "reason") {
            // The name may hold spaces ("DE excp") and VMX may add flags: take everything up to "rip".
            std::size_t end = i + 1;
            while (end < tokens.size() && tokens[end] != "rip")
                ++end;
            if (end == i + 1) return malformed("'reason' without a value");
            std::vector<std::string_view> words(tokens.begin() + static_cast<std::ptrdiff_t>(i) + 1,
                                                tokens.begin() + static_cast<std::ptrdiff_t>(end));
            if (words.size() > 1 && words.back() == "FAILED_VMENTRY") {
                event.failed_vmentry = true;
                words.pop_back();
            }
            std::string reason;
            for (const auto word : words)
                reason += (reason.empty() ? "" : " ") + std::string(word);
            if (is_numeric(reason)) {
                auto code = parse_integer<std::uint32_t>(reason);
                if (!code) return malformed(fmt::format("reason '{}' is not a number", reason));
                event.code = *code;
                event.isa = isa_hint;
            } else if (auto known = hw_exit_reason_by_name(reason)) {
                event.code = known->code;
                event.isa = known->isa;
            }
            event.reason = std::move(reason);
            have_reason = true;
            i = end - 1;
        } else if (key == "rip") {
            parsed = number(++i, "rip", true, event.rip);
            have_rip = true;
        } else if (key == "info1") {
            parsed = number(++i, "info1", true, event.info1);
        } else if (key == "info2") {
            parsed = number(++i, "info2", true, event.info2);
        } else if (key == "info") { // before 5.10: "info %llx %llx"
            parsed = number(++i, "info", true, event.info1);
            if (parsed) parsed = number(++i, "info", true, event.info2);
        } else if (key == "intr_info") {
            parsed = number(++i, "intr_info", true, event.intr_info);
        } else if (key == "error_code") {
            parsed = number(++i, "error_code", true, event.error_code);
        }
        if (!parsed) return std::unexpected(std::move(parsed.error()));
    }
    if (!have_reason) return malformed("kvm_exit line without a reason");
    if (!have_rip) return malformed("kvm_exit line without a rip");
    return event;
}

KvmExitCounter::KvmExitCounter(std::vector<std::uint32_t> tids, std::optional<HwIsa> isa_hint)
    : tids_(std::move(tids)), isa_hint_(isa_hint) {
    std::ranges::sort(tids_);
}

void KvmExitCounter::add_line(std::string_view line) {
    auto event = parse_kvm_exit_line(line, isa_hint_);
    if (event)
        add(*event);
    else if (event.error().kind == KvmExitParseError::Kind::Malformed)
        ++malformed_;
}

void KvmExitCounter::add(const KvmExitEvent& event) {
    if (!tids_.empty() && !std::ranges::binary_search(tids_, event.tid)) {
        ++filtered_;
        return;
    }
    ++total_;
    std::optional<std::string_view> name;
    if (event.isa && event.code && is_numeric(event.reason))
        name = hw_exit_reason_name(*event.isa, *event.code);
    const std::string_view key = name ? *name : std::string_view(event.reason);
    auto found = counts_.find(key);
    if (found == counts_.end()) found = counts_.emplace(std::string(key), 0).first;
    ++found->second;
}

std::uint64_t KvmExitCounter::count(std::string_view reason) const {
    const auto found = counts_.find(reason);
    return found == counts_.end() ? 0 : found->second;
}

std::vector<std::pair<std::string, std::uint64_t>> KvmExitCounter::by_reason() const {
    std::vector<std::pair<std::string, std::uint64_t>> rows(counts_.begin(), counts_.end());
    std::ranges::sort(rows, [](const auto& a, const auto& b) {
        return a.second != b.second ? a.second > b.second : a.first < b.first;
    });
    return rows;
}

std::string KvmExitCounter::format() const {
    std::string out = fmt::format("{:<28} {:>12} {:>7}\n", "kvm_exit reason", "count", "share");
    for (const auto& [reason, count] : by_reason())
        out += fmt::format("{:<28} {:>12} {:>6.1f}%\n", reason, count,
                           100.0 * static_cast<double>(count) / static_cast<double>(total_));
    out += fmt::format("{:<28} {:>12}\n", "total", total_);
    if (malformed_ != 0) out += fmt::format("({} kvm_exit lines did not parse)\n", malformed_);
    return out;
}

} // namespace vmmlab
