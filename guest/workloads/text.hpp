// Text handling that works without a hosted C++ library: a borrowed piece of text, a fixed-size line
// builder with integer and fixed-point formatting, and the `@result` line formatter.
#pragma once

#include <stddef.h>
#include <stdint.h>

namespace vmmlab::guest {

// A borrowed, not necessarily NUL-terminated piece of text (std::string_view would pull in the hosted
// library's exception helpers, which the freestanding guest does not have).
struct Text {
    const char* data = "";
    size_t size = 0;

    constexpr Text() = default;
    constexpr Text(const char* text, size_t length) : data(text), size(length) {}
    // Implicit on purpose: string literals are the usual source.
    constexpr Text(const char* text) : data(text), size(length_of(text)) {} // NOLINT

    static constexpr size_t length_of(const char* text) {
        size_t length = 0;
        while (text[length] != '\0')
            ++length;
        return length;
    }
    constexpr bool empty() const { return size == 0; }
    constexpr char operator[](size_t index) const { return data[index]; }
    constexpr Text first(size_t count) const { return {data, count < size ? count : size}; }
    constexpr Text drop(size_t count) const {
        return count < size ? Text{data + count, size - count} : Text{data + size, 0};
    }
    // Index of the first `c`, or `size` when there is none.
    constexpr size_t find(char c) const {
        for (size_t i = 0; i < size; ++i)
            if (data[i] == c) return i;
        return size;
    }
    friend constexpr bool operator==(Text a, Text b) {
        if (a.size != b.size) return false;
        for (size_t i = 0; i < a.size; ++i)
            if (a.data[i] != b.data[i]) return false;
        return true;
    }
};

// One output line built in place; text past the capacity is dropped and marks the line truncated.
class Line {
public:
    static constexpr size_t kCapacity = 320;

    Line& put(Text text);
    Line& put(char c);
    Line& put_u64(uint64_t value);
    Line& put_i64(int64_t value);
    Line& put_hex(uint64_t value); // 0x-prefixed, lower case, no padding
    // Fixed-point decimal with `decimals` fractional digits (at most 9), rounded half up; "nan" and
    // "inf" for values that have no decimal form.
    Line& put_fixed(double value, unsigned decimals);
    // 4096 -> "4 KiB", 2097152 -> "2 MiB"; sizes that are no whole multiple stay in bytes.
    Line& put_bytes(uint64_t bytes);

    Text text() const { return {buffer_, size_}; }
    bool truncated() const { return truncated_; }
    void clear() {
        size_ = 0;
        truncated_ = false;
    }

private:
    char buffer_[kCapacity];
    size_t size_ = 0;
    bool truncated_ = false;
};

// The value of one `@result` line: a whole number, or a fixed-point one with a given number of decimals.
struct ResultValue {
    bool is_integer = true;
    uint64_t integer = 0;
    double real = 0;
    unsigned decimals = 0;

    static constexpr ResultValue whole(uint64_t value) { return {true, value, 0, 0}; }
    static constexpr ResultValue fixed(double value, unsigned decimal_digits) {
        return {false, 0, value, decimal_digits};
    }
};

// `@result workload=<workload> metric=<metric> value=<value> unit=<unit>[ vcpu=<vcpu>]`, no newline.
// vcpu < 0 leaves the vcpu field out.
void format_result(Line& line, Text workload, Text metric, ResultValue value, Text unit, int vcpu = -1);

} // namespace vmmlab::guest
