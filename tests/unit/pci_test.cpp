#include <catch2/catch.hpp>
#include <cstring>
#include <map>
#include <optional>
#include <vector>

#include "bus/interrupt_line.hpp"
#include "devices/legacy/pci_host.hpp"
#include "devices/virtio/pci_transport.hpp"
#include "virtio_mock_driver.hpp"

using namespace vmmlab;
using namespace vmmlab::virtio;
using vmmlab::devices::PciHost;
using vmmlab::testing::MockDriver;
using vmmlab::testing::MockRam;

namespace {
constexpr std::uint64_t kBar = 0xe0000000;
constexpr std::uint64_t kFeatureBit0 = 1ULL << 0;
constexpr std::uint64_t kOffered =
    (1ULL << kFeatureVersion1) | (1ULL << kFeatureRingIndirectDesc) | kFeatureBit0;

class FakeDevice final : public VirtioDevice {
public:
    std::string_view name() const override { return "fake"; }
    DeviceType type() const override { return DeviceType::Block; }
    std::uint32_t pci_class() const override { return 0x010000; }
    std::uint64_t features() const override { return kOffered; }
    std::uint16_t queue_count() const override { return 2; }
    std::uint16_t max_queue_size() const override { return 256; }
    std::size_t config_size() const override { return config.size(); }
    void read_config(std::uint64_t offset, std::span<std::byte> data) const override {
        std::memcpy(data.data(), config.data() + offset, data.size());
    }
    void write_config(std::uint64_t offset, std::span<const std::byte> data) override {
        std::memcpy(config.data() + offset, data.data(), data.size());
    }
    std::expected<void, std::string> activate(Activation activation) override {
        features_negotiated = activation.features;
        queues = std::move(activation.queues);
        signals = &activation.signals;
        ++activations;
        return {};
    }
    void notify(std::uint16_t queue) override { notified.push_back(queue); }
    void reset() override {
        ++resets;
        queues.clear();
        signals = nullptr;
    }

    std::array<std::byte, 8> config{std::byte{1}, std::byte{2}, std::byte{3}, std::byte{4},
                                    std::byte{5}, std::byte{6}, std::byte{7}, std::byte{8}};
    std::uint64_t features_negotiated = 0;
    std::vector<Virtqueue> queues;
    DeviceSignals* signals = nullptr;
    int activations = 0;
    int resets = 0;
    std::vector<std::uint16_t> notified;
};

class RecordingLine final : public InterruptLine {
public:
    void set_level(bool high) override { levels.push_back(high); }
    std::vector<bool> levels;
};

class RecordingMsi final : public MsiSink {
public:
    void deliver(std::uint16_t vector, const MsiMessage& message) override {
        sent.push_back({vector, message});
    }
    std::vector<std::pair<std::uint16_t, MsiMessage>> sent;
};

struct Rig {
    MockRam ram;
    FakeDevice device;
    RecordingLine line;
    RecordingMsi msi;
    VirtioPciTransport transport{"virtio-blk", device, ram.memory(), msi, line, kBar, 11};
    PciHost host;
    Rig() { REQUIRE(host.attach(1, transport)); }

