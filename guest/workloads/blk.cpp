// blk: block I/O against one of the guest's virtio-blk disks (platform.hpp's block_* functions).
//
//   blk [mode=read|write|randread|randwrite] [bs=4K] [qd=1] [size=S] [ops=N] [disk=0] [wait=irq|poll]
//       [event_idx=off|on] [verify=off|on] [seed=1]
//
// `size` bytes from the start of the disk (default: all of it) are the region; sequential modes walk it
// in `bs` steps (wrapping), random modes pick `bs`-aligned offsets in it (SplitMix64 from `seed`).
// `ops` requests (default: size / bs, one pass) run with `qd` in flight. Writes always carry the pattern
// of guest/workloads/blk_pattern.hpp; verify=on makes reads check every sector against it. Latency is
// per request, from its submission to the moment its completion was collected (TSC), in a log-linear
// histogram (32 steps per power of two: percentiles within 3%).
//
// Results: iops (IOPS), mb_per_s (MB/s, 10^6 bytes), latency_p50, latency_p99, latency_max (us), ops,
// io_errors (requests the device answered with a status other than OK), interrupts (device interrupts
// taken), kicks (queue notifications written), mismatched_sectors (verify=on). event_idx=on negotiates
// VIRTIO_F_EVENT_IDX, so kicks and interrupts happen only where the other side asked for them. Status 1 when
// a request failed or a sector mismatched.
#include "guest/workloads/blk.hpp"

#include "guest/workloads/blk_pattern.hpp"
#include "guest/workloads/cpu.hpp"
#include "guest/workloads/platform.hpp"
#include "guest/workloads/random.hpp"
#include "guest/workloads/workloads.hpp"

