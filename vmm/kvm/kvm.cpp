#include "kvm/kvm.hpp"

#include <cerrno>
#include <cstring>
#include <utility>

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "base/error.hpp"

namespace vmmlab::kvm {

namespace {

// ioctl() takes a variadic argument; the wrappers below give each request a typed call site.
template <typename Arg>
int do_ioctl(int fd, unsigned long request, Arg arg) {
    int result;
    do {
        result = ::ioctl(fd, request, arg);
    } while (result < 0 && errno == EINTR && request != KVM_RUN);
    return result;
}

std::string open_hint(int error_number) {
    switch (error_number) {
    case ENOENT:
        return "is the kvm module loaded? without /dev/kvm, tests run in tools/kvm-sandbox";
    case EACCES:
    case EPERM:
        return "are you in group kvm?";
    case EBUSY:
        return "another hypervisor holds the virtualisation extensions";
    default:
        return {};
    }
}

} // namespace

std::optional<std::string> kvm_unusable_reason(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd >= 0) {
        ::close(fd);
        return std::nullopt;
    }
    if (errno == ENOENT) return path + " absent";
    return SystemError(path, errno).what();
}

KvmSystem KvmSystem::open(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        int error_number = errno;
        throw SystemError(path, error_number, open_hint(error_number));
    }
    return KvmSystem(UniqueFd(fd));
}

int KvmSystem::api_version() const {
    return check_syscall(do_ioctl(fd(), KVM_GET_API_VERSION, 0), "KVM_GET_API_VERSION");
}

int KvmSystem::check_extension(unsigned capability) const {
    int result = do_ioctl(fd(), KVM_CHECK_EXTENSION, static_cast<unsigned long>(capability));
    return result < 0 ? 0 : result;
}

std::size_t KvmSystem::vcpu_mmap_size() const {
    return static_cast<std::size_t>(
        check_syscall(do_ioctl(fd(), KVM_GET_VCPU_MMAP_SIZE, 0), "KVM_GET_VCPU_MMAP_SIZE"));
}

VmFd KvmSystem::create_vm() const {
    int version = api_version();
    if (version != kStableApiVersion)
        throw SystemError("KVM API version " + std::to_string(version) + " (need " +
                              std::to_string(kStableApiVersion) + ")",
                          ENOTSUP);
    int vm = check_syscall(do_ioctl(fd(), KVM_CREATE_VM, 0UL), "KVM_CREATE_VM");
    return VmFd(UniqueFd(vm), vcpu_mmap_size());
}

std::vector<kvm_cpuid_entry2> KvmSystem::supported_cpuid() const {
    // kvm_cpuid2 ends in a flexible array; grow the buffer until the kernel stops answering E2BIG.
    for (std::uint32_t capacity = 128; capacity <= 4096; capacity *= 2) {
        std::vector<std::byte> buffer(sizeof(kvm_cpuid2) + capacity * sizeof(kvm_cpuid_entry2));
        auto* table = reinterpret_cast<kvm_cpuid2*>(buffer.data());
        table->nent = capacity;
        if (do_ioctl(fd(), KVM_GET_SUPPORTED_CPUID, table) == 0)
            return {table->entries, table->entries + table->nent};
        if (errno != E2BIG) throw SystemError("KVM_GET_SUPPORTED_CPUID", errno);
    }
    throw SystemError("KVM_GET_SUPPORTED_CPUID", E2BIG);
}

void VmFd::set_user_memory_region(std::uint32_t slot, std::uint64_t gpa, std::uint64_t size, void* host,
                                  std::uint32_t flags) {
    kvm_userspace_memory_region region{
        .slot = slot,
        .flags = flags,
        .guest_phys_addr = gpa,
        .memory_size = size,
        .userspace_addr = reinterpret_cast<std::uint64_t>(host),
    };
    check_syscall(do_ioctl(fd(), KVM_SET_USER_MEMORY_REGION, &region), "KVM_SET_USER_MEMORY_REGION");
}

int VmFd::check_extension(unsigned capability) const {
    int result = do_ioctl(fd(), KVM_CHECK_EXTENSION, static_cast<unsigned long>(capability));
    return result < 0 ? 0 : result;
}

