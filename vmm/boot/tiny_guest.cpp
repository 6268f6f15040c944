#include "boot/tiny_guest.hpp"

#include <algorithm>
#include <cstring>
#include <memory>

#include <fmt/format.h>

#include "arch/x86/long_mode.hpp"
#include "boot/elf_loader.hpp"
#include "guest/abi/boot_abi.hpp"

namespace vmmlab {

namespace {
std::uint64_t align_up(std::uint64_t value, std::uint64_t alignment) {
    return (value + alignment - 1) / alignment * alignment;
}
} // namespace

std::expected<TinyGuestLayout, std::string>
prepare_tiny_guest(const GuestMemory& memory, std::span<const std::byte> elf, const TinyGuestParams& params) {
    if (params.command_line.size() >= abi::kCommandLineSize)
        return std::unexpected(fmt::format("guest command line is {} bytes; the limit is {}",
                                           params.command_line.size(), abi::kCommandLineSize - 1));
    if (memory.regions().empty()) return std::unexpected("no guest RAM");

    auto image = load_elf64(elf, memory);
    if (!image) return std::unexpected("guest image: " + image.error().message);
    if (image->lowest.value < 0x10000)
        return std::unexpected(
            fmt::format("guest image: loads at {:#x}, inside the monitor's low area", image->lowest.value));

    TinyGuestLayout layout;
    // Map all RAM with the chosen leaf, and the rest of the 32-bit space (LAPIC, IOAPIC, MMIO devices)
    // too: with 2 MiB leaves when the choice is 4K, so that a small guest does not pay for writing 8 MiB
    // of page tables for a device space it touches a few pages of.
    const std::uint64_t leaf = page_size_bytes(params.guest_page);
    const std::uint64_t ram_end = memory.regions().back().end().value;
    layout.map_limit =
        align_up(std::max(ram_end, std::uint64_t{1} << 32), std::max(leaf, std::uint64_t{2} << 20));

    const std::uint64_t tables_at = align_up(image->highest.value + 1, 4096);
    const std::uint64_t tables_size = page_table_bytes_needed(layout.map_limit, params.guest_page, ram_end);
    auto map = build_identity_map(memory, GuestAddress{tables_at}, tables_size, layout.map_limit,
                                  params.guest_page, ram_end);
    if (!map) return std::unexpected("page tables: " + map.error().message);
    layout.cr3 = map->cr3;

    const std::uint64_t stacks_at = align_up(tables_at + map->bytes_used, 4096);
    const std::uint64_t stacks_end = stacks_at + std::uint64_t{params.vcpus} * kTinyGuestStackSize;
    if (!memory.contains(GuestAddress{stacks_at}, stacks_end - stacks_at))
        return std::unexpected(
            fmt::format("guest RAM too small for {} vCPU stacks at {:#x}", params.vcpus, stacks_at));
    layout.reserved_end = GuestAddress{stacks_end};

    x86::write_flat_gdt(memory, GuestAddress{abi::kGdtAddress});

    auto info = std::make_unique<abi::BootInfo>();
    std::memset(info.get(), 0, sizeof *info);
    info->magic = abi::kBootInfoMagic;
    info->version = abi::kBootInfoVersion;
    info->vcpu_count = params.vcpus;
    info->tsc_khz = params.tsc_khz;
    info->page_size = leaf;
    info->flags = params.flags;
    auto add_range = [&](std::uint64_t start, std::uint64_t size, abi::MemoryType type) {
        if (size == 0 || info->memory_range_count == abi::kMaxMemoryRanges) return;
        info->memory_ranges[info->memory_range_count++] = {start, size, type, 0};
    };
    for (const auto& region : memory.regions()) {
        const std::uint64_t start = region.start.value, end = region.end().value;
        const std::uint64_t reserved_until = std::clamp(stacks_end, start, end);
        add_range(start, reserved_until - start, abi::MemoryType::Reserved);
        add_range(reserved_until, end - reserved_until, abi::MemoryType::Usable);
    }
    std::memcpy(info->command_line, params.command_line.data(), params.command_line.size());
    if (auto written = memory.write_object(GuestAddress{abi::kBootInfoAddress}, *info); !written)
        return std::unexpected("boot info: " + written.error().describe());

    for (unsigned vcpu = 0; vcpu < params.vcpus; ++vcpu) {
        kvm_regs regs{};
        regs.rip = image->entry.value;
        regs.rsp = stacks_at + std::uint64_t{vcpu + 1} * kTinyGuestStackSize;
        regs.rdi = abi::kBootInfoAddress;
        regs.rsi = vcpu;
        regs.rflags = 0x2;
        layout.vcpu_regs.push_back(regs);
    }
    return layout;
}

} // namespace vmmlab
