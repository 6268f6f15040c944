// The first proof that the path to a real /dev/kvm works: a VM with one memory slot and one vCPU runs a
// few real-mode instructions, and every exit they cause arrives decoded with the right fields.
#include <catch2/catch.hpp>
#include <cstdio>
#include <cstring>

#include <sys/mman.h>

#include "cpu/exit.hpp"
#include "kvm/capabilities.hpp"
#include "kvm/kvm.hpp"

using namespace vmmlab;

namespace {
constexpr std::uint64_t kSlotSize = 0x10000;
constexpr std::uint64_t kCodeAddress = 0x1000;

// Real mode, CS base 0:
//   mov dx, 0x501 ; mov al, 0xab ; out dx, al       -> io-out 0x501 size 1 value 0xab
//   mov ax, 0xbeef ; out dx, ax                     -> io-out 0x501 size 2 value 0xbeef
//   in al, dx                                       -> io-in 0x501 size 1 (we answer 0x5a)
//   inc dx ; add al, 1 ; out dx, al                 -> io-out 0x502 size 1 value 0x5b
//   hlt                                             -> hlt
constexpr std::uint8_t kGuestCode[] = {
    0xba, 0x01, 0x05, 0xb0, 0xab, 0xee, 0xb8, 0xef, 0xbe, 0xef, 0xec, 0x42, 0x04, 0x01, 0xee, 0xf4,
};

struct AnonymousMemory {
    void* base;
    explicit AnonymousMemory(std::size_t size)
        : base(::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)) {
        REQUIRE(base != MAP_FAILED);
    }
    ~AnonymousMemory() { ::munmap(base, kSlotSize); }
};

VcpuExit run_to_next_exit(kvm::VcpuFd& vcpu) {
    while (vcpu.run() == kvm::VcpuFd::RunResult::Interrupted) {
    }
    auto exit = decode(vcpu.run_area());
    std::printf("observed exit: %s\n", describe(exit).c_str());
    return exit;
}

std::uint32_t value_of(std::span<const std::byte> data) {
    std::uint32_t value = 0;
    std::memcpy(&value, data.data(), std::min(data.size(), sizeof value));
    return value;
}
} // namespace

TEST_CASE("/dev/kvm speaks the stable API and has what vmmlab requires", "[kvm]") {
    auto system = kvm::KvmSystem::open();
    CHECK(system.api_version() == 12);
    CHECK_NOTHROW(kvm::require_capabilities(system));
    CHECK(system.vcpu_mmap_size() >= sizeof(kvm_run));
}

TEST_CASE("real-mode OUT and IN instructions exit to userspace with port, size, direction and value",
          "[kvm]") {
    auto system = kvm::KvmSystem::open();
    auto vm = system.create_vm();
    AnonymousMemory memory(kSlotSize);
    std::memcpy(static_cast<std::byte*>(memory.base) + kCodeAddress, kGuestCode, sizeof kGuestCode);
    vm.set_user_memory_region(0, 0, kSlotSize, memory.base);
    auto vcpu = vm.create_vcpu(0);

    auto sregs = vcpu.sregs();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(sregs);
    kvm_regs regs{};
    regs.rip = kCodeAddress;
    regs.rflags = 0x2; // bit 1 is reserved and must be set
    vcpu.set_regs(regs);

    auto first = run_to_next_exit(vcpu);
    REQUIRE(std::holds_alternative<IoOut>(first));
    CHECK(std::get<IoOut>(first).port == PioAddress{0x501});
    CHECK(std::get<IoOut>(first).size == 1);
    CHECK(std::get<IoOut>(first).count == 1);
    CHECK(value_of(std::get<IoOut>(first).data) == 0xab);

    auto second = run_to_next_exit(vcpu);
    REQUIRE(std::holds_alternative<IoOut>(second));
    CHECK(std::get<IoOut>(second).port == PioAddress{0x501});
    CHECK(std::get<IoOut>(second).size == 2);
    CHECK(value_of(std::get<IoOut>(second).data) == 0xbeef);

    auto third = run_to_next_exit(vcpu);
    REQUIRE(std::holds_alternative<IoIn>(third));
    CHECK(std::get<IoIn>(third).port == PioAddress{0x501});
    CHECK(std::get<IoIn>(third).size == 1);
    std::get<IoIn>(third).data[0] = std::byte{0x5a}; // what the guest's AL receives on the next KVM_RUN

    auto fourth = run_to_next_exit(vcpu);
    REQUIRE(std::holds_alternative<IoOut>(fourth));
    CHECK(std::get<IoOut>(fourth).port == PioAddress{0x502});
    CHECK(value_of(std::get<IoOut>(fourth).data) == 0x5b);

    auto fifth = run_to_next_exit(vcpu);
    CHECK(std::holds_alternative<Hlt>(fifth));
    CHECK(vcpu.regs().rip == kCodeAddress + sizeof kGuestCode);
}
