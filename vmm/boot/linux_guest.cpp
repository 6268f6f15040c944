#include "boot/linux_guest.hpp"

#include <algorithm>
#include <utility>

#include <fmt/format.h>

#include "arch/x86/long_mode.hpp"
#include "memory/page_tables.hpp"

namespace vmmlab {

namespace {
using Part = LinuxGuestError::Part;

std::unexpected<LinuxGuestError> fail(Part part, std::string message) {
    return std::unexpected(LinuxGuestError{part, std::move(message)});
}

Part part_of(BzImageError::Kind kind) {
    switch (kind) {
    case BzImageError::Kind::InitrdTooLarge:
        return Part::Initrd;
    case BzImageError::Kind::CommandLineTooLong:
        return Part::CommandLine;
    case BzImageError::Kind::LowMemoryMissing:
        return Part::Platform;
    default:
        return Part::Kernel;
    }
}
} // namespace

std::expected<LinuxGuestLayout, LinuxGuestError> prepare_linux_guest(const GuestMemory& memory,
                                                                     const LinuxGuestParams& params) {
    if (auto header = parse_bzimage(params.kernel); !header)
        return fail(Part::Kernel, header.error().message);

    LinuxGuestLayout layout;
    auto acpi = x86::acpi::write_acpi_tables(memory, GuestAddress{x86::acpi::kAcpiTablesAddress},
                                             x86::acpi::kAcpiTablesAreaSize, {.vcpus = params.vcpus});
    if (!acpi) return fail(Part::Platform, acpi.error());
    layout.acpi = *acpi;
    if (params.mp_table && params.vcpus <= x86::mptable::kMaxVcpus) {
        auto mp_table = x86::mptable::write_mp_table(memory, GuestAddress{x86::mptable::kMpTableAddress},
                                                     x86::mptable::kMpTableAreaSize, {.vcpus = params.vcpus});
        if (!mp_table) return fail(Part::Platform, mp_table.error());
        layout.mp_table = *mp_table;
    }

    LinuxBootOptions options;
    options.command_line = params.command_line;
    options.initrd = params.initrd;
    options.acpi_rsdp = layout.acpi.rsdp.value;
    auto loaded = load_bzimage(params.kernel, memory, options);
    if (!loaded) return fail(part_of(loaded.error().kind), loaded.error().message);
    layout.loaded = std::move(*loaded);

    layout.identity_map_limit = std::max(kLinuxIdentityMapMinimum, layout.loaded.minimum_identity_map);
    auto map = build_identity_map(memory, GuestAddress{kLinuxPageTableArea}, kLinuxPageTableAreaSize,
                                  layout.identity_map_limit, PageSize::k2M);
    if (!map)
        return fail(Part::Platform, fmt::format("identity map of [0, {:#x}): {}", layout.identity_map_limit,
                                                map.error().message));
    layout.cr3 = map->cr3;

    layout.gdt = GuestAddress{kLinuxGdtAddress};
    if (!memory.contains(layout.gdt, 3 * sizeof(std::uint64_t)))
        return fail(Part::Platform, fmt::format("the GDT at {:#x} is not guest RAM", kLinuxGdtAddress));
    x86::write_flat_gdt(memory, layout.gdt);

    if (auto written =
            memory.write(GuestAddress{kLinuxResetVectorAddress}, std::as_bytes(std::span(kLinuxResetStub)));
        !written)
        return fail(Part::Platform, "reset vector: " + written.error().describe());

    layout.boot_regs.rip = layout.loaded.entry.value;
    layout.boot_regs.rsi = layout.loaded.zero_page.value;
    layout.boot_regs.rflags = 0x2; // bit 1 is always set; IF clear
    return layout;
}

} // namespace vmmlab
