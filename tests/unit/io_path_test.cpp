// The I/O-path knobs (--io-notify, --io-irq, --io-thread): their config, the GSI router, the irqfd MSI
// sink, the per-device I/O thread and the transport's hooks for them. KVM itself is faked here; the kvm
// test io_path_test.cpp boots Linux with each setting.
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>

#include <sys/eventfd.h>
#include <unistd.h>

#include "base/unique_fd.hpp"
#include "bus/interrupt_line.hpp"
#include "cli/run_command.hpp"
#include "config/vm_config.hpp"
#include "devices/legacy/pci_host.hpp"
#include "devices/virtio/io_thread.hpp"
#include "devices/virtio/pci_transport.hpp"
#include "kvm/gsi_router.hpp"
#include "virtio_mock_driver.hpp"
#include "vm/msi_sinks.hpp"

using namespace vmmlab;
using namespace vmmlab::virtio;
using nlohmann::json;

namespace {

// --- fakes --------------------------------------------------------------------------------------------

class RecordingRouting final : public kvm::GsiRoutingTarget {
public:
    void set_gsi_routing(std::span<const kvm_irq_routing_entry> entries) override {
        tables.emplace_back(entries.begin(), entries.end());
    }
    std::vector<std::vector<kvm_irq_routing_entry>> tables;
};

class RecordingBinder final : public IrqfdBinder {
public:
    void assign(int fd, std::uint32_t gsi) override { bound.emplace_back(fd, gsi); }
    void deassign(int fd, std::uint32_t gsi) override { unbound.emplace_back(fd, gsi); }
    std::vector<std::pair<int, std::uint32_t>> bound, unbound;
};

const kvm_irq_routing_entry* find_msi(const std::vector<kvm_irq_routing_entry>& table, std::uint32_t gsi) {
    for (const auto& entry : table)
        if (entry.gsi == gsi && entry.type == KVM_IRQ_ROUTING_MSI) return &entry;
    return nullptr;
}

std::uint64_t event_count(int fd) {
    std::uint64_t count = 0;
    if (::read(fd, &count, sizeof count) != static_cast<ssize_t>(sizeof count)) return 0;
    return count;
}

constexpr std::uint64_t kBar = 0xe0000000;

class FakeDevice final : public VirtioDevice {
public:
    std::string_view name() const override { return "fake"; }
    DeviceType type() const override { return DeviceType::Block; }
    std::uint32_t pci_class() const override { return 0x010000; }
    std::uint64_t features() const override { return 1ULL << kFeatureVersion1; }
    std::uint16_t queue_count() const override { return 2; }
    std::uint16_t max_queue_size() const override { return 256; }
    std::size_t config_size() const override { return 8; }
    void read_config(std::uint64_t, std::span<std::byte> data) const override {
        std::ranges::fill(data, std::byte{0});
    }
    void write_config(std::uint64_t, std::span<const std::byte>) override {}
    std::expected<void, std::string> activate(Activation activation) override {
        kick_fds = activation.kick_fds;
        call_fds = activation.call_fds;
        ++activations;
        return {};
    }
    void notify(std::uint16_t queue) override {
        std::lock_guard lock(mutex);
        notified.push_back(queue);
        notifier = std::this_thread::get_id();
        changed.notify_all();
    }
    void reset() override {}
    bool consumes_kicks() const override { return consumes; }

