#include "guest/workloads/cmdline.hpp"

namespace vmmlab::guest {
namespace {

bool is_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

// Splits off the next word; returns false when none is left.
bool next_word(Text& rest, Text& word) {
    size_t start = 0;
    while (start < rest.size && is_space(rest[start]))
        ++start;
    if (start == rest.size) return false;
    size_t end = start;
    while (end < rest.size && !is_space(rest[end]))
        ++end;
    word = Text{rest.data + start, end - start};
    rest = rest.drop(end);
    return true;
}

char lower(char c) {
    return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

} // namespace

const Option* CommandLine::find(Text key) const {
    for (size_t i = 0; i < option_count; ++i)
        if (options[i].key == key) return &options[i];
    return nullptr;
}

ParseError parse_command_line(Text text, CommandLine& out) {
    out = CommandLine{};
    out.workload = "hello";
    Text rest = text;
    Text word;
    bool first = true;
    while (next_word(rest, word)) {
        const size_t equals = word.find('=');
        if (first && equals == word.size) {
            out.workload = word;
            first = false;
            continue;
        }
        first = false;
        if (equals == word.size) return {"expected key=value", word};
        if (equals == 0) return {"option without a name", word};
        if (equals + 1 == word.size) return {"option without a value", word};
        const Option option{word.first(equals), word.drop(equals + 1)};
        if (out.find(option.key) != nullptr) return {"option given twice", word};
        if (out.option_count == kMaxOptions) return {"too many options", word};
        out.options[out.option_count++] = option;
    }
    return {};
}

NumberResult parse_count(Text text) {
    if (text.empty()) return {};
    uint64_t value = 0;
    for (size_t i = 0; i < text.size; ++i) {
        const char c = text[i];
        if (c < '0' || c > '9') return {};
        const auto digit = static_cast<uint64_t>(c - '0');
        if (value > (UINT64_MAX - digit) / 10) return {};
        value = value * 10 + digit;
    }
    return {true, value};
}

NumberResult parse_size(Text text) {
    size_t digits = 0;
    while (digits < text.size && text[digits] >= '0' && text[digits] <= '9')
        ++digits;
    const NumberResult number = parse_count(text.first(digits));
    if (!number.ok) return {};
    Text suffix = text.drop(digits);
    unsigned shift = 0;
    if (!suffix.empty()) {
        switch (lower(suffix[0])) {
        case 'k':
            shift = 10;
            break;
        case 'm':
            shift = 20;
            break;
        case 'g':
            shift = 30;
            break;
        case 't':
            shift = 40;
            break;
        case 'b':
            break; // plain "B" after a byte count
        default:
            return {};
        }
        if (shift != 0) suffix = suffix.drop(1);
        if (!(suffix.empty() || suffix == Text{"B"} || suffix == Text{"b"} || suffix == Text{"iB"}))
            return {};
    }
    if (shift != 0 && number.value > (UINT64_MAX >> shift)) return {};
    return {true, number.value << shift};
}

} // namespace vmmlab::guest
