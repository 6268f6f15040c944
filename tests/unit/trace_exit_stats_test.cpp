#include <catch2/catch.hpp>
#include <chrono>
#include <string>

#include "cpu/exit_handler.hpp"
#include "trace/exit_stats.hpp"
#include "trace/site_table.hpp"

using namespace vmmlab;
using namespace std::chrono_literals;

namespace {

class NamedDevice : public Device {
public:
    explicit NamedDevice(std::string name) : name_(std::move(name)) {}
    std::string_view name() const override { return name_; }
    ExitAction read(std::uint64_t, std::span<std::byte>) override { return ExitAction::Resume; }
    ExitAction write(std::uint64_t, std::span<const std::byte>) override { return ExitAction::Resume; }

private:
    std::string name_;
};

template <typename Alternative>
std::size_t reason_of() {
    return VcpuExit(std::in_place_type<Alternative>).index();
}

} // namespace

TEST_CASE("site table: ranges get ids and names; lookups find the range holding an address", "[trace]") {
    SiteTable sites;
    CHECK(sites.size() == 3);
    CHECK(sites.site(kNoSite).name == "-");
    auto serial = sites.add(BusKind::Pio, 0x3f8, 8, "serial");
    auto exit_port = sites.add(BusKind::Pio, 0xf4, 1, "exit");
    auto blk = sites.add(BusKind::Mmio, 0xd000'0000, 0x1000, "virtio-blk");
    REQUIRE(serial.has_value());
    REQUIRE(exit_port.has_value());
    REQUIRE(blk.has_value());
    CHECK(*serial == 3);
    CHECK(*exit_port == 4);
    CHECK(*blk == 5);
    CHECK(sites.size() == 6);

    CHECK(sites.find(PioAddress{0x3f8}) == *serial);
    CHECK(sites.find(PioAddress{0x3ff}) == *serial);
    CHECK(sites.find(PioAddress{0x400}) == kUnclaimedPio);
    CHECK(sites.find(PioAddress{0x3f7}) == kUnclaimedPio);
    CHECK(sites.find(PioAddress{0xf4}) == *exit_port);
    CHECK(sites.find(PioAddress{0}) == kUnclaimedPio);
    CHECK(sites.find(MmioAddress{0xd000'0fff}) == *blk);
    CHECK(sites.find(MmioAddress{0xd000'1000}) == kUnclaimedMmio);
    // The same number on the other bus is another address space.
    CHECK(sites.find(BusKind::Mmio, 0x3f8) == kUnclaimedMmio);

    CHECK(sites.site(*serial).label() == "serial (pio 0x3f8)");
    CHECK(sites.site(*blk).label() == "virtio-blk (mmio 0xd0000000)");
    CHECK(sites.site(9999).name == "-");
}

TEST_CASE("site table: refuses overlapping, empty and wrapping ranges", "[trace]") {
    SiteTable sites;
    REQUIRE(sites.add(BusKind::Pio, 0x3f8, 8, "serial"));
    auto overlap = sites.add(BusKind::Pio, 0x3fc, 2, "other");
    REQUIRE_FALSE(overlap.has_value());
    CHECK(overlap.error().find("overlaps serial") != std::string::npos);
    CHECK_FALSE(sites.add(BusKind::Pio, 0x3f0, 9, "below"));
    CHECK_FALSE(sites.add(BusKind::Pio, 0x100, 0, "empty"));
    CHECK_FALSE(sites.add(BusKind::Pio, 0xfffe, 4, "past 0xffff"));
    CHECK_FALSE(sites.add(BusKind::Mmio, UINT64_MAX - 1, 4, "wraps"));
    CHECK(sites.add(BusKind::Pio, 0xffff, 1, "last port"));
    CHECK(sites.add(BusKind::Mmio, 0x3f8, 8, "mmio at the same number"));
    CHECK(sites.size() == 6);
}

TEST_CASE("site table: built from the buses, one site per device range", "[trace]") {
    NamedDevice serial("serial"), blk("virtio-blk");
    PioBus pio;
    MmioBus mmio;
    REQUIRE(pio.insert(PioAddress{0x3f8}, 8, serial));
    REQUIRE(mmio.insert(MmioAddress{0xfeb0'0000}, 0x200, blk));
    const SiteTable sites = SiteTable::from_buses(pio, mmio);
    CHECK(sites.size() == 5);
    CHECK(sites.site(sites.find(PioAddress{0x3fa})).name == "serial");
    CHECK(sites.site(sites.find(MmioAddress{0xfeb0'0100})).name == "virtio-blk");
}

TEST_CASE("exit stats: counts by reason and by site with latency histograms", "[trace]") {
    SiteTable sites;
    const SiteId serial = *sites.add(BusKind::Pio, 0x3f8, 8, "serial");
    const SiteId blk = *sites.add(BusKind::Mmio, 0xd000'0000, 0x1000, "virtio-blk");
    ExitStats stats(sites.size());
    CHECK(stats.site_count() == sites.size());

    for (int i = 0; i < 100; ++i)
        stats.record(reason_of<IoOut>(), serial, 1000 + static_cast<std::uint64_t>(i));
    for (int i = 0; i < 10; ++i)
        stats.record(reason_of<IoIn>(), serial, 2000);
    stats.record(reason_of<MmioWrite>(), blk, 5000);
    stats.record(reason_of<MmioRead>(), kUnclaimedMmio, 300);
    stats.record(reason_of<Hlt>(), serial, 50); // hlt has no site: the id is ignored
    stats.record(reason_of<IoOut>(), 4242, 10); // an id outside the table: counted by reason only
    stats.record(200, kNoSite, 1);              // a reason out of range counts as unknown

    CHECK(stats.total() == 115);
    CHECK(stats.by_reason(reason_of<IoOut>()).count() == 101);
    CHECK(stats.by_reason(reason_of<IoIn>()).count() == 10);
    CHECK(stats.by_reason(reason_of<Hlt>()).count() == 1);
    CHECK(stats.by_reason(reason_of<Unknown>()).count() == 1);
    CHECK(stats.by_site(serial, true).count() == 100);
    CHECK(stats.by_site(serial, true).min() == 1000);
    CHECK(stats.by_site(serial, true).max() == 1099);
    CHECK(stats.by_site(serial, false).count() == 10);
    CHECK(stats.by_site(blk, true).count() == 1);
    CHECK(stats.by_site(blk, false).count() == 0);
    CHECK(stats.by_site(kUnclaimedMmio, false).count() == 1);
    CHECK(stats.by_site(4242, true).count() == 0);
    CHECK(stats.by_reason(999).count() == 0);
}

TEST_CASE("exit stats: merging vCPUs adds their exits; mismatched tables are refused", "[trace]") {
    SiteTable sites;
    const SiteId serial = *sites.add(BusKind::Pio, 0x3f8, 8, "serial");
    ExitStats vcpu0(sites.size()), vcpu1(sites.size());
    vcpu0.record(reason_of<IoOut>(), serial, 100);
    vcpu1.record(reason_of<IoOut>(), serial, 300);
    vcpu1.record(reason_of<Hlt>(), kNoSite, 7);
    const ExitStats* both[] = {&vcpu0, &vcpu1};
    const ExitStats merged = merge_exit_stats(both, sites.size());
    CHECK(merged.total() == 3);
    CHECK(merged.by_site(serial, true).count() == 2);
    CHECK(merged.by_site(serial, true).min() == 100);
    CHECK(merged.by_site(serial, true).max() == 300);
    CHECK(merged.by_reason(reason_of<Hlt>()).count() == 1);

    ExitStats other(sites.size() + 1);
    CHECK_THROWS_AS(other.merge(vcpu0), std::invalid_argument);
}

TEST_CASE("exit stats: rows, text table and JSON", "[trace]") {
    SiteTable sites;
    const SiteId serial = *sites.add(BusKind::Pio, 0x3f8, 8, "serial");
    const SiteId debug = *sites.add(BusKind::Pio, 0x80, 1, "post");
    const SiteId blk = *sites.add(BusKind::Mmio, 0xd000'0000, 0x1000, "virtio-blk");
    ExitStats stats(sites.size());
    for (int i = 0; i < 5; ++i)
        stats.record(reason_of<MmioWrite>(), blk, 9000);
    for (int i = 0; i < 30; ++i)
        stats.record(reason_of<IoOut>(), serial, 1000);
    for (int i = 0; i < 10; ++i)
        stats.record(reason_of<IoOut>(), debug, 4000);
    for (int i = 0; i < 50; ++i)
        stats.record(reason_of<Hlt>(), kNoSite, 20000);

    const auto rows = exit_stats_rows(stats, sites, 2s);
    REQUIRE(rows.size() == 6);
    CHECK(rows[0].reason == "hlt"); // most exits first
    CHECK(rows[0].site.empty());
    CHECK(rows[0].count == 50);
    CHECK(rows[0].per_second == Approx(25.0));
    CHECK(rows[0].p50_ns == 20000);
    CHECK(rows[1].reason == "io-out");
    CHECK(rows[1].count == 40);
    CHECK(rows[2].site == "serial (pio 0x3f8)"); // the reason's sites follow it, most exits first
    CHECK(rows[2].count == 30);
    CHECK(rows[2].p99_ns == 1000);
    CHECK(rows[3].site == "post (pio 0x80)");
    CHECK(rows[3].max_ns == 4000);
    CHECK(rows[3].per_second == Approx(5.0));
    // A site shows under the reasons of its own bus only (virtio-blk is not an io-out site).
    CHECK(rows[4].reason == "mmio-write");
    CHECK(rows[4].count == 5);
    CHECK(rows[5].site == "virtio-blk (mmio 0xd0000000)");
    CHECK(rows[5].count == 5);

    const std::string table = format_exit_stats(stats, sites, 2s);
    CHECK(table.find("reason / site") != std::string::npos);
    CHECK(table.find("  serial (pio 0x3f8)") != std::string::npos);
    CHECK(table.find("20.0 us") != std::string::npos);
    CHECK(table.find("total") != std::string::npos);
    const auto total_line = table.substr(table.find("\ntotal") + 1);
    CHECK(total_line.find(" 95 ") != std::string::npos);
    CHECK(total_line.find(" 48\n") != std::string::npos); // 95 exits in 2 s

    const auto json = exit_stats_json(stats, sites, 2s);
    CHECK(json["total"] == 95);
    CHECK(json["duration_ns"] == 2'000'000'000);
    REQUIRE(json["reasons"].size() == 3);
    CHECK(json["reasons"][2]["sites"].size() == 1);
    CHECK(json["reasons"][0]["reason"] == "hlt");
    CHECK(json["reasons"][0]["sites"].empty());
    const auto& io = json["reasons"][1];
    CHECK(io["reason"] == "io-out");
    CHECK(io["count"] == 40);
    REQUIRE(io["sites"].size() == 2);
    CHECK(io["sites"][0]["site"] == "serial");
    CHECK(io["sites"][0]["bus"] == "pio");
    CHECK(io["sites"][0]["start"] == 0x3f8);
    CHECK(io["sites"][0]["p50_ns"] == 1000);

    // No duration: rates are 0 and print as "-".
    CHECK(exit_stats_rows(stats, sites, 0s)[0].per_second == 0.0);
}