void VmFd::enable_cap(unsigned capability, std::span<const std::uint64_t> args) {
    kvm_enable_cap request{};
    request.cap = capability;
    for (std::size_t i = 0; i < args.size() && i < std::size(request.args); ++i)
        request.args[i] = args[i];
    check_syscall(do_ioctl(fd(), KVM_ENABLE_CAP, &request), "KVM_ENABLE_CAP");
}

VcpuFd VmFd::create_vcpu(unsigned id) {
    int vcpu =
        check_syscall(do_ioctl(fd(), KVM_CREATE_VCPU, static_cast<unsigned long>(id)), "KVM_CREATE_VCPU");
    return VcpuFd(UniqueFd(vcpu), id, vcpu_mmap_size_);
}

void VmFd::set_tss_address(std::uint64_t gpa) {
    check_syscall(do_ioctl(fd(), KVM_SET_TSS_ADDR, static_cast<unsigned long>(gpa)), "KVM_SET_TSS_ADDR");
}

void VmFd::set_identity_map_address(std::uint64_t gpa) {
    check_syscall(do_ioctl(fd(), KVM_SET_IDENTITY_MAP_ADDR, &gpa), "KVM_SET_IDENTITY_MAP_ADDR");
}

void VmFd::create_irqchip() {
    check_syscall(do_ioctl(fd(), KVM_CREATE_IRQCHIP, 0UL), "KVM_CREATE_IRQCHIP");
}

void VmFd::create_pit2() {
    kvm_pit_config config{};
    config.flags = KVM_PIT_SPEAKER_DUMMY;
    check_syscall(do_ioctl(fd(), KVM_CREATE_PIT2, &config), "KVM_CREATE_PIT2");
}

void VmFd::set_irq_line(std::uint32_t gsi, bool high) {
    kvm_irq_level level{};
    level.irq = gsi;
    level.level = high ? 1U : 0U;
    check_syscall(do_ioctl(fd(), KVM_IRQ_LINE, &level), "KVM_IRQ_LINE");
}

int VmFd::signal_msi(std::uint64_t address, std::uint32_t data) {
    kvm_msi msi{};
    msi.address_lo = static_cast<std::uint32_t>(address);
    msi.address_hi = static_cast<std::uint32_t>(address >> 32);
    msi.data = data;
    return check_syscall(do_ioctl(fd(), KVM_SIGNAL_MSI, &msi), "KVM_SIGNAL_MSI");
}

void VmFd::add_pio_ioeventfd(std::uint16_t port, std::uint32_t length, int event_fd) {
    kvm_ioeventfd request{};
    request.addr = port;
    request.len = length;
    request.fd = event_fd;
    request.flags = KVM_IOEVENTFD_FLAG_PIO;
    check_syscall(do_ioctl(fd(), KVM_IOEVENTFD, &request), "KVM_IOEVENTFD");
}

namespace {
kvm_ioeventfd mmio_ioeventfd(std::uint64_t address, std::uint32_t length, int event_fd, std::uint32_t flags) {
    kvm_ioeventfd request{};
    request.addr = address;
    request.len = length;
    request.fd = event_fd;
    request.flags = flags;
    return request;
}
} // namespace

void VmFd::add_mmio_ioeventfd(std::uint64_t address, std::uint32_t length, int event_fd) {
    auto request = mmio_ioeventfd(address, length, event_fd, 0);
    check_syscall(do_ioctl(fd(), KVM_IOEVENTFD, &request), "KVM_IOEVENTFD");
}

void VmFd::remove_mmio_ioeventfd(std::uint64_t address, std::uint32_t length, int event_fd) {
    auto request = mmio_ioeventfd(address, length, event_fd, KVM_IOEVENTFD_FLAG_DEASSIGN);
    check_syscall(do_ioctl(fd(), KVM_IOEVENTFD, &request), "KVM_IOEVENTFD (deassign)");
}

void VmFd::set_gsi_routing(std::span<const kvm_irq_routing_entry> entries) {
    // kvm_irq_routing ends in a flexible array: build header and entries in one aligned buffer.
    std::vector<std::uint64_t> buffer(
        (sizeof(kvm_irq_routing) + entries.size() * sizeof(kvm_irq_routing_entry) + 7) / 8);
    auto* table = reinterpret_cast<kvm_irq_routing*>(buffer.data());
    table->nr = static_cast<std::uint32_t>(entries.size());
    table->flags = 0;
    std::memcpy(table->entries, entries.data(), entries.size_bytes());
    check_syscall(do_ioctl(fd(), KVM_SET_GSI_ROUTING, table), "KVM_SET_GSI_ROUTING");
}

