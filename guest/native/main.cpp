// vmmlab-native: the tiny guest's workloads run directly on the host, the "native" column of a
// comparison. Same command line as the guest, given as arguments: `vmmlab-native stream size=64M`.
#include <string>

#include "guest/workloads/workloads.hpp"

int main(int argc, char** argv) {
    std::string command_line;
    for (int i = 1; i < argc; ++i) {
        if (i > 1) command_line += ' ';
        command_line += argv[i];
    }
    return vmmlab::guest::run_command_line({command_line.data(), command_line.size()});
}
