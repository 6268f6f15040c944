// Builds one visitor for std::visit out of several lambdas.
#pragma once

namespace vmmlab {

template <class... Ts>
struct Overloaded : Ts... {
    using Ts::operator()...;
};
template <class... Ts>
Overloaded(Ts...) -> Overloaded<Ts...>; // clang 14 has no aggregate deduction

} // namespace vmmlab
