#include "guest/workloads/text.hpp"

#include "guest/abi/boot_abi.hpp"

namespace vmmlab::guest {

Line& Line::put(Text text) {
    for (size_t i = 0; i < text.size; ++i)
        put(text[i]);
    return *this;
}

Line& Line::put(char c) {
    if (size_ < kCapacity)
        buffer_[size_++] = c;
    else
        truncated_ = true;
    return *this;
}

Line& Line::put_u64(uint64_t value) {
    char digits[20];
    size_t count = 0;
    do {
        digits[count++] = static_cast<char>('0' + value % 10);
        value /= 10;
    } while (value != 0);
    while (count > 0)
        put(digits[--count]);
    return *this;
}

Line& Line::put_i64(int64_t value) {
    if (value < 0) {
        put('-');
        // Negate in unsigned arithmetic so INT64_MIN works.
        return put_u64(~static_cast<uint64_t>(value) + 1);
    }
    return put_u64(static_cast<uint64_t>(value));
}

Line& Line::put_hex(uint64_t value) {
    put("0x");
    char digits[16];
    size_t count = 0;
    do {
        const auto nibble = static_cast<unsigned>(value & 0xf);
        digits[count++] = static_cast<char>(nibble < 10 ? '0' + nibble : 'a' + (nibble - 10));
        value >>= 4;
    } while (value != 0);
    while (count > 0)
        put(digits[--count]);
    return *this;
}

Line& Line::put_fixed(double value, unsigned decimals) {
    if (value != value) return put("nan");
    if (value < 0) {
        put('-');
        value = -value;
    }
    if (decimals > 9) decimals = 9;
    uint64_t scale = 1;
    for (unsigned i = 0; i < decimals; ++i)
        scale *= 10;
    const double scaled = value * static_cast<double>(scale) + 0.5;
    if (!(scaled < 18446744073709549568.0)) return put("inf"); // beyond what 64 bits hold
    const auto fixed = static_cast<uint64_t>(scaled);
    put_u64(fixed / scale);
    if (decimals == 0) return *this;
    put('.');
    uint64_t fraction = fixed % scale;
    char digits[9];
    for (unsigned i = decimals; i > 0; --i) {
        digits[i - 1] = static_cast<char>('0' + fraction % 10);
        fraction /= 10;
    }
    for (unsigned i = 0; i < decimals; ++i)
        put(digits[i]);
    return *this;
}

Line& Line::put_bytes(uint64_t bytes) {
    constexpr uint64_t kKiB = 1024;
    if (bytes != 0 && bytes % (kKiB * kKiB * kKiB) == 0)
        return put_u64(bytes / (kKiB * kKiB * kKiB)).put(" GiB");
    if (bytes != 0 && bytes % (kKiB * kKiB) == 0) return put_u64(bytes / (kKiB * kKiB)).put(" MiB");
    if (bytes != 0 && bytes % kKiB == 0) return put_u64(bytes / kKiB).put(" KiB");
    return put_u64(bytes).put(" bytes");
}

void format_result(Line& line, Text workload, Text metric, ResultValue value, Text unit, int vcpu) {
    line.put(abi::kResultPrefix).put("workload=").put(workload).put(" metric=").put(metric).put(" value=");
    if (value.is_integer)
        line.put_u64(value.integer);
    else
        line.put_fixed(value.real, value.decimals);
    line.put(" unit=").put(unit);
    if (vcpu >= 0) line.put(" vcpu=").put_i64(vcpu);
}

} // namespace vmmlab::guest