void VmFd::assign_irqfd(int event_fd, std::uint32_t gsi) {
    kvm_irqfd request{};
    request.fd = static_cast<std::uint32_t>(event_fd);
    request.gsi = gsi;
    check_syscall(do_ioctl(fd(), KVM_IRQFD, &request), "KVM_IRQFD");
}

void VmFd::deassign_irqfd(int event_fd, std::uint32_t gsi) {
    kvm_irqfd request{};
    request.fd = static_cast<std::uint32_t>(event_fd);
    request.gsi = gsi;
    request.flags = KVM_IRQFD_FLAG_DEASSIGN;
    check_syscall(do_ioctl(fd(), KVM_IRQFD, &request), "KVM_IRQFD (deassign)");
}

VcpuFd::VcpuFd(UniqueFd fd, unsigned id, std::size_t mmap_size) : fd_(std::move(fd)), id_(id) {
    void* area = ::mmap(nullptr, mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd_.get(), 0);
    if (area == MAP_FAILED) throw SystemError("mmap of the kvm_run area", errno);
    run_area_ = area;
    run_area_size_ = mmap_size;
}

VcpuFd::VcpuFd(VcpuFd&& other) noexcept
    : fd_(std::move(other.fd_)), id_(other.id_), run_area_(std::exchange(other.run_area_, nullptr)),
      run_area_size_(std::exchange(other.run_area_size_, 0)) {
}

VcpuFd::~VcpuFd() {
    if (run_area_ != nullptr) ::munmap(run_area_, run_area_size_);
}

VcpuFd::RunResult VcpuFd::run() {
    if (do_ioctl(fd(), KVM_RUN, 0UL) == 0) return RunResult::Exited;
    if (errno == EINTR || errno == EAGAIN) return RunResult::Interrupted;
    throw SystemError("KVM_RUN on vCPU " + std::to_string(id_), errno);
}

void VcpuFd::set_cpuid(std::span<const kvm_cpuid_entry2> entries) {
    std::vector<std::byte> buffer(sizeof(kvm_cpuid2) + entries.size_bytes());
    auto* table = reinterpret_cast<kvm_cpuid2*>(buffer.data());
    table->nent = static_cast<std::uint32_t>(entries.size());
    std::memcpy(table->entries, entries.data(), entries.size_bytes());
    check_syscall(do_ioctl(fd(), KVM_SET_CPUID2, table), "KVM_SET_CPUID2");
}

void VcpuFd::set_xcr0(std::uint64_t value) {
    kvm_xcrs xcrs{};
    xcrs.nr_xcrs = 1;
    xcrs.xcrs[0].xcr = 0;
    xcrs.xcrs[0].value = value;
    check_syscall(do_ioctl(fd(), KVM_SET_XCRS, &xcrs), "KVM_SET_XCRS");
}

void VcpuFd::set_mp_state(std::uint32_t state) {
    kvm_mp_state mp_state{state};
    check_syscall(do_ioctl(fd(), KVM_SET_MP_STATE, &mp_state), "KVM_SET_MP_STATE");
}

std::uint64_t VcpuFd::tsc_khz() const {
    int khz = do_ioctl(fd(), KVM_GET_TSC_KHZ, 0UL);
    return khz > 0 ? static_cast<std::uint64_t>(khz) : 0;
}

kvm_regs VcpuFd::regs() const {
    kvm_regs regs{};
    check_syscall(do_ioctl(fd(), KVM_GET_REGS, &regs), "KVM_GET_REGS");
    return regs;
}

void VcpuFd::set_regs(const kvm_regs& regs) {
    check_syscall(do_ioctl(fd(), KVM_SET_REGS, &regs), "KVM_SET_REGS");
}

kvm_sregs VcpuFd::sregs() const {
    kvm_sregs sregs{};
    check_syscall(do_ioctl(fd(), KVM_GET_SREGS, &sregs), "KVM_GET_SREGS");
    return sregs;
}

void VcpuFd::set_sregs(const kvm_sregs& sregs) {
    check_syscall(do_ioctl(fd(), KVM_SET_SREGS, &sregs), "KVM_SET_SREGS");
}

} // namespace vmmlab::kvm
