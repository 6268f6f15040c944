#include "base/error.hpp"

#include <cstring>

namespace vmmlab {

namespace {
std::string compose(const std::string& what_failed, int error_number, const std::string& hint) {
    std::string message = what_failed + ": " + std::strerror(error_number);
    if (!hint.empty()) message += " (" + hint + ")";
    return message;
}
} // namespace

SystemError::SystemError(const std::string& what_failed, int error_number, const std::string& hint)
    : std::runtime_error(compose(what_failed, error_number, hint)), error_number_(error_number) {
}

} // namespace vmmlab
