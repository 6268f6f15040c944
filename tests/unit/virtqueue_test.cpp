#include <catch2/catch.hpp>
#include <cstring>
#include <vector>

#include "devices/virtio/virtqueue.hpp"
#include "virtio_mock_driver.hpp"

using namespace vmmlab;
using namespace vmmlab::virtio;
using vmmlab::testing::MockDescriptor;
using vmmlab::testing::MockDriver;
using vmmlab::testing::MockRam;

namespace {
constexpr std::uint64_t kAllRingFeatures =
    (1ULL << kFeatureRingIndirectDesc) | (1ULL << kFeatureRingEventIdx);

Virtqueue activate(const MockRam& ram, const MockDriver& driver, std::uint64_t features = kAllRingFeatures) {
    auto queue = Virtqueue::activate(ram.memory(), driver.layout(), features);
    REQUIRE(queue);
    return std::move(*queue);
}

QueueErrorKind pop_error(Virtqueue& queue) {
    DescriptorChain chain;
    auto popped = queue.pop(chain);
    REQUIRE_FALSE(popped);
    return popped.error().kind;
}
} // namespace

TEST_CASE("virtqueue: a chain of one readable buffer is handed out as a span of guest RAM", "[virtio]") {
    MockRam ram;
    MockDriver driver(ram, 16);
    auto queue = activate(ram, driver);
    ram.fill(0x20000, 64, std::byte{0x5a});
    const auto head = driver.add_chain({{0x20000, 64, false}});

    DescriptorChain chain;
    REQUIRE(queue.pop(chain).value());
    CHECK(chain.head == head);
    REQUIRE(chain.readable.size() == 1);
    CHECK(chain.readable[0].data() == ram.bytes().data() + 0x20000); // no copy
    CHECK(chain.readable[0].size() == 64);
    CHECK(chain.writable.empty());
    CHECK(chain.readable_bytes == 64);
    CHECK_FALSE(queue.pop(chain).value()); // ring empty now

    REQUIRE(queue.push_used(head, 0));
    const auto used = driver.take_used();
    REQUIRE(used.size() == 1);
    CHECK(used[0].id == head);
    CHECK(used[0].length == 0);
    CHECK(driver.used_index() == 1);
}

TEST_CASE("virtqueue: a chain of several buffers keeps order, readable before writable", "[virtio]") {
    MockRam ram;
    MockDriver driver(ram, 8);
    auto queue = activate(ram, driver);
    const auto head = driver.add_chain(
        {{0x20000, 16, false}, {0x21000, 512, false}, {0x22000, 4096, true}, {0x23000, 1, true}});
    DescriptorChain chain;
    REQUIRE(queue.pop(chain).value());
    CHECK(chain.head == head);
    CHECK(chain.descriptor_count == 4);
    REQUIRE(chain.readable.size() == 2);
    REQUIRE(chain.writable.size() == 2);
    CHECK(chain.readable[1].data() == ram.bytes().data() + 0x21000);
    CHECK(chain.writable[0].size() == 4096);
    CHECK(chain.writable[1].data() == ram.bytes().data() + 0x23000);
    CHECK(chain.readable_bytes == 528);
    CHECK(chain.writable_bytes == 4097);

    // Writing through the span lands in guest RAM.
    std::memset(chain.writable[1].data(), 0xab, 1);
    CHECK(ram.get<std::uint8_t>(0x23000) == 0xab);
    REQUIRE(queue.push_used(chain.head, 4097));
    CHECK(driver.take_used().at(0).length == 4097);
}

TEST_CASE("virtqueue: many chains round-trip, descriptors are reused, several laps of the ring", "[virtio]") {
    MockRam ram;
    MockDriver driver(ram, 4);
    auto queue = activate(ram, driver);
    DescriptorChain chain;
    for (int round = 0; round < 20; ++round) {
        const auto a = driver.add_chain({{0x20000, 8, false}, {0x20100, 8, true}});
        const auto b = driver.add_chain({{0x20200, 8, true}, {0x20300, 8, true}});
        REQUIRE(queue.pop(chain).value());
        CHECK(chain.head == a);
        REQUIRE(queue.pop(chain).value());
        CHECK(chain.head == b);
        CHECK(chain.writable.size() == 2);
        REQUIRE(queue.push_used(b, 16));
        REQUIRE(queue.push_used(a, 8));
        CHECK(driver.take_used().size() == 2);
    }
    CHECK(queue.next_available() == 40);
    CHECK(queue.next_used() == 40);
}