    std::vector<int> kick_fds, call_fds;
    int activations = 0;
    bool consumes = false;
    std::mutex mutex;
    std::condition_variable changed;
    std::vector<std::uint16_t> notified;
    std::thread::id notifier;
};

class NullLine final : public InterruptLine {
public:
    void set_level(bool) override {}
};

class HookedMsi final : public MsiSink {
public:
    void deliver(std::uint16_t vector, const MsiMessage& message) override {
        sent.emplace_back(vector, message);
    }
    void message_changed(std::uint16_t vector, const MsiMessage& message) override {
        changes.emplace_back(vector, message);
    }
    int vector_event_fd(std::uint16_t vector) const override { return 100 + vector; }
    std::vector<std::pair<std::uint16_t, MsiMessage>> sent, changes;
};

struct Rig {
    testing::MockRam ram;
    FakeDevice device;
    NullLine line;
    HookedMsi msi;
    VirtioPciTransport transport{"virtio-blk0", device, ram.memory(), msi, line, kBar, 16};
    devices::PciHost host;
    Rig() {
        REQUIRE(host.attach(1, transport));
        set_config<std::uint16_t>(devices::pci::kCommand, devices::pci::kCommandMemory);
    }
    template <typename T>
    void set_config(std::uint16_t offset, T value) {
        const std::uint32_t address = 0x80000000u | 1u << 11 | (offset & 0xfcu);
        host.write(0, std::as_bytes(std::span(&address, 1)));
        host.write(4 + (offset & 3u), std::as_bytes(std::span(&value, 1)));
    }
    template <typename T>
    void set_bar(std::uint64_t offset, T value) {
        transport.write(offset, std::as_bytes(std::span(&value, 1)));
    }
    std::uint16_t msix_control() {
        // The MSI-X capability is the last in the list; find it by walking.
        auto read8 = [&](std::uint16_t offset) {
            const std::uint32_t address = 0x80000000u | 1u << 11 | (offset & 0xfcu);
            host.write(0, std::as_bytes(std::span(&address, 1)));
            std::uint8_t value = 0;
            host.read(4 + (offset & 3u), std::as_writable_bytes(std::span(&value, 1)));
            return value;
        };
        for (std::uint8_t at = read8(devices::pci::kCapabilityPointer); at != 0;
             at = read8(static_cast<std::uint16_t>(at + 1)))
            if (read8(at) == devices::pci::kCapabilityMsix) return static_cast<std::uint16_t>(at + 2);
        FAIL("no MSI-X capability");
        return 0;
    }
    // Features, queue 0 enabled (queue 1 not), optionally vectors 1 and 2 for queues 0 and 1, DRIVER_OK.
    void start(testing::MockDriver& driver, bool msix) {
        if (msix) {
            set_config<std::uint16_t>(msix_control(), 0x8000);
            set_bar<std::uint16_t>(0x16, 0);
            set_bar<std::uint16_t>(0x1a, 1);
            set_bar<std::uint16_t>(0x16, 1);
            set_bar<std::uint16_t>(0x1a, 2);
        }
        set_bar<std::uint8_t>(0x14, kStatusAcknowledge | kStatusDriver);
        set_bar<std::uint32_t>(0x08, 1);
        set_bar<std::uint32_t>(0x0c, 1); // VERSION_1 is bit 32
        set_bar<std::uint8_t>(0x14, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
        const auto& layout = driver.layout();
        set_bar<std::uint16_t>(0x16, 0);
        set_bar<std::uint16_t>(0x18, layout.size);
        set_bar<std::uint64_t>(0x20, layout.descriptor_table.value);
        set_bar<std::uint64_t>(0x28, layout.available_ring.value);
        set_bar<std::uint64_t>(0x30, layout.used_ring.value);
        set_bar<std::uint16_t>(0x1c, 1);
        set_bar<std::uint8_t>(0x14, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk);
    }
};

} // namespace

// --- config -------------------------------------------------------------------------------------------

TEST_CASE("io knobs: values parse, bad ones say what is accepted", "[iopath]") {
    CHECK(parse_io_notify("exit").value() == IoNotify::Exit);
    CHECK(parse_io_notify("ioeventfd").value() == IoNotify::Ioeventfd);
    CHECK(parse_io_notify("mmio").error() == "'mmio' is not a notification path (exit, ioeventfd)");
    CHECK(parse_io_irq("userspace").value() == IoIrq::Userspace);
    CHECK(parse_io_irq("irqfd").value() == IoIrq::Irqfd);
    CHECK(parse_io_irq("msi").error() == "'msi' is not an interrupt path (userspace, irqfd)");
    CHECK(parse_io_thread("on").value());
    CHECK_FALSE(parse_io_thread("off").value());
    CHECK(parse_io_thread("yes").error() == "'yes' is not on or off");
    CHECK(to_string(IoNotify::Ioeventfd) == "ioeventfd");
    CHECK(to_string(IoIrq::Userspace) == "userspace");
}

TEST_CASE("io knobs: profiles, JSON round trip, validation and describe", "[iopath]") {
    const auto untuned = profile_config("untuned", 1, 4).value();
    CHECK(untuned.io_notify == IoNotify::Exit);
    CHECK(untuned.io_irq == IoIrq::Userspace);
    CHECK_FALSE(untuned.io_thread);
    const auto tuned = profile_config("tuned", 1, 4).value();
    CHECK(tuned.io_notify == IoNotify::Ioeventfd);
    CHECK(tuned.io_irq == IoIrq::Irqfd);
    CHECK(tuned.io_thread);
    CHECK(validate(untuned, false).has_value());
    CHECK(validate(tuned, false).has_value());

    auto config = apply_json(VmConfig{}, json::parse(R"({"io_notify": "ioeventfd", "io_irq": "irqfd",
                                                        "io_thread": "on"})"));
    REQUIRE(config);
    CHECK(config->io_notify == IoNotify::Ioeventfd);
    CHECK(config->io_irq == IoIrq::Irqfd);
    CHECK(config->io_thread);
    CHECK(to_json(*config)["io_thread"] == "on");
    CHECK(apply_json(VmConfig{}, to_json(*config)).value() == *config);
    CHECK(apply_json(VmConfig{}, json::parse(R"({"io_thread": true})")).value().io_thread);
    CHECK(apply_json(VmConfig{}, json::parse(R"({"io_irq": "fast"})")).error() ==
          "config: io_irq: 'fast' is not an interrupt path (userspace, irqfd)");
    CHECK(apply_json(VmConfig{}, json::parse(R"({"io_thread": 3})")).error() ==
          "config: io_thread: '3' is not on or off");

    VmConfig lonely;
    lonely.io_notify = IoNotify::Ioeventfd;
    CHECK(validate(lonely, false).error() ==
          "io-notify: ioeventfd needs --io-thread on (the I/O thread reads the eventfds)");
    CHECK_THAT(describe(tuned), Catch::Contains("io-notify ioeventfd | io-irq irqfd | io-thread on"));
    CHECK_THAT(describe(untuned), Catch::Contains("io-notify exit | io-irq userspace | io-thread off"));
}

TEST_CASE("io knobs: flags override the profile and errors name the flag", "[iopath]") {
    cli::KnobFlags flags;
    flags.profile = "tuned";
    flags.io_irq = "userspace";
    auto config = cli::build_config(flags, 4);
    REQUIRE(config);
    CHECK(config->io_irq == IoIrq::Userspace);
    CHECK(config->io_notify == IoNotify::Ioeventfd); // the profile's
    flags.io_notify = "doorbell";
    CHECK(cli::build_config(flags, 4).error() ==
          "--io-notify: 'doorbell' is not a notification path (exit, ioeventfd)");
    auto variant = cli::apply_flag_text({}, "--io-notify ioeventfd --io-thread on --io-irq irqfd");
    REQUIRE(variant);
    CHECK(variant->io_notify == "ioeventfd");
    CHECK(variant->io_thread == "on");
    CHECK(variant->io_irq == "irqfd");
}

// --- GSI router ---------------------------------------------------------------------------------------

TEST_CASE("gsi router: KVM's default irqchip routes, then MSI routes from GSI 24", "[iopath]") {
    const auto defaults = kvm::GsiRouter::default_routes();
    REQUIRE(defaults.size() == 16 * 2 + 8);
    auto count = [&](std::uint32_t gsi, std::uint32_t chip, std::uint32_t pin) {
        return std::ranges::count_if(defaults, [&](const kvm_irq_routing_entry& entry) {
            return entry.gsi == gsi && entry.type == KVM_IRQ_ROUTING_IRQCHIP &&
                   entry.u.irqchip.irqchip == chip && entry.u.irqchip.pin == pin;
        });
    };
    CHECK(count(0, KVM_IRQCHIP_IOAPIC, 0) == 1);
    CHECK(count(0, KVM_IRQCHIP_PIC_MASTER, 0) == 1);
    CHECK(count(4, KVM_IRQCHIP_PIC_MASTER, 4) == 1);
    CHECK(count(9, KVM_IRQCHIP_PIC_SLAVE, 1) == 1);
    CHECK(count(15, KVM_IRQCHIP_IOAPIC, 15) == 1);
    CHECK(count(16, KVM_IRQCHIP_IOAPIC, 16) == 1);
    CHECK(count(23, KVM_IRQCHIP_IOAPIC, 23) == 1);
    CHECK(std::ranges::none_of(defaults, [](const auto& entry) { return entry.gsi >= 24; }));

    RecordingRouting routing;
    kvm::GsiRouter router(routing, 26);
    CHECK(routing.tables.empty()); // nothing sent until there is an MSI route
    const auto first = router.add_msi_route(0xfee00000, 0x41);
    const auto second = router.add_msi_route(0xfee01000, 0x42);
    CHECK(first == 24);
    CHECK(second == 25);
    REQUIRE(routing.tables.size() == 2);
    const auto& table = routing.tables.back();
    CHECK(table.size() == defaults.size() + 2);
    CHECK(std::equal(defaults.begin(), defaults.end(), table.begin(),
                     [](const auto& a, const auto& b) { return std::memcmp(&a, &b, sizeof a) == 0; }));
    REQUIRE(find_msi(table, 25) != nullptr);
    CHECK(find_msi(table, 25)->u.msi.address_lo == 0xfee01000);
    CHECK(find_msi(table, 25)->u.msi.data == 0x42);

    SECTION("a changed message commits the table; the same message does not") {
        CHECK(router.update_msi_route(24, 0xfee02000, 0x51));
        REQUIRE(routing.tables.size() == 3);
        CHECK(find_msi(routing.tables.back(), 24)->u.msi.address_lo == 0xfee02000);
        CHECK(find_msi(routing.tables.back(), 24)->u.msi.data == 0x51);
        CHECK(find_msi(routing.tables.back(), 25)->u.msi.data == 0x42);
        CHECK_FALSE(router.update_msi_route(24, 0xfee02000, 0x51));
        CHECK_FALSE(router.update_msi_route(30, 1, 1)); // not a route of ours
        CHECK(routing.tables.size() == 3);
        CHECK(router.commits() == 3);
    }
    SECTION("GSIs run out with a clear error, and a removed one is handed out again") {
        CHECK_THROWS_WITH(router.add_msi_route(0xfee00000, 0x43), Catch::Contains("all 26 GSIs in use"));
        router.remove_msi_route(24);
        CHECK(find_msi(routing.tables.back(), 24) == nullptr);
        CHECK(router.add_msi_route(0xfee00000, 0x44) == 24);
    }
}

TEST_CASE("irqfd sink: one routed GSI and bound eventfd per vector; deliver writes it", "[iopath]") {
    RecordingRouting routing;
    kvm::GsiRouter router(routing);
    RecordingBinder binder;
    {
        IrqfdMsiSink sink(router, binder, 3);
        REQUIRE(binder.bound.size() == 3);
        CHECK(binder.bound[0].second == 24);
        CHECK(binder.bound[2].second == 26);
        CHECK(binder.bound[1].first == sink.vector_event_fd(1));
        CHECK(sink.vector_event_fd(3) == -1);
        const auto commits = router.commits();

        // The transport's hook: the route follows the table entry before any interrupt.
        sink.message_changed(1, {0xfee00000, 0x61});
        CHECK(router.commits() == commits + 1);
        CHECK(find_msi(router.table(), 25)->u.msi.data == 0x61);
        CHECK(event_count(sink.vector_event_fd(1)) == 0); // no interrupt from a table write

        sink.deliver(1, {0xfee00000, 0x61}); // same message: no new route
        CHECK(router.commits() == commits + 1);
        CHECK(event_count(sink.vector_event_fd(1)) == 1);
        sink.deliver(2, {0xfee00000, 0x62}); // a message the sink has not routed yet: routed first
        CHECK(router.commits() == commits + 2);
        CHECK(find_msi(router.table(), 26)->u.msi.data == 0x62);
        CHECK(event_count(sink.vector_event_fd(2)) == 1);
        sink.deliver(7, {0xfee00000, 0x63}); // no such vector: nothing
        CHECK(router.commits() == commits + 2);
    }
    CHECK(binder.unbound.size() == 3); // the destructor unbinds and drops the routes
    CHECK(std::ranges::none_of(router.table(), [](const auto& entry) { return entry.gsi >= 24; }));
}

// --- I/O thread ---------------------------------------------------------------------------------------

TEST_CASE("io thread: runs each eventfd's callback on its own thread, and stops", "[iopath]") {
    UniqueFd first(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)),
        second(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    std::mutex mutex;
    std::condition_variable changed;
    std::vector<int> calls;
    std::thread::id caller;
    IoThread thread("io-virtio-blk0");
    auto record = [&](int which) {
        std::lock_guard lock(mutex);
        calls.push_back(which);
        caller = std::this_thread::get_id();
        changed.notify_all();
    };
    thread.watch(first.get(), [&] { record(1); });
    thread.watch(second.get(), [&] { record(2); });
    thread.start();
    CHECK(thread.running());
    auto wait_for = [&](std::size_t n) {
        std::unique_lock lock(mutex);
        return changed.wait_for(lock, std::chrono::seconds(10), [&] { return calls.size() >= n; });
    };
    signal_event_fd(second.get());
    REQUIRE(wait_for(1));
    signal_event_fd(first.get());
    REQUIRE(wait_for(2));
    {
        std::lock_guard lock(mutex);
        CHECK(calls == std::vector<int>{2, 1});
        CHECK(caller != std::this_thread::get_id());
    }
    CHECK(event_count(first.get()) == 0); // drained before the callback
    CHECK_THROWS_WITH(thread.watch(first.get(), [] {}), Catch::Contains("watch() after start()"));
    thread.stop();
    CHECK_FALSE(thread.running());
    signal_event_fd(first.get()); // no thread: no callback
    std::this_thread::yield();
    std::lock_guard lock(mutex);
    CHECK(calls.size() == 2);
    thread.stop(); // idempotent
}

// --- transport hooks ----------------------------------------------------------------------------------

TEST_CASE("transport: kick() notifies only an activated device's enabled queue", "[iopath]") {
    Rig rig;
    testing::MockDriver driver(rig.ram, 16);
    CHECK_FALSE(rig.transport.kick(0)); // not activated
    rig.start(driver, false);
    REQUIRE(rig.device.activations == 1);
    CHECK(rig.transport.kick(0));
    CHECK_FALSE(rig.transport.kick(1)); // not enabled
    CHECK_FALSE(rig.transport.kick(2)); // no such queue
    CHECK(rig.device.notified == std::vector<std::uint16_t>{0});
    rig.set_bar<std::uint8_t>(0x14, 0); // reset
    CHECK_FALSE(rig.transport.kick(0));
    CHECK(rig.device.notified.size() == 1);
}

TEST_CASE("transport: with a notify hook the MMIO kick only calls the hook", "[iopath]") {
    Rig rig;
    std::vector<std::uint16_t> hooked;
    rig.transport.set_notify_hook([&](std::uint16_t queue) { hooked.push_back(queue); });
    testing::MockDriver driver(rig.ram, 16);
    rig.set_bar<std::uint16_t>(VirtioPciTransport::kNotifyOffset, 0); // before DRIVER_OK: nothing
    rig.start(driver, false);
    rig.set_bar<std::uint16_t>(VirtioPciTransport::kNotifyOffset, 0);
    rig.set_bar<std::uint16_t>(VirtioPciTransport::kNotifyOffset + 4, 1); // queue 1 not enabled
    CHECK(hooked == std::vector<std::uint16_t>{0});
    CHECK(rig.device.notified.empty()); // the device's work is the hook owner's to start
}

TEST_CASE("transport: ioeventfd kicks through an I/O thread reach the device there", "[iopath]") {
    Rig rig;
    UniqueFd kick(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    rig.transport.set_kick_fds({kick.get()});
    IoThread thread("io-virtio-blk0");
    thread.watch(kick.get(), [&] { rig.transport.kick(0); });
    thread.start();
    testing::MockDriver driver(rig.ram, 16);
    rig.start(driver, true);
    REQUIRE(rig.device.activations == 1);
    CHECK(rig.device.kick_fds == std::vector<int>{kick.get(), -1});
    CHECK(rig.device.call_fds == std::vector<int>{101, 102}); // the sink's fds of vectors 1 and 2
    signal_event_fd(kick.get());                              // what KVM does on the guest's notify write
    std::unique_lock lock(rig.device.mutex);
    REQUIRE(rig.device.changed.wait_for(lock, std::chrono::seconds(10),
                                        [&] { return !rig.device.notified.empty(); }));
    CHECK(rig.device.notified == std::vector<std::uint16_t>{0});
    CHECK(rig.device.notifier != std::this_thread::get_id());
    lock.unlock();
    thread.stop();
}

TEST_CASE("transport: without MSI-X or fds, the activation's fd lists are all -1", "[iopath]") {
    Rig rig;
    testing::MockDriver driver(rig.ram, 16);
    rig.start(driver, false);
    REQUIRE(rig.device.activations == 1);
    CHECK(rig.device.kick_fds == std::vector<int>{-1, -1});
    CHECK(rig.device.call_fds == std::vector<int>{-1, -1});
}

TEST_CASE("transport: an MSI-X table entry change reaches the sink's hook", "[iopath]") {
    Rig rig;
    const std::uint64_t entry1 = VirtioPciTransport::kMsixTableOffset + 16;
    rig.set_bar<std::uint32_t>(entry1, 0xfee00000);
    REQUIRE(rig.msi.changes.size() == 1);
    CHECK(rig.msi.changes[0].first == 1);
    CHECK(rig.msi.changes[0].second.address == 0xfee00000);
    rig.set_bar<std::uint32_t>(entry1 + 8, 0x41);
    REQUIRE(rig.msi.changes.size() == 2);
    CHECK(rig.msi.changes[1].second.data == 0x41);
    rig.set_bar<std::uint32_t>(entry1 + 8, 0x41); // unchanged: no call
    rig.set_bar<std::uint32_t>(entry1 + 12, 0);   // the mask bit is no message change
    CHECK(rig.msi.changes.size() == 2);
    rig.set_bar<std::uint64_t>(VirtioPciTransport::kMsixTableOffset, 0x00000001'fee01000ULL);
    REQUIRE(rig.msi.changes.size() == 3);
    CHECK(rig.msi.changes[2].first == 0);
    CHECK(rig.msi.changes[2].second.address == 0x1'fee01000ULL);
    CHECK(rig.msi.sent.empty()); // table writes alone send nothing
}
