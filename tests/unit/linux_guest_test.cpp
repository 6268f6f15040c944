// prepare_linux_guest on vector-backed RAM with a synthetic bzImage: what lands where, the boot registers,
// the identity map, and which part an error blames.
#include <catch2/catch.hpp>
#include <cstring>
#include <string>

#include "arch/x86/long_mode.hpp"
#include "boot/linux_guest.hpp"
#include "linux_test_support.hpp"
#include "memory/page_tables.hpp"

using namespace vmmlab;
using vmmlab::test::BzImageBuilder;
using vmmlab::test::read_bytes;
using vmmlab::test::read_guest;
using vmmlab::test::vector_memory;
using Part = LinuxGuestError::Part;

namespace {
constexpr std::uint64_t kMiB = 1ULL << 20;

std::string text_at(const GuestMemory& memory, std::uint64_t address, std::size_t length) {
    auto bytes = read_bytes(memory, address, length);
    return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

LinuxGuestParams params_for(std::span<const std::byte> kernel, unsigned vcpus = 1) {
    LinuxGuestParams params;
    params.vcpus = vcpus;
    params.kernel = kernel;
    return params;
}

LinuxGuestError error_of(const GuestMemory& memory, const LinuxGuestParams& params) {
    auto layout = prepare_linux_guest(memory, params);
    REQUIRE_FALSE(layout.has_value());
    CHECK(layout.error().message.find('\n') == std::string::npos);
    return layout.error();
}
} // namespace

TEST_CASE("linux guest: kernel, firmware tables, page tables, GDT and boot registers",
          "[linux][linux-guest]") {
    auto memory = vector_memory({{0, 64 * kMiB}});
    const auto kernel = BzImageBuilder{}.build();
    const std::vector<std::byte> initrd(3 * 4096, std::byte{0x5a});
    auto params = params_for(kernel, 2);
    params.initrd = initrd;
    params.command_line = "console=ttyS0 panic=-1";
    auto layout = prepare_linux_guest(memory, params);
    REQUIRE(layout.has_value());

    // The boot vCPU enters the kernel's 64-bit entry with RSI at the zero page and interrupts off.
    CHECK(layout->loaded.kernel.value == 0x1000000);
    CHECK(layout->boot_regs.rip == 0x1000000 + 0x200);
    CHECK(layout->boot_regs.rsi == kLinuxZeroPageAddress);
    CHECK(layout->boot_regs.rflags == 0x2);
    CHECK(text_at(memory, kLinuxCommandLineAddress, 23) == std::string("console=ttyS0 panic=-1\0", 23));
    CHECK(layout->loaded.initrd_size == initrd.size());

    // The zero page points at the RSDP, which is where the tables were written.
    CHECK(layout->acpi.rsdp.value == x86::acpi::kAcpiTablesAddress);
    CHECK(read_guest<boot_params>(memory, kLinuxZeroPageAddress).acpi_rsdp_addr == layout->acpi.rsdp.value);
    CHECK(text_at(memory, layout->acpi.rsdp.value, 8) == "RSD PTR ");
    REQUIRE(layout->mp_table.has_value());
    CHECK(text_at(memory, x86::mptable::kMpTableAddress, 4) == "_MP_");

    // [0, 4 GiB) is identity-mapped with 2 MiB leaves from the suggested area.
    CHECK(layout->cr3 == kLinuxPageTableArea);
    CHECK(layout->identity_map_limit == 1ULL << 32);
    const std::uint64_t addresses[] = {0, kLinuxZeroPageAddress, layout->boot_regs.rip, 0xfee00000,
                                       (1ULL << 32) - 1};
    for (std::uint64_t address : addresses) {
        auto translation = walk(memory, layout->cr3, address);
        REQUIRE(translation.has_value());
        CHECK(translation->address.value == address);
        CHECK(translation->page_size == PageSize::k2M);
    }
    CHECK_FALSE(walk(memory, layout->cr3, 1ULL << 32).has_value());

    // The BIOS reset vector pulses the i8042 reset line.
    const auto stub = read_bytes(memory, kLinuxResetVectorAddress, 4);
    CHECK(stub == std::vector<std::byte>{std::byte{0xb0}, std::byte{0xfe}, std::byte{0xe6}, std::byte{0x64}});

    // The flat GDT: null, 64-bit code at 0x8, data at 0x10.
    CHECK(layout->gdt.value == kLinuxGdtAddress);
    CHECK(read_guest<std::uint64_t>(memory, kLinuxGdtAddress) == 0);
    CHECK(((read_guest<std::uint64_t>(memory, kLinuxGdtAddress + x86::kCodeSelector) >> 53) & 1) == 1); // L
}

TEST_CASE("linux guest: the MP table is left out when asked or when the vCPUs exceed it",
          "[linux][linux-guest]") {
    auto memory = vector_memory({{0, 64 * kMiB}});
    const auto kernel = BzImageBuilder{}.build();
    auto params = params_for(kernel);
    params.mp_table = false;
    auto without = prepare_linux_guest(memory, params);
    REQUIRE(without.has_value());
    CHECK_FALSE(without->mp_table.has_value());
    auto many = prepare_linux_guest(memory, params_for(kernel, x86::mptable::kMaxVcpus + 1));
    REQUIRE(many.has_value());
    CHECK_FALSE(many->mp_table.has_value());
}

TEST_CASE("linux guest: each error names the part at fault and leaves memory alone for a bad kernel",
          "[linux][linux-guest]") {
    auto memory = vector_memory({{0, 64 * kMiB}});
    auto kernel = BzImageBuilder{}.build();

    auto garbage = kernel;
    std::memset(garbage.data(), 0x41, garbage.size());
    auto error = error_of(memory, params_for(garbage));
    CHECK(error.part == Part::Kernel);
    CHECK_THAT(error.message, Catch::StartsWith("not a bzImage"));
    CHECK(read_bytes(memory, x86::acpi::kAcpiTablesAddress, 8) == std::vector<std::byte>(8, std::byte{0}));

    auto truncated = kernel;
    truncated.resize(truncated.size() - 16);
    error = error_of(memory, params_for(truncated));
    CHECK(error.part == Part::Kernel);
    CHECK_THAT(error.message, Catch::StartsWith("truncated bzImage"));

    const std::vector<std::byte> huge_initrd(60 * kMiB);
    auto params = params_for(kernel);
    params.initrd = huge_initrd;
    CHECK(error_of(memory, params).part == Part::Initrd);
    params = params_for(kernel);
    params.command_line = std::string(5000, 'x');
    CHECK(error_of(memory, params).part == Part::CommandLine);

    // RAM that does not reach the ACPI area at 0xe0000.
    auto small = vector_memory({{0, 0x80000}});
    CHECK(error_of(small, params_for(kernel)).part == Part::Platform);
}
