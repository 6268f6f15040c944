# The script of the Linux disk tests' initramfs (tools/test builds it with tools/mkinitramfs --script this
# --boot-marker --modules debian --module virtio_pci --module virtio_blk; tests/kvm/linux_disk_test.cpp
# reads what it prints). Runs as /init.d/run under busybox sh after init has loaded the modules.
#
# Each virtio disk is found by its serial (virtio-blk GET_ID, /sys/block/vdX/serial = "vmmlab-disk<i>",
# i = the disk's place on vmmlab's command line), never by its name. Per disk it prints
# "vmmlab-check: KEY.vmmlab-disk<i> VALUE" lines:
#   dev         the block device name (vda, vdb, ...)
#   ro          /sys/block/vdX/ro
#   bytes       the size the kernel sees
#   read-sha256 SHA-256 of the whole disk as first read: the test compares it with its own image's
# then, on a writable disk, two writes of guest-made data (pattern: text lines "vmmlab-disk<i>-<tag> NNNNNN",
# counting up from 000000, cut to the length; the test makes the same bytes):
#   write-a     4 blocks of 4 KiB (tag "a", 16384 bytes) at block 16 + i, O_DIRECT, conv=fsync: dd's status
#   write-b     a whole file of 70001 + 13 * i bytes (tag "b") at byte 300007 + 1000 * i, through the page
#               cache (the kernel reads-modifies-writes the partial blocks at both ends), then `sync`
#   final-sha256  SHA-256 of the whole disk read again after dropping the page cache
# and on a read-only disk:
#   ro-write    dd's status for a 4 KiB write with conv=fsync (must fail), and the disk is unchanged
#   ro-write-error  what dd said
#   final-sha256  as above
# then "disks N" and "disk-checks-done".
#
# With vmmlab_check.mode=durability on the kernel command line it instead writes tag "a" to every disk
# (4 blocks at block 16 + i, conv=fsync, through the page cache: fsync is a flush to the device), prints
# "vmmlab-check: durable-written", and waits for the test to kill the monitor (kill -9).
check() { echo "vmmlab-check: $*"; }

# pattern TAG BYTES: the guest's data, made again by the test (linux_disk_test.cpp guest_pattern).
pattern() {
    awk -v tag="$1" 'BEGIN { for (k = 0; k < 20000; k++) printf "%s %06d\n", tag, k }' | head -c "$2"
}

mode=checks
case " $(cat /proc/cmdline) " in
*" vmmlab_check.mode=durability "*) mode=durability ;;
esac

count=0
for sys in /sys/block/vd*; do
    [ -e "$sys" ] || continue
    dev=${sys##*/}
    serial=$(cat "$sys/serial" 2>/dev/null)
    case $serial in
    vmmlab-disk[0-9]) ;;
    *)
        check "unknown-disk $dev serial '$serial'"
        continue
        ;;
    esac
    i=${serial#vmmlab-disk}
    count=$((count + 1))

    if [ "$mode" = durability ]; then
        pattern "$serial-a" 16384 >/tmp/a
        dd if=/tmp/a of="/dev/$dev" bs=4096 seek=$((16 + i)) conv=notrunc,fsync 2>/dev/null
        check "durable-write.$serial $?"
        continue
    fi

    check "dev.$serial $dev"
    check "ro.$serial $(cat "$sys/ro")"
    check "bytes.$serial $(($(cat "$sys/size") * 512))"
    sum=$(sha256sum "/dev/$dev")
    check "read-sha256.$serial ${sum%% *}"

    if [ "$(cat "$sys/ro")" = 1 ]; then
        pattern "$serial-a" 4096 >/tmp/a
        dd if=/tmp/a of="/dev/$dev" bs=4096 seek=16 conv=notrunc,fsync 2>/tmp/dd.err
        check "ro-write.$serial $?"
        check "ro-write-error.$serial $(grep -v records /tmp/dd.err | head -n 1)"
    else
        pattern "$serial-a" 16384 >/tmp/a
        dd if=/tmp/a of="/dev/$dev" bs=4096 seek=$((16 + i)) oflag=direct conv=notrunc,fsync 2>/dev/null
        check "write-a.$serial $?"
        pattern "$serial-b" $((70001 + 13 * i)) >/tmp/b
        dd if=/tmp/b of="/dev/$dev" bs=65536 seek=$((300007 + 1000 * i)) oflag=seek_bytes conv=notrunc 2>/dev/null
        check "write-b.$serial $?"
        sync
    fi
    echo 3 >/proc/sys/vm/drop_caches
    sum=$(sha256sum "/dev/$dev")
    check "final-sha256.$serial ${sum%% *}"
done
check "disks $count"

if [ "$mode" = durability ]; then
    check durable-written
    # The test kills the monitor now; should it not, the run ends at the test's timeout.
    while :; do sleep 60; done
fi
check disk-checks-done