TEST_CASE("virtqueue: indirect descriptors are walked in their table", "[virtio]") {
    MockRam ram;
    MockDriver driver(ram, 8);
    auto queue = activate(ram, driver);
    const auto head =
        driver.add_indirect_chain(0x30000, {{0x20000, 16, false}, {0x21000, 100, true}, {0x22000, 1, true}});
    DescriptorChain chain;
    REQUIRE(queue.pop(chain).value());
    CHECK(chain.head == head);
    CHECK(chain.readable.size() == 1);
    CHECK(chain.writable.size() == 2);
    CHECK(chain.writable_bytes == 101);
    CHECK(chain.descriptor_count == 4);

    SECTION("but not when INDIRECT_DESC was not negotiated") {
        auto plain = activate(ram, driver, 0);
        CHECK(pop_error(plain) == QueueErrorKind::IndirectNotNegotiated);
    }
}

TEST_CASE("virtqueue: a buffer that crosses two adjacent RAM regions becomes two spans", "[virtio]") {
    std::vector<std::byte> low(0x40000), high(0x10000);
    GuestMemory memory(
        {{GuestAddress{0}, low.size(), low.data()}, {GuestAddress{0x40000}, high.size(), high.data()}});
    MockRam scratch; // the driver writes its rings through a MockRam; copy them over afterwards
    MockDriver driver(scratch, 8);
    driver.add_chain({{0x3fff0, 0x20, true}});
    std::memcpy(low.data(), scratch.bytes().data(), 0x10000);
    auto queue = Virtqueue::activate(memory, driver.layout(), 0);
    REQUIRE(queue);
    DescriptorChain chain;
    REQUIRE(queue->pop(chain).value());
    REQUIRE(chain.writable.size() == 2);
    CHECK(chain.writable[0].data() == low.data() + 0x3fff0);
    CHECK(chain.writable[0].size() == 0x10);
    CHECK(chain.writable[1].data() == high.data());
    CHECK(chain.writable_bytes == 0x20);
}

TEST_CASE("virtqueue: activation checks size, alignment and that every ring is inside RAM", "[virtio]") {
    MockRam ram(0x10000);
    MockDriver driver(ram, 16);
    QueueLayout layout = driver.layout();
    CHECK(Virtqueue::activate(ram.memory(), layout, 0));

    auto refused = [&](QueueLayout bad) {
        auto queue = Virtqueue::activate(ram.memory(), bad, 0);
        REQUIRE_FALSE(queue);
        return queue.error().kind;
    };
    QueueLayout bad = layout;
    bad.size = 12;
    CHECK(refused(bad) == QueueErrorKind::BadSize);
    bad.size = 0;
    CHECK(refused(bad) == QueueErrorKind::BadSize);
    bad = layout;
    bad.descriptor_table = GuestAddress{layout.descriptor_table.value + 8};
    CHECK(refused(bad) == QueueErrorKind::Misaligned);
    bad = layout;
    bad.used_ring = GuestAddress{layout.used_ring.value + 2};
    CHECK(refused(bad) == QueueErrorKind::Misaligned);
    bad = layout;
    bad.used_ring = GuestAddress{0x10000 - 8}; // starts inside, ends outside
    CHECK(refused(bad) == QueueErrorKind::RingOutsideRam);
    bad = layout;
    bad.available_ring = GuestAddress{0xfffffffffffffff0ULL}; // would wrap
    CHECK(refused(bad) == QueueErrorKind::RingOutsideRam);
    bad = layout;
    bad.size = 32768; // 512 KiB descriptor table does not fit 64 KiB of RAM
    CHECK(refused(bad) == QueueErrorKind::RingOutsideRam);
}

