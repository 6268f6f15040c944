# The script of the Linux network test's initramfs (tools/test builds it with tools/mkinitramfs --script
# this --boot-marker --modules debian --module virtio_pci --module virtio_net; tests/kvm/linux_net_test.cpp
# reads what it prints). Runs as /init.d/run under busybox sh after init has loaded the modules.
#
# The test says on the kernel command line what to do:
#   vmmlab_net.mac=MAC        the virtio-net interface's MAC address (the interface is found by it)
#   vmmlab_net.addr=IP/LEN    the address to take
#   vmmlab_net.peer=IP        the test's TCP peer on the host side of the tap
#   vmmlab_net.port=PORT      its port: it echoes every byte it receives, then closes
#   vmmlab_net.bytes=N        how many bytes to send
# and the script prints "vmmlab-check: KEY VALUE" lines: iface, driver, addr, ping (status of the first
# ping that got an answer, within 10 tries), payload-sha256 (N bytes from /dev/urandom), nc (its status),
# echo-bytes and echo-sha256 (what came back), rx-bytes/tx-bytes (the interface's counters), net-checks-done.
check() { echo "vmmlab-check: $*"; }

for word in $(cat /proc/cmdline); do
    case $word in
    vmmlab_net.mac=*) mac=${word#*=} ;;
    vmmlab_net.addr=*) addr=${word#*=} ;;
    vmmlab_net.peer=*) peer=${word#*=} ;;
    vmmlab_net.port=*) port=${word#*=} ;;
    vmmlab_net.bytes=*) bytes=${word#*=} ;;
    esac
done

iface=
for sys in /sys/class/net/*; do
    [ "$(cat "$sys/address" 2>/dev/null)" = "$mac" ] && iface=${sys##*/}
done
check "iface ${iface:-none}"
[ -n "$iface" ] || exit 1
driver=$(readlink "/sys/class/net/$iface/device/driver")
check "driver ${driver##*/}"

ip link set lo up
ip link set "$iface" up
ip addr add "$addr" dev "$iface"
check "addr $(ip -4 -o addr show dev "$iface" | awk '{ print $4 }')"

status=1
for try in 1 2 3 4 5 6 7 8 9 10; do
    ping -c 1 -W 2 "$peer" >/dev/null 2>&1 && status=0 && break
done
check "ping $status try $try"

dd if=/dev/urandom of=/tmp/payload bs=$bytes count=1 iflag=fullblock 2>/dev/null
sum=$(sha256sum /tmp/payload)
check "payload-sha256 ${sum%% *}"
nc "$peer" "$port" </tmp/payload >/tmp/echo
check "nc $?"
check "echo-bytes $(wc -c </tmp/echo)"
sum=$(sha256sum /tmp/echo)
check "echo-sha256 ${sum%% *}"
check "rx-bytes $(cat "/sys/class/net/$iface/statistics/rx_bytes")"
check "tx-bytes $(cat "/sys/class/net/$iface/statistics/tx_bytes")"
check net-checks-done
