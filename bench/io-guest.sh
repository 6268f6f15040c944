# The guest side of bench/io (run by the initramfs's init as /init.d/run; see bench/io). Parameters come
# from the kernel command line: iobench.ops, iobench.qd, and for the network iobench.peer (the host's
# address) and iobench.address (the guest's, with its prefix length).
param() { sed -n "s/.*[[:space:]]iobench\.$1=\([^[:space:]]*\).*/\1/p" /proc/cmdline; }
ops=$(param ops)
qd=$(param qd)
ops=${ops:-2000}
qd=${qd:-4}

if [ -b /dev/vda ]; then
    vmmlab-iobench blk /dev/vda --mode randread --bs 4k --ops "$ops" --label blk-randread-4k-qd1
    vmmlab-iobench blk /dev/vda --mode randread --bs 4k --ops "$ops" --qd "$qd" --label "blk-randread-4k-qd$qd"
    vmmlab-iobench blk /dev/vda --mode read --bs 128k --ops $((ops / 4)) --label blk-read-128k
    vmmlab-iobench blk /dev/vda --mode write --bs 128k --ops $((ops / 4)) --label blk-write-128k
else
    echo "io-guest: no /dev/vda"
fi

peer=$(param peer)
if [ -n "$peer" ]; then
    ip link set eth0 up && ip addr add "$(param address)" dev eth0 || echo "io-guest: cannot configure eth0"
    vmmlab-iobench net-client "$peer" --mode stream --bytes $((ops * 32768)) --label net-stream
    vmmlab-iobench net-client "$peer" --mode rr --ops "$ops" --label net-rr
fi