    void select(unsigned slot, std::uint16_t offset, unsigned function = 0, unsigned bus = 0) {
        const std::uint32_t address = 0x80000000u | bus << 16 | slot << 11 | function << 8 | (offset & 0xfcu);
        host.write(0, std::as_bytes(std::span(&address, 1)));
    }
    template <typename T>
    T config(unsigned slot, std::uint16_t offset, unsigned function = 0, unsigned bus = 0) {
        select(slot, offset, function, bus);
        T value{};
        host.read(4 + (offset & 3u), std::as_writable_bytes(std::span(&value, 1)));
        return value;
    }
    template <typename T>
    void set_config(unsigned slot, std::uint16_t offset, T value) {
        select(slot, offset);
        host.write(4 + (offset & 3u), std::as_bytes(std::span(&value, 1)));
    }
    template <typename T>
    T bar(std::uint64_t offset) {
        T value{};
        transport.read(offset, std::as_writable_bytes(std::span(&value, 1)));
        return value;
    }
    template <typename T>
    void set_bar(std::uint64_t offset, T value) {
        transport.write(offset, std::as_bytes(std::span(&value, 1)));
    }
    void enable_memory() {
        set_config<std::uint16_t>(1, devices::pci::kCommand, devices::pci::kCommandMemory);
    }
    std::uint8_t status() { return bar<std::uint8_t>(0x14); }
    void negotiate(std::uint64_t features) {
        set_bar<std::uint8_t>(0x14, kStatusAcknowledge);
        set_bar<std::uint8_t>(0x14, kStatusAcknowledge | kStatusDriver);
        set_bar<std::uint32_t>(0x08, 0);
        set_bar<std::uint32_t>(0x0c, static_cast<std::uint32_t>(features));
        set_bar<std::uint32_t>(0x08, 1);
        set_bar<std::uint32_t>(0x0c, static_cast<std::uint32_t>(features >> 32));
        set_bar<std::uint8_t>(0x14, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
    }
    void setup_queue(std::uint16_t index, const QueueLayout& layout) {
        set_bar<std::uint16_t>(0x16, index);
        set_bar<std::uint16_t>(0x18, layout.size);
        set_bar<std::uint64_t>(0x20, layout.descriptor_table.value);
        set_bar<std::uint32_t>(0x28, static_cast<std::uint32_t>(layout.available_ring.value)); // halves
        set_bar<std::uint32_t>(0x2c, static_cast<std::uint32_t>(layout.available_ring.value >> 32));
        set_bar<std::uint64_t>(0x30, layout.used_ring.value);
        set_bar<std::uint16_t>(0x1c, 1);
    }
    static constexpr std::uint8_t kRunning =
        kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk;
};

struct Capability {
    std::uint16_t at;
    std::uint8_t id;
    std::uint8_t type; // virtio cfg_type, for vendor capabilities
    std::uint8_t bar;
    std::uint32_t offset;
    std::uint32_t length;
};
std::vector<Capability> walk_capabilities(Rig& rig) {
    std::vector<Capability> found;
    REQUIRE(rig.config<std::uint16_t>(1, devices::pci::kStatus) & devices::pci::kStatusCapabilities);
    std::uint8_t at = rig.config<std::uint8_t>(1, devices::pci::kCapabilityPointer);
    for (int hops = 0; at != 0 && hops < 48; ++hops) {
        Capability capability{at, rig.config<std::uint8_t>(1, at), 0, 0, 0, 0};
        if (capability.id == devices::pci::kCapabilityVendor) {
            capability.type = rig.config<std::uint8_t>(1, static_cast<std::uint16_t>(at + 3));
            capability.bar = rig.config<std::uint8_t>(1, static_cast<std::uint16_t>(at + 4));
            capability.offset = rig.config<std::uint32_t>(1, static_cast<std::uint16_t>(at + 8));
            capability.length = rig.config<std::uint32_t>(1, static_cast<std::uint16_t>(at + 12));
        }
        found.push_back(capability);
        at = rig.config<std::uint8_t>(1, static_cast<std::uint16_t>(at + 1));
    }
    CHECK(at == 0); // the list ends
    return found;
}
} // namespace

TEST_CASE("pci: configuration mechanism #1 finds the host bridge, absent functions read all ones",
          "[virtio]") {
    Rig rig;
    CHECK(rig.config<std::uint16_t>(0, devices::pci::kVendorId) == 0x8086);
    CHECK(rig.config<std::uint32_t>(0, 0x08) >> 8 == 0x060000); // host bridge class
    CHECK(rig.config<std::uint32_t>(5, 0) == 0xffffffff);       // empty slot
    CHECK(rig.config<std::uint16_t>(1, 0, 1) == 0xffff);        // function 1
    CHECK(rig.config<std::uint16_t>(1, 0, 0, 1) == 0xffff);     // bus 1
    CHECK(rig.config<std::uint16_t>(1, 0) == 0x1af4);

    // The enable bit clear: nothing answers.
    const std::uint32_t disabled = 1u << 11;
    rig.host.write(0, std::as_bytes(std::span(&disabled, 1)));
    std::uint16_t vendor = 0;
    rig.host.read(4, std::as_writable_bytes(std::span(&vendor, 1)));
    CHECK(vendor == 0xffff);

    // CONFIG_ADDRESS reads back (reserved bits clear); a byte write to 0xCFB does not disturb it.
    rig.select(1, 0x0b);
    const std::uint8_t probe = 1;
    rig.host.write(3, std::as_bytes(std::span(&probe, 1)));
    std::uint32_t address = 0;
    rig.host.read(0, std::as_writable_bytes(std::span(&address, 1)));
    CHECK(address == (0x80000000u | 1u << 11 | 0x08));
    // A byte read through 0xCFE picks the third byte of the dword.
    CHECK(rig.config<std::uint8_t>(1, 0x0a) == 0x00); // subclass
    CHECK(rig.config<std::uint8_t>(1, 0x0b) == 0x01); // class: mass storage
    CHECK(rig.config<std::uint16_t>(1, 0x02) == 0x1042);

    CHECK_FALSE(rig.host.attach(0, rig.transport)); // the host bridge's slot
    CHECK_FALSE(rig.host.attach(1, rig.transport)); // taken
    CHECK(rig.host.free_slot() == 2);
}

TEST_CASE("pci: the virtio function's header and BAR sizing", "[virtio]") {
    Rig rig;
    CHECK(rig.config<std::uint8_t>(1, devices::pci::kRevision) == 1);
    CHECK(rig.config<std::uint16_t>(1, devices::pci::kSubsystemVendorId) == 0x1af4);
    CHECK(rig.config<std::uint16_t>(1, devices::pci::kSubsystemId) >= 0x40);
    CHECK(rig.config<std::uint8_t>(1, devices::pci::kHeaderType) == 0);
    CHECK(rig.config<std::uint8_t>(1, devices::pci::kInterruptPin) == 1);
    CHECK(rig.config<std::uint8_t>(1, devices::pci::kInterruptLine) == 11);

    // Read-only registers ignore writes.
    rig.set_config<std::uint16_t>(1, devices::pci::kVendorId, 0x1234);
    CHECK(rig.config<std::uint16_t>(1, devices::pci::kVendorId) == 0x1af4);

    CHECK(rig.config<std::uint32_t>(1, 0x10) == (static_cast<std::uint32_t>(kBar) | 0x4));
    CHECK(rig.config<std::uint32_t>(1, 0x14) == 0);
    // Sizing: write all ones, read the size mask back (16 KiB, 64-bit memory).
    rig.set_config<std::uint32_t>(1, 0x10, 0xffffffff);
    rig.set_config<std::uint32_t>(1, 0x14, 0xffffffff);
    CHECK(rig.config<std::uint32_t>(1, 0x10) == 0xffffc004);
    CHECK(rig.config<std::uint32_t>(1, 0x14) == 0xffffffff);
    const std::uint64_t mask = (std::uint64_t{rig.config<std::uint32_t>(1, 0x14)} << 32) |
                               (rig.config<std::uint32_t>(1, 0x10) & ~0xfu);
    CHECK(~mask + 1 == VirtioPciTransport::kBarSize);
    // A new address is taken (low bits dropped).
    rig.set_config<std::uint32_t>(1, 0x10, 0xd0001234);
    rig.set_config<std::uint32_t>(1, 0x14, 0x1);
    CHECK(rig.transport.bar_address() == 0x1d0000000ULL);
    CHECK(rig.transport.notify_address(1) == 0x1d0000000ULL + 0x2004);
    // BARs 2..5 do not exist.
    rig.set_config<std::uint32_t>(1, 0x18, 0xffffffff);
    CHECK(rig.config<std::uint32_t>(1, 0x18) == 0);

    // The command register: memory space enable gates BAR0.
    CHECK(rig.bar<std::uint32_t>(0x04) == 0xffffffff);
    rig.enable_memory();
    CHECK(rig.config<std::uint16_t>(1, devices::pci::kCommand) == devices::pci::kCommandMemory);
    CHECK(rig.bar<std::uint32_t>(0x04) == (1u << kFeatureRingIndirectDesc | 1u));
}

TEST_CASE("pci: the capability list holds every virtio structure and MSI-X", "[virtio]") {
    Rig rig;
    const auto capabilities = walk_capabilities(rig);
    std::map<std::uint8_t, Capability> virtio;
    std::optional<Capability> msix;
    for (const auto& capability : capabilities) {
        CHECK(capability.at >= 0x40);
        CHECK(capability.at % 4 == 0);
        if (capability.id == devices::pci::kCapabilityVendor) virtio[capability.type] = capability;
        if (capability.id == devices::pci::kCapabilityMsix) msix = capability;
    }
    REQUIRE(virtio.size() == 5);
    for (std::uint8_t type = 1; type <= 5; ++type)
        REQUIRE(virtio.contains(type));
    CHECK(virtio[1].bar == 0);
    CHECK(virtio[1].offset == VirtioPciTransport::kCommonOffset);
    CHECK(virtio[1].length >= 0x38);
    CHECK(virtio[2].offset == VirtioPciTransport::kNotifyOffset);
    CHECK(virtio[2].length == 2 * 4);
    CHECK(rig.config<std::uint32_t>(1, static_cast<std::uint16_t>(virtio[2].at + 16)) == 4); // multiplier
    CHECK(virtio[3].offset == VirtioPciTransport::kIsrOffset);
    CHECK(virtio[4].offset == VirtioPciTransport::kDeviceConfigOffset);
    CHECK(virtio[4].length == 8);
    CHECK(rig.config<std::uint8_t>(1, static_cast<std::uint16_t>(virtio[5].at + 2)) == 20); // cap_len
    // Every structure lies inside BAR0.
    for (const auto& [type, capability] : virtio)
        CHECK(std::uint64_t{capability.offset} + capability.length <= VirtioPciTransport::kBarSize);

    REQUIRE(msix);
    const auto control = rig.config<std::uint16_t>(1, static_cast<std::uint16_t>(msix->at + 2));
    CHECK((control & 0x7ff) + 1 == 3); // two queues + configuration
    CHECK(rig.config<std::uint32_t>(1, static_cast<std::uint16_t>(msix->at + 4)) ==
          VirtioPciTransport::kMsixTableOffset);
    CHECK(rig.config<std::uint32_t>(1, static_cast<std::uint16_t>(msix->at + 8)) ==
          VirtioPciTransport::kMsixPbaOffset);
}

TEST_CASE("pci: the common configuration's status state machine", "[virtio]") {
    Rig rig;
    rig.enable_memory();
    CHECK(rig.bar<std::uint16_t>(0x12) == 2); // num_queues
    rig.set_bar<std::uint32_t>(0x00, 1);
    CHECK(rig.bar<std::uint32_t>(0x04) == 1); // VERSION_1 is bit 32
    rig.set_bar<std::uint32_t>(0x00, 7);
    CHECK(rig.bar<std::uint32_t>(0x04) == 0);

    SECTION("FEATURES_OK is refused without VERSION_1") {
        rig.negotiate(kFeatureBit0);
        CHECK_FALSE(rig.status() & kStatusFeaturesOk);
        // DRIVER_OK without FEATURES_OK does not stick either, and nothing is activated.
        rig.set_bar<std::uint8_t>(0x14, kStatusAcknowledge | kStatusDriver | kStatusDriverOk);
        CHECK_FALSE(rig.status() & kStatusDriverOk);
        CHECK(rig.device.activations == 0);
    }
    SECTION("FEATURES_OK is refused for a feature the device did not offer") {
        rig.negotiate((1ULL << kFeatureVersion1) | (1ULL << 5));
        CHECK_FALSE(rig.status() & kStatusFeaturesOk);
    }
    SECTION("FEATURES_OK with VERSION_1; driver features freeze; bits cannot be cleared; 0 resets") {
        rig.negotiate((1ULL << kFeatureVersion1) | kFeatureBit0);
        CHECK(rig.status() == (kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk));
        rig.set_bar<std::uint32_t>(0x08, 0);
        rig.set_bar<std::uint32_t>(0x0c, 0); // too late
        CHECK(rig.bar<std::uint32_t>(0x0c) == 1);
        rig.set_bar<std::uint8_t>(0x14, kStatusAcknowledge); // clearing bits is ignored
        CHECK(rig.status() == (kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk));
        CHECK(rig.transport.ignored_accesses() >= 2);

        rig.set_bar<std::uint8_t>(0x14, Rig::kRunning); // no queue enabled: the device decides
        CHECK(rig.device.activations == 1);
        CHECK(rig.device.features_negotiated == ((1ULL << kFeatureVersion1) | kFeatureBit0));
        CHECK(rig.status() == Rig::kRunning);

        rig.set_bar<std::uint8_t>(0x14, 0);
        CHECK(rig.status() == 0);
        CHECK(rig.device.resets == 1);
        rig.set_bar<std::uint32_t>(0x08, 0);
        CHECK(rig.bar<std::uint32_t>(0x0c) == 0); // driver features cleared
    }
    SECTION("MSI-X vectors beyond the table read back as NO_VECTOR") {
        rig.set_bar<std::uint16_t>(0x10, 2);
        CHECK(rig.bar<std::uint16_t>(0x10) == 2);
        rig.set_bar<std::uint16_t>(0x10, 3);
        CHECK(rig.bar<std::uint16_t>(0x10) == kNoVector);
        rig.set_bar<std::uint16_t>(0x16, 1);
        rig.set_bar<std::uint16_t>(0x1a, 0);
        CHECK(rig.bar<std::uint16_t>(0x1a) == 0);
        rig.set_bar<std::uint8_t>(0x14, 0); // reset drops the vectors
        CHECK(rig.bar<std::uint16_t>(0x10) == kNoVector);
        rig.set_bar<std::uint16_t>(0x16, 1);
        CHECK(rig.bar<std::uint16_t>(0x1a) == kNoVector);
    }
    SECTION("device configuration is forwarded, bounded by its size") {
        CHECK(rig.bar<std::uint32_t>(VirtioPciTransport::kDeviceConfigOffset + 4) == 0x08070605);
        rig.set_bar<std::uint16_t>(VirtioPciTransport::kDeviceConfigOffset + 2, 0xbeef);
        CHECK(rig.device.config[2] == std::byte{0xef});
        CHECK(rig.bar<std::uint32_t>(VirtioPciTransport::kDeviceConfigOffset + 6) == 0x0807); // half inside
        CHECK(rig.bar<std::uint32_t>(VirtioPciTransport::kDeviceConfigOffset + 8) == 0);
    }
}

TEST_CASE("pci: queue setup, activation, and the notify callback", "[virtio]") {
    Rig rig;
    rig.enable_memory();
    MockDriver driver(rig.ram, 64);
    rig.set_bar<std::uint16_t>(0x16, 0);
    // Before the driver sets a size, queue_size reads the device's maximum (virtio 1.2, 4.1.4.3): Linux
    // reads it and refuses a queue of size 0 (virtio_blk's probe failed with -EINVAL when it read 0).
    CHECK(rig.bar<std::uint16_t>(0x18) == rig.device.max_queue_size());
    rig.set_bar<std::uint16_t>(0x18, 16);
    CHECK(rig.bar<std::uint16_t>(0x18) == 16);
    rig.set_bar<std::uint8_t>(0x14, 0); // reset: the maximum again
    CHECK(rig.bar<std::uint16_t>(0x18) == rig.device.max_queue_size());
    CHECK(rig.bar<std::uint16_t>(0x1e) == 0); // queue_notify_off
    rig.set_bar<std::uint16_t>(0x16, 1);
    CHECK(rig.bar<std::uint16_t>(0x1e) == 1);
    rig.set_bar<std::uint16_t>(0x16, 9); // no such queue: reads 0, writes ignored
    rig.set_bar<std::uint16_t>(0x18, 16);
    CHECK(rig.bar<std::uint16_t>(0x18) == 0);

    rig.negotiate((1ULL << kFeatureVersion1) | (1ULL << kFeatureRingIndirectDesc));
    rig.setup_queue(0, driver.layout());
    rig.set_bar<std::uint16_t>(0x16, 0);
    CHECK(rig.bar<std::uint64_t>(0x28) == driver.layout().available_ring.value);
    CHECK(rig.bar<std::uint16_t>(0x1c) == 1);
    rig.set_bar<std::uint16_t>(0x18, 32); // enabled: frozen
    CHECK(rig.bar<std::uint16_t>(0x18) == 64);

    SECTION("a good layout activates; a kick reaches the device") {
        rig.set_bar<std::uint8_t>(0x14, Rig::kRunning);
        REQUIRE(rig.device.activations == 1);
        REQUIRE(rig.device.queues.size() == 2);
        CHECK(rig.device.queues[0].active());
        CHECK(rig.device.queues[0].size() == 64);
        CHECK_FALSE(rig.device.queues[1].active());

        rig.set_bar<std::uint16_t>(VirtioPciTransport::kNotifyOffset, 0);
        rig.set_bar<std::uint16_t>(VirtioPciTransport::kNotifyOffset + 4, 1); // queue 1 not enabled
        rig.set_bar<std::uint16_t>(VirtioPciTransport::kNotifyOffset + 8, 2); // no queue 2
        CHECK(rig.device.notified == std::vector<std::uint16_t>{0});

        // The device can pop what the mock driver publishes through the queue it was given.
        driver.add_chain({{0x20000, 16, false}});
        DescriptorChain chain;
        CHECK(rig.device.queues[0].pop(chain).value());
    }
    SECTION("a ring outside RAM sets DEVICE_NEEDS_RESET instead of activating") {
        rig.set_bar<std::uint16_t>(0x16, 1);
        rig.set_bar<std::uint16_t>(0x18, 16);
        rig.set_bar<std::uint64_t>(0x20, 0x7fff0000); // far outside the 1 MiB of RAM
        rig.set_bar<std::uint16_t>(0x1c, 1);
        rig.set_bar<std::uint8_t>(0x14, Rig::kRunning);
        CHECK(rig.device.activations == 0);
        CHECK(rig.status() & kStatusNeedsReset);
        rig.set_bar<std::uint16_t>(VirtioPciTransport::kNotifyOffset, 0);
        CHECK(rig.device.notified.empty());
        rig.set_bar<std::uint8_t>(0x14, 0);
        CHECK(rig.status() == 0);
    }
}

TEST_CASE("pci: interrupts via INTx and ISR, or MSI-X with masks and pending bits", "[virtio]") {
    Rig rig;
    rig.enable_memory();
    MockDriver driver(rig.ram, 16);
    rig.negotiate(1ULL << kFeatureVersion1);
    rig.setup_queue(0, driver.layout());
    rig.set_bar<std::uint8_t>(0x14, Rig::kRunning);
    REQUIRE(rig.device.signals != nullptr);

    SECTION("INTx: the ISR is read-to-clear and drives the line") {
        rig.device.signals->used_buffers(0);
        CHECK(rig.line.levels == std::vector<bool>{true});
        CHECK(rig.config<std::uint16_t>(1, devices::pci::kStatus) & devices::pci::kStatusInterrupt);
        rig.device.signals->config_changed();
        CHECK(rig.bar<std::uint8_t>(0x15) == 1); // config_generation moved
        CHECK(rig.bar<std::uint8_t>(VirtioPciTransport::kIsrOffset) == 3);
        CHECK(rig.bar<std::uint8_t>(VirtioPciTransport::kIsrOffset) == 0);
        CHECK(rig.line.levels == std::vector<bool>{true, false});
        // INTx disable in the command register keeps the line low.
        rig.set_config<std::uint16_t>(1, devices::pci::kCommand,
                                      devices::pci::kCommandMemory | devices::pci::kCommandIntxDisable);
        rig.device.signals->used_buffers(0);
        CHECK(rig.line.levels.size() == 2);
        CHECK(rig.msi.sent.empty());
    }
    SECTION("MSI-X: per-vector address/data, entry and function masks, PBA") {
        const auto control_at = static_cast<std::uint16_t>([&] {
            for (const auto& capability : walk_capabilities(rig))
                if (capability.id == devices::pci::kCapabilityMsix) return capability.at + 2;
            FAIL("no MSI-X");
            return 0;
        }());
        rig.set_config<std::uint16_t>(1, control_at, 0x8000); // enable
        rig.set_bar<std::uint16_t>(0x16, 0);
        rig.set_bar<std::uint16_t>(0x1a, 1);
        rig.set_bar<std::uint16_t>(0x10, 0);
        const std::uint64_t entry1 = VirtioPciTransport::kMsixTableOffset + 16;
        CHECK(rig.bar<std::uint32_t>(entry1 + 12) == 1); // masked after reset
        rig.set_bar<std::uint64_t>(entry1, 0xfee00000);
        rig.set_bar<std::uint32_t>(entry1 + 8, 0x41);

        rig.device.signals->used_buffers(0); // vector 1 masked: pending
        CHECK(rig.msi.sent.empty());
        CHECK(rig.bar<std::uint8_t>(VirtioPciTransport::kMsixPbaOffset) == 0x2);
        rig.set_bar<std::uint32_t>(entry1 + 12, 0); // unmask: the pending message goes out
        REQUIRE(rig.msi.sent.size() == 1);
        CHECK(rig.msi.sent[0].first == 1);
        CHECK(rig.msi.sent[0].second.address == 0xfee00000);
        CHECK(rig.msi.sent[0].second.data == 0x41);
        CHECK(rig.bar<std::uint8_t>(VirtioPciTransport::kMsixPbaOffset) == 0);

        rig.set_config<std::uint16_t>(1, control_at, 0xc000); // function mask
        rig.device.signals->used_buffers(0);
        CHECK(rig.msi.sent.size() == 1);
        rig.set_config<std::uint16_t>(1, control_at, 0x8000);
        CHECK(rig.msi.sent.size() == 2);

        rig.device.signals->config_changed(); // vector 0 still masked in its entry
        CHECK(rig.msi.sent.size() == 2);
        CHECK(rig.bar<std::uint8_t>(VirtioPciTransport::kMsixPbaOffset) == 0x1);
        CHECK(rig.line.levels.empty()); // INTx is not used while MSI-X is on
        CHECK(rig.bar<std::uint8_t>(VirtioPciTransport::kIsrOffset) == 0);
    }
    SECTION("DEVICE_NEEDS_RESET from the device") {
        rig.device.signals->needs_reset();
        CHECK(rig.status() == (Rig::kRunning | kStatusNeedsReset));
        CHECK(rig.bar<std::uint8_t>(VirtioPciTransport::kIsrOffset) == 2);
    }
}

TEST_CASE("pci: the PCI_CFG capability is a window onto BAR0", "[virtio]") {
    Rig rig; // memory decoding stays off: the window works without it
    std::uint16_t cap = 0;
    for (const auto& capability : walk_capabilities(rig))
        if (capability.id == devices::pci::kCapabilityVendor && capability.type == 5) cap = capability.at;
    REQUIRE(cap != 0);
    rig.set_config<std::uint8_t>(1, static_cast<std::uint16_t>(cap + 4), 0);
    rig.set_config<std::uint32_t>(1, static_cast<std::uint16_t>(cap + 8), 0x12); // num_queues
    rig.set_config<std::uint32_t>(1, static_cast<std::uint16_t>(cap + 12), 2);
    CHECK(rig.config<std::uint32_t>(1, static_cast<std::uint16_t>(cap + 16)) == 2);
    // A write through the window: device_status = ACKNOWLEDGE.
    rig.set_config<std::uint32_t>(1, static_cast<std::uint16_t>(cap + 8), 0x14);
    rig.set_config<std::uint32_t>(1, static_cast<std::uint16_t>(cap + 12), 1);
    rig.set_config<std::uint32_t>(1, static_cast<std::uint16_t>(cap + 16), kStatusAcknowledge);
    CHECK(rig.transport.device_status() == kStatusAcknowledge);
    // A misaligned window does nothing.
    rig.set_config<std::uint32_t>(1, static_cast<std::uint16_t>(cap + 8), 0x13);
    rig.set_config<std::uint32_t>(1, static_cast<std::uint16_t>(cap + 12), 2);
    CHECK(rig.config<std::uint32_t>(1, static_cast<std::uint16_t>(cap + 16)) == kStatusAcknowledge);
}