namespace vmmlab::guest {
namespace {

blk::LatencyHistogram g_latency; // 16 KiB: static rather than on the guest's 64 KiB stack

constexpr unsigned kMaxDepth = 64;

struct Slot {
    uint64_t* buffer = nullptr;
    uint64_t sector = 0;
    uint64_t submitted_at = 0;
};

// Sectors of one request whose words differ from the pattern; prints the first difference once.
uint64_t check_pattern(const uint64_t* words, uint64_t first, uint64_t sectors, bool& printed) {
    uint64_t bad = 0;
    for (uint64_t s = 0; s < sectors; ++s) {
        for (uint64_t w = 0; w < blk::kWordsPerSector; ++w) {
            const uint64_t expected = blk::pattern_word(first + s, w);
            const uint64_t got = words[s * blk::kWordsPerSector + w];
            if (got == expected) continue;
            ++bad;
            if (!printed) {
                printed = true;
                Line line;
                line.put("blk: sector ").put_u64(first + s).put(" word ").put_u64(w).put(": read ");
                line.put_hex(got).put(", expected ").put_hex(expected);
                print_line(line);
            }
            break;
        }
    }
    return bad;
}

double microseconds(uint64_t ticks) {
    return ticks_to_seconds(ticks) * 1e6;
}

} // namespace

int run_blk(const Args& args) {
    constexpr Text kOptions[] = {"mode", "bs",   "qd",        "size",   "ops",
                                 "disk", "wait", "event_idx", "verify", "seed"};
    uint64_t bs = 0;
    uint64_t qd = 0;
    uint64_t size = 0;
    uint64_t ops = 0;
    uint64_t disk = 0;
    uint64_t seed = 0;
    if (!args.only(kOptions) || !args.size("bs", 4096, bs) || !args.count("qd", 1, qd) ||
        !args.size("size", ~0ULL, size) || !args.count("ops", 0, ops) || !args.count("disk", 0, disk) ||
        !args.count("seed", 1, seed))
        return kExitUsage;
    const Text mode = args.text("mode", "randread");
    const bool write = mode == Text{"write"} || mode == Text{"randwrite"};
    const bool random = mode == Text{"randread"} || mode == Text{"randwrite"};
    if (!write && !random && !(mode == Text{"read"})) {
        args.error("mode must be read, write, randread or randwrite");
        return kExitUsage;
    }
    const Text wait_text = args.text("wait", "irq");
    if (!(wait_text == Text{"irq"}) && !(wait_text == Text{"poll"})) {
        args.error(
            "wait must be irq (halt until the device's MSI-X interrupt) or poll (spin on the used ring)");
        return kExitUsage;
    }
    const Text verify_text = args.text("verify", "off");
    if (!(verify_text == Text{"on"}) && !(verify_text == Text{"off"})) {
        args.error("verify must be on or off");
        return kExitUsage;
    }
    const bool verify = verify_text == Text{"on"};
    const Text event_text = args.text("event_idx", "off");
    if (!(event_text == Text{"on"}) && !(event_text == Text{"off"})) {
        args.error("event_idx must be on or off");
        return kExitUsage;
    }
    if (bs % blk::kSectorBytes != 0 || bs > (4ULL << 20)) {
        args.error("bs must be a multiple of 512 bytes, at most 4M");
        return kExitUsage;
    }
    if (qd == 0 || qd > kMaxDepth) {
        args.error("qd must be 1..64");
        return kExitUsage;
    }
    if (disk > 7) {
        args.error("disk must be 0..7");
        return kExitUsage;
    }

    platform::BlockInfo info;
    Line error;
    if (!platform::block_supported()) {
        (void)platform::block_open({}, info, error);
        Line line;
        line.put("blk: not measured: ").put(error.text());
        print_line(line);
        return kExitOk; // like the exit benchmarks natively: nothing to measure is not a failure
    }
    const platform::BlockOpen request{static_cast<unsigned>(disk), static_cast<unsigned>(qd),
                                      wait_text == Text{"irq"} ? platform::BlockWait::Interrupt
                                                               : platform::BlockWait::Poll,
                                      event_text == Text{"on"}};
    if (!platform::block_open(request, info, error)) {
        Line line;
        line.put("blk: not measured: ").put(error.text());
        print_line(line);
        return kExitUsage;
    }
    const uint64_t disk_bytes = info.sectors * blk::kSectorBytes;
    if (size == ~0ULL) size = disk_bytes;
    if (size > disk_bytes || size < bs) {
        Line line;
        line.put("size ")
            .put_u64(size)
            .put(" must be at least bs and at most the disk's ")
            .put_u64(disk_bytes);
        line.put(" bytes");
        args.error(line.text());
        platform::block_close();
        return kExitUsage;
    }
    const uint64_t blocks = size / bs;
    if (ops == 0) ops = blocks;

    const uint64_t sectors_per_op = bs / blk::kSectorBytes;
    auto* buffers = static_cast<uint64_t*>(platform::allocate(static_cast<size_t>(qd * bs), 4096));
    if (buffers == nullptr) {
        args.error("no memory for qd * bs bytes of buffers");
        platform::block_close();
        return kExitUsage;
    }
    for (uint64_t i = 0; i < qd * bs / 8; ++i)
        buffers[i] = 0;

    Line line;
    line.put("blk: ").put(mode).put(" bs=").put_bytes(bs).put(" qd=").put_u64(qd).put(" ops=").put_u64(ops);
    line.put(" over ").put_bytes(blocks * bs).put(" of ").put(info.transport).put(" (").put_u64(info.sectors);
    line.put(" sectors, queue ").put_u64(info.queue_size).put(info.read_only ? ", read-only" : "");
    line.put("), wait=").put(wait_text).put(event_text == Text{"on"} ? ", event_idx" : "");
    line.put(verify ? ", verify" : "");
    print_line(line);

    Slot slots[kMaxDepth];
    SplitMix64 random_offsets(seed);
    uint64_t next_block = 0;
    const auto next_sector = [&]() -> uint64_t {
        const uint64_t block = random ? random_offsets.below(blocks) : next_block++ % blocks;
        return block * sectors_per_op;
    };
    const uint64_t timeout = platform::tick_hz() * 10; // per wait; the nested sandbox is slow

    uint64_t issued = 0;
    uint64_t completed = 0;
    uint64_t io_errors = 0;
    uint64_t mismatched = 0;
    bool printed_mismatch = false;
    const auto submit = [&](unsigned tag, uint64_t now) {
        Slot& slot = slots[tag];
        slot.sector = next_sector();
        if (write) blk::fill_pattern(slot.buffer, slot.sector, sectors_per_op);
        slot.submitted_at = now;
        platform::block_submit(static_cast<uint16_t>(tag), write, slot.sector, slot.buffer,
                               static_cast<uint32_t>(bs));
        ++issued;
    };

    for (unsigned tag = 0; tag < qd; ++tag)
        slots[tag].buffer = buffers + tag * bs / 8;
    const uint64_t start = read_ticks();
    for (unsigned tag = 0; tag < qd && issued < ops; ++tag)
        submit(tag, read_ticks());
    platform::block_kick();
    platform::BlockCompletion done[kMaxDepth];
    while (completed < ops) {
        const size_t count = platform::block_reap(done, kMaxDepth, timeout);
        const uint64_t now = read_ticks();
        bool submitted = false;
        for (size_t i = 0; i < count; ++i) {
            Slot& slot = slots[done[i].tag];
            g_latency.add(now - slot.submitted_at);
            ++completed;
            if (done[i].status != platform::kBlockStatusOk) {
                if (io_errors == 0) {
                    line.clear();
                    line.put("blk: ").put(write ? "write" : "read").put(" of sector ").put_u64(slot.sector);
                    line.put(" answered status ").put_u64(done[i].status);
                    line.put(done[i].status == platform::kBlockStatusIoError ? " (IOERR)" : " (UNSUPP)");
                    print_line(line);
                }
                ++io_errors;
            } else if (verify && !write) {
                mismatched += check_pattern(slot.buffer, slot.sector, sectors_per_op, printed_mismatch);
            }
            if (issued < ops) {
                submit(done[i].tag, read_ticks());
                submitted = true;
            }
        }
        if (submitted) platform::block_kick();
    }
    const uint64_t ticks = read_ticks() - start;
    const uint64_t interrupts = platform::block_interrupts();
    const uint64_t kicks = platform::block_kicks();
    platform::block_close();
    platform::release(buffers);

    const double seconds = ticks_to_seconds(ticks);
    const double iops = static_cast<double>(ops) / seconds;
    const double mb_per_s = static_cast<double>(ops * bs) / seconds / 1e6;
    const double p50 = microseconds(g_latency.percentile(0.50));
    const double p99 = microseconds(g_latency.percentile(0.99));
    const double max = microseconds(g_latency.max());
    line.clear();
    line.put("blk: ").put_fixed(iops, 0).put(" IOPS, ").put_fixed(mb_per_s, 2).put(" MB/s, latency p50 ");
    line.put_fixed(p50, 1).put(" us, p99 ").put_fixed(p99, 1).put(" us, max ").put_fixed(max, 1).put(" us; ");
    line.put_u64(interrupts).put(" interrupts, ").put_u64(kicks).put(" kicks");
    print_line(line);
    report("blk", "iops", ResultValue::fixed(iops, 0), "IOPS");
    report("blk", "mb_per_s", ResultValue::fixed(mb_per_s, 2), "MB/s");
    report("blk", "latency_p50", ResultValue::fixed(p50, 1), "us");
    report("blk", "latency_p99", ResultValue::fixed(p99, 1), "us");
    report("blk", "latency_max", ResultValue::fixed(max, 1), "us");
    report("blk", "ops", ResultValue::whole(ops), "requests");
    report("blk", "io_errors", ResultValue::whole(io_errors), "requests");
    report("blk", "interrupts", ResultValue::whole(interrupts), "interrupts");
    report("blk", "kicks", ResultValue::whole(kicks), "notifications");
    if (verify) report("blk", "mismatched_sectors", ResultValue::whole(mismatched), "sectors");
    if (io_errors != 0 || mismatched != 0) {
        line.clear();
        line.put("blk: ").put_u64(io_errors).put(" requests failed, ").put_u64(mismatched);
        line.put(" sectors did not match the pattern");
        print_line(line);
        return kExitFailed;
    }
    return kExitOk;
}

} // namespace vmmlab::guest
