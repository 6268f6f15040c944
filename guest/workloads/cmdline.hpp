// The guest command line: `<workload> [key=value ...]`, words separated by spaces or tabs. An empty line
// means `hello`; a first word that holds '=' is an option of the default workload `hello`.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "guest/workloads/text.hpp"

namespace vmmlab::guest {

struct Option {
    Text key;
    Text value;
};

inline constexpr size_t kMaxOptions = 16;

struct CommandLine {
    Text workload;
    Option options[kMaxOptions];
    size_t option_count = 0;

    // The option named `key`, or nullptr.
    const Option* find(Text key) const;
};

// What went wrong, and the word it went wrong at; message == nullptr means success.
struct ParseError {
    const char* message = nullptr;
    Text word;

    bool ok() const { return message == nullptr; }
};

ParseError parse_command_line(Text text, CommandLine& out);

struct NumberResult {
    bool ok = false;
    uint64_t value = 0;
};

// A byte count: decimal digits with an optional binary suffix K, M, G or T (any case), optionally
// followed by "B" or "iB": "4096", "64M", "1g", "2KiB", "3MB". Overflow and anything else fail.
NumberResult parse_size(Text text);

// A plain decimal count that fits in 64 bits.
NumberResult parse_count(Text text);

} // namespace vmmlab::guest
