// Include this instead of <linux/kvm.h>. Linux 6.1's uapi headers declare flexible arrays through
// __DECLARE_FLEX_ARRAY, whose empty inner struct has size 1 in C++ (0 in C): in C++ it moves
// kvm_cpuid2::entries from offset 8 to 12 and changes the ioctl numbers derived from the struct sizes, so
// the kernel answers KVM_GET_SUPPORTED_CPUID with EINVAL. Redefine it as the kernel means it.
#pragma once

#include <linux/stddef.h>

#undef __DECLARE_FLEX_ARRAY
#define __DECLARE_FLEX_ARRAY(TYPE, NAME) TYPE NAME[0]

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpedantic" // zero-length arrays: a GNU extension, as in the kernel's own C
#include <linux/kvm.h>
#pragma GCC diagnostic pop

#include <cstddef>

static_assert(offsetof(kvm_cpuid2, entries) == 8, "kvm_cpuid2 must have the kernel's layout");
static_assert(sizeof(kvm_cpuid2) == 8, "kvm_cpuid2 must have the kernel's layout");
static_assert(offsetof(kvm_msrs, entries) == 8, "kvm_msrs must have the kernel's layout");