TEST_CASE("virtqueue: malformed chains are rejected and break the queue, without crashing", "[virtio]") {
    MockRam ram;
    MockDriver driver(ram, 8);
    auto queue = activate(ram, driver);

    SECTION("a descriptor loop hits the hop limit") {
        driver.write_descriptor(0, {0x20000, 8, kDescriptorNext, 1});
        driver.write_descriptor(1, {0x20100, 8, kDescriptorNext, 0});
        driver.publish(0);
        CHECK(pop_error(queue) == QueueErrorKind::ChainTooLong);
    }
    SECTION("a self loop") {
        driver.write_descriptor(3, {0x20000, 8, kDescriptorNext, 3});
        driver.publish(3);
        CHECK(pop_error(queue) == QueueErrorKind::ChainTooLong);
    }
    SECTION("next index not below the queue size") {
        driver.write_descriptor(0, {0x20000, 8, kDescriptorNext, 8});
        driver.publish(0);
        CHECK(pop_error(queue) == QueueErrorKind::DescriptorIndex);
    }
    SECTION("head index not below the queue size") {
        driver.publish(9);
        CHECK(pop_error(queue) == QueueErrorKind::DescriptorIndex);
    }
    SECTION("a buffer outside RAM") {
        driver.add_chain({{0x20000, 8, false}, {ram.bytes().size() - 4, 8, true}});
        CHECK(pop_error(queue) == QueueErrorKind::BufferOutsideRam);
    }
    SECTION("a buffer whose end wraps the address space") {
        driver.add_chain({{0xfffffffffffffff8ULL, 16, false}});
        CHECK(pop_error(queue) == QueueErrorKind::BufferOutsideRam);
    }
    SECTION("a readable buffer after a writable one") {
        driver.add_chain({{0x20000, 8, true}, {0x20100, 8, false}});
        CHECK(pop_error(queue) == QueueErrorKind::ReadableAfterWritable);
    }
    SECTION("an indirect descriptor inside an indirect table") {
        ram.put(0x30000, MockDescriptor{0x20000, 8, kDescriptorNext, 1});
        ram.put(0x30010, MockDescriptor{0x31000, 16, kDescriptorIndirect, 0});
        driver.write_descriptor(0, {0x30000, 32, kDescriptorIndirect, 0});
        driver.publish(0);
        CHECK(pop_error(queue) == QueueErrorKind::NestedIndirect);
    }
    SECTION("an indirect table whose length is not a multiple of 16") {
        driver.write_descriptor(0, {0x30000, 24, kDescriptorIndirect, 0});
        driver.publish(0);
        CHECK(pop_error(queue) == QueueErrorKind::IndirectLength);
    }
    SECTION("an indirect table of length 0") {
        driver.write_descriptor(0, {0x30000, 0, kDescriptorIndirect, 0});
        driver.publish(0);
        CHECK(pop_error(queue) == QueueErrorKind::IndirectLength);
    }
    SECTION("an indirect descriptor with NEXT") {
        driver.write_descriptor(0, {0x30000, 16, kDescriptorIndirect | kDescriptorNext, 1});
        driver.publish(0);
        CHECK(pop_error(queue) == QueueErrorKind::IndirectWithNext);
    }
    SECTION("an indirect table outside RAM") {
        driver.write_descriptor(0, {ram.bytes().size() - 16, 32, kDescriptorIndirect, 0});
        driver.publish(0);
        CHECK(pop_error(queue) == QueueErrorKind::BufferOutsideRam);
    }
    SECTION("a loop inside an indirect table") {
        ram.put(0x30000, MockDescriptor{0x20000, 8, kDescriptorNext, 1});
        ram.put(0x30010, MockDescriptor{0x20000, 8, kDescriptorNext, 0});
        driver.write_descriptor(0, {0x30000, 32, kDescriptorIndirect, 0});
        driver.publish(0);
        CHECK(pop_error(queue) == QueueErrorKind::ChainTooLong);
    }
    SECTION("an indirect next beyond its table") {
        ram.put(0x30000, MockDescriptor{0x20000, 8, kDescriptorNext, 2});
        ram.put(0x30010, MockDescriptor{0x20000, 8, 0, 0});
        driver.write_descriptor(0, {0x30000, 32, kDescriptorIndirect, 0});
        driver.publish(0);
        CHECK(pop_error(queue) == QueueErrorKind::DescriptorIndex);
    }
    SECTION("a chain of zero-length buffers") {
        driver.add_chain({{0x20000, 0, false}, {0x20000, 0, true}});
        CHECK(pop_error(queue) == QueueErrorKind::EmptyChain);
    }
    SECTION("an available index that runs more than the queue size ahead") {
        driver.set_available_index(9);
        CHECK(pop_error(queue) == QueueErrorKind::AvailIndexJump);
    }
    // Once broken, the queue refuses further pops until activated again.
    CHECK(queue.broken());
    CHECK(pop_error(queue) == QueueErrorKind::Broken);
    auto again = activate(ram, driver);
    CHECK_FALSE(again.broken());
}

TEST_CASE("virtqueue: a chain of exactly 128 MiB is accepted, one byte more is refused", "[virtio]") {
    // 2 x 64 MiB of buffers over the same RAM: lengths add up to the cap exactly.
    MockRam ram(0x4100000);
    MockDriver driver(ram, 4);
    auto queue = activate(ram, driver);
    driver.add_chain({{0x100000, 0x4000000, false}, {0x100000, 0x4000000, true}});
    DescriptorChain chain;
    REQUIRE(queue.pop(chain).value());
    CHECK(chain.readable_bytes + chain.writable_bytes == kMaxChainBytes);
    REQUIRE(queue.push_used(chain.head, 0));
    driver.take_used();

    driver.add_chain({{0x100000, 0x4000000, false}, {0x100000, 0x4000000, true}, {0x100000, 1, true}});
    CHECK(pop_error(queue) == QueueErrorKind::ChainTooLarge);
}

