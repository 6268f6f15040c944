# The script of the I/O-path test's initramfs (tools/test builds it with tools/mkinitramfs --modules
# debian --module virtio_pci --module virtio_blk --script this; tests/kvm/io_path_test.cpp reads what it
# prints). Runs as /init.d/run under busybox sh once init has loaded the modules.
#
# Prints "vmmlab-check: KEY VALUE" lines: the md5 of the whole of /dev/vda, the time of a direct-I/O dd of
# vmmlab_io.count= 4 KiB blocks (default 512), and the MSI-X interrupts the virtio disk got.
check() { echo "vmmlab-check: $*"; }

if [ ! -b /dev/vda ]; then
    check vda missing
    exit 1
fi
check vda-bytes "$(cat /sys/block/vda/size | awk '{ print $1 * 512 }')"
check vda-md5 "$(md5sum </dev/vda | cut -d' ' -f1)"

count=512
for word in $(cat /proc/cmdline); do
    case $word in vmmlab_io.count=*) count=${word#vmmlab_io.count=} ;; esac
done
start=$(cut -d' ' -f1 /proc/uptime)
dd if=/dev/vda of=/dev/null bs=4k iflag=direct count="$count" 2>/dev/null
end=$(cut -d' ' -f1 /proc/uptime)
check dd-blocks "$count"
check dd-seconds "$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')"

# Interrupts on the virtio disk's MSI-X vectors (lines naming virtio and MSI), summed over CPUs.
check virtio-msi-interrupts "$(awk '/virtio/ && /MSI/ {
    for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) sum += $i } END { print sum + 0 }' /proc/interrupts)"
