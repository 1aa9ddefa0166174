#!/bin/bash
# Builds kvmnet's tiny test guest into $1: Debian's stock kernel (downloaded as a package and
# unpacked, never installed) and a busybox initramfs whose /init configures eth0 from the
# kernel command line (kvmnet.ip=ADDR/LEN|dhcp|none kvmnet.gw= kvmnet.mtu= kvmnet.name=
# kvmnet.agent=1), starts qemu-guest-agent when asked, serves a command channel on ttyS1, and
# prints "KVMNET-GUEST-UP" on ttyS0 when the network is configured.
set -euo pipefail
out=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
apt-get download -qq "$kpkg" qemu-guest-agent >/dev/null
mkdir k q
dpkg -x "$kpkg"_*.deb k
dpkg -x qemu-guest-agent_*.deb q
kver=$(ls k/lib/modules/ | head -1)
mods=k/lib/modules/$kver/kernel

r=root
mkdir -p $r/{bin,sbin,etc,proc,sys,dev,tmp,run,var/run,var/lib,lib/modules,usr/bin,usr/sbin,usr/share/udhcpc}
cp "$(command -v busybox)" $r/bin/busybox
for a in $($r/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$r/bin/$a"; done
for m in drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_modern_dev \
         drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci net/core/failover \
         drivers/net/net_failover drivers/net/virtio_net drivers/net/ethernet/intel/e1000/e1000 \
         drivers/char/virtio_console; do
  cp "$mods/$m.ko" $r/lib/modules/
  echo "${m##*/}" >> $r/lib/modules/order
done
# the agent and iputils ping (busybox ping cannot set DF), with their libraries
copy_bin() {
  cp -L "$1" "$r$2"
  for lib in $(ldd "$1" | grep -o '/[^ ]*'); do mkdir -p "$r$(dirname "$lib")"; cp -L "$lib" "$r$lib"; done
}
copy_bin q/usr/sbin/qemu-ga /usr/sbin/qemu-ga
copy_bin "$(command -v ping)" /usr/bin/ping

cat > $r/usr/share/udhcpc/default.script <<'S'
#!/bin/sh
case "$1" in
  deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && { ip route del default 2>/dev/null; ip route add default via "${router%% *}" dev "$interface"; }
    [ -n "$dns" ] && { : > /etc/resolv.conf; for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done; }
    ;;
esac
exit 0
S
chmod +x $r/usr/share/udhcpc/default.script

cat > $r/init <<'S'
#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/bin:/sbin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /lib/modules/order); do insmod /lib/modules/$m.ko 2>/dev/null; done
NAME=guest IP=dhcp GW= MTU= AGENT=0
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    kvmnet.name=*) NAME=${arg#*=} ;; kvmnet.ip=*) IP=${arg#*=} ;; kvmnet.gw=*) GW=${arg#*=} ;;
    kvmnet.mtu=*) MTU=${arg#*=} ;; kvmnet.agent=*) AGENT=${arg#*=} ;;
  esac
done
hostname "$NAME"
ip link set lo up
n=0; while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
[ -n "$MTU" ] && ip link set eth0 mtu "$MTU"
ip link set eth0 up
n=0; while [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" != 1 ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
if [ "$IP" = dhcp ]; then
  udhcpc -i eth0 -q -t 20 -T 1 -A 1 -x hostname:"$NAME" -s /usr/share/udhcpc/default.script >/dev/null 2>&1
elif [ "$IP" != none ]; then
  ip addr add "$IP" dev eth0
  [ -n "$GW" ] && ip route add default via "$GW"
fi
if [ "$AGENT" = 1 ]; then
  mkdir -p /dev/virtio-ports
  for p in /sys/class/virtio-ports/*; do ln -sf "/dev/${p##*/}" "/dev/virtio-ports/$(cat "$p/name")"; done
  /usr/sbin/qemu-ga -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0 -d -f /var/run/qga.pid
fi
if [ -e /dev/ttyS1 ]; then
  ( stty -F /dev/ttyS1 raw -echo 115200 2>/dev/null
    while true; do
      while IFS= read -r line; do echo "@@BEGIN"; sh -c "$line" 2>&1; echo "@@END rc=$?"; done </dev/ttyS1 >/dev/ttyS1
      sleep 0.2
    done ) &
fi
sleep 0.1
echo "KVMNET-GUEST-UP name=$NAME addr=$(ip -4 -o addr show dev eth0 | awk '{print $4}')" > /dev/ttyS0
while true; do sleep 3600; done
S
chmod +x $r/init
mkdir -p "$out"
cp k/boot/vmlinuz-* "$out/vmlinuz.tmp"
(cd $r && find . | /bin/busybox cpio -o -H newc 2>/dev/null | gzip -1) > "$out/initramfs.tmp"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
mv "$out/initramfs.tmp" "$out/initramfs.cpio.gz"
