# The script of the Linux boot tests' initramfs (tools/test builds it with tools/mkinitramfs --script this
# --boot-marker; tests/kvm/linux_boot_test.cpp reads what it prints). Runs as /init.d/run under busybox sh
# after init has printed "vmmlab-init: reached", the CPU count, date and memory.
#
# Prints one "vmmlab-check: KEY VALUE" line per fact, then ends the way the kernel command line asks:
# vmmlab_check.end=reboot runs `reboot -f`; otherwise the script returns and init runs `poweroff -f`.
check() { echo "vmmlab-check: $*"; }

check cpus "$(nproc)"
check memtotal-kib "$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)"

# The RAM the kernel took from e820: the top-level "System RAM" ranges of /proc/iomem, in bytes.
ram=0
while IFS= read -r line; do
    case $line in
    " "*) ;; # a child resource (kernel code, data...), already inside its parent
    *" : System RAM")
        range=${line%% *}
        ram=$((ram + 0x${range#*-} - 0x${range%-*} + 1))
        ;;
    esac
done </proc/iomem
check system-ram-bytes "$ram"

# Wall-clock time from the kernel and from the RTC driver (the CMOS RTC at 0x70), in seconds since 1970.
check date-epoch "$(date +%s)"
check rtc-epoch "$(cat /sys/class/rtc/rtc0/since_epoch 2>/dev/null || echo none)"
check clocksource "$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"

# What the kernel complained about (level warning or worse, and any line naming an error or failure): the
# platform pieces it found missing or wrong. README.md lists what remains.
dmesg -r | grep -E '^<[0-4]>|error|fail|fatal' | sed 's/^/vmmlab-check: dmesg /'
check dmesg-end

case " $(cat /proc/cmdline) " in
*" vmmlab_check.end=reboot "*)
    check rebooting
    reboot -f
    ;;
esac
check powering-off