TEST_CASE("virtqueue: need_event follows vring_need_event with 16-bit wrap-around", "[virtio]") {
    CHECK(need_event(0, 1, 0));       // passed event 0 going 0 -> 1
    CHECK_FALSE(need_event(1, 1, 0)); // event 1 not yet passed (fires when idx moves past 1)
    CHECK(need_event(1, 2, 0));
    CHECK(need_event(65535, 0, 65534)); // wraps: 65534 -> 0 passes 65535
    CHECK(need_event(65535, 2, 65530));
    CHECK_FALSE(need_event(3, 2, 65530));
    CHECK_FALSE(need_event(10, 5, 5)); // nothing new
}

TEST_CASE("virtqueue: event-idx suppresses interrupts until used_event is passed, across 65535", "[virtio]") {
    MockRam ram;
    MockDriver driver(ram, 8);
    auto queue = activate(ram, driver);
    const std::uint16_t start = GENERATE(std::uint16_t{0}, std::uint16_t{65530}, std::uint16_t{65535});
    driver.start_at(start);
    queue.set_indices(start, start);

    DescriptorChain chain;
    auto round_trip = [&] {
        driver.add_chain({{0x20000, 8, true}});
        REQUIRE(queue.pop(chain).value());
        REQUIRE(queue.push_used(chain.head, 8));
        driver.take_used();
    };
    // The driver wants an interrupt only after the used element at index start + 3.
    driver.set_used_event(static_cast<std::uint16_t>(start + 3));
    std::vector<bool> decisions;
    for (int i = 0; i < 6; ++i) {
        round_trip();
        decisions.push_back(queue.needs_notification());
    }
    // used idx goes start+1 .. start+6; it passes start+3 when it becomes start+4 (the 4th push).
    CHECK(decisions == std::vector<bool>{false, false, false, true, false, false});
    CHECK(driver.used_index() == static_cast<std::uint16_t>(start + 6));
    CHECK(queue.next_available() == static_cast<std::uint16_t>(start + 6));

    // Several pushes at once that jump over used_event still notify once.
    driver.set_used_event(static_cast<std::uint16_t>(start + 7));
    round_trip();
    round_trip();
    round_trip();
    CHECK(queue.needs_notification());
    CHECK_FALSE(queue.needs_notification()); // nothing new since
}

TEST_CASE("virtqueue: without event-idx, VRING_AVAIL_F_NO_INTERRUPT suppresses interrupts", "[virtio]") {
    MockRam ram;
    MockDriver driver(ram, 8);
    auto queue = activate(ram, driver, 0);
    DescriptorChain chain;
    CHECK_FALSE(queue.needs_notification()); // nothing pushed yet
    driver.add_chain({{0x20000, 8, true}});
    REQUIRE(queue.pop(chain).value());
    REQUIRE(queue.push_used(chain.head, 8));
    CHECK(queue.needs_notification());
    CHECK_FALSE(queue.needs_notification());

    driver.set_available_flags(kAvailNoInterrupt);
    driver.add_chain({{0x20000, 8, true}});
    REQUIRE(queue.pop(chain).value());
    REQUIRE(queue.push_used(chain.head, 8));
    CHECK_FALSE(queue.needs_notification());
    driver.set_available_flags(0);
    CHECK(queue.needs_notification()); // the element pushed while suppressed is still unsignalled
}

TEST_CASE("virtqueue: kick suppression writes the used flags or avail_event", "[virtio]") {
    MockRam ram;
    SECTION("flags") {
        MockDriver driver(ram, 8);
        auto queue = activate(ram, driver, 0);
        queue.disable_notifications();
        CHECK(driver.used_flags() == kUsedNoNotify);
        CHECK_FALSE(queue.enable_notifications().value());
        CHECK(driver.used_flags() == 0);
        driver.add_chain({{0x20000, 8, true}});
        CHECK(queue.enable_notifications().value()); // work arrived: process it rather than wait
    }
    SECTION("avail_event, wrapping") {
        MockDriver driver(ram, 8);
        auto queue = activate(ram, driver);
        driver.start_at(65535);
        queue.set_indices(65535, 65535);
        driver.add_chain({{0x20000, 8, true}});
        DescriptorChain chain;
        REQUIRE(queue.pop(chain).value());
        CHECK_FALSE(queue.enable_notifications().value());
        CHECK(driver.avail_event() == 0);
    }
}

TEST_CASE("virtqueue: push_used refuses an id outside the queue, pop on an inactive queue fails",
          "[virtio]") {
    MockRam ram;
    MockDriver driver(ram, 8);
    auto queue = activate(ram, driver);
    CHECK(queue.push_used(8, 0).error().kind == QueueErrorKind::UsedIdOutOfRange);
    Virtqueue inactive;
    DescriptorChain chain;
    CHECK(inactive.pop(chain).error().kind == QueueErrorKind::NotActive);
    CHECK_FALSE(inactive.needs_notification());
    QueueError error{QueueErrorKind::BufferOutsideRam, 3, 0x10000, 0x20};
    CHECK(error.describe() == "virtqueue: chain at head 3: buffer is outside RAM (0x10000+0x20)");
}
