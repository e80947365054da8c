#!/usr/bin/env bash
# Bare metal for the redfish driver's tests and bench/baremetal.py, on a machine without any:
# libvirt domains play the servers, sushy-emulator (its libvirt driver) plays their BMCs.
# Needs scripts/setup-libvirt.sh first (libvirtd, QEMU) and the venv (sushy-tools).
# Idempotent; a few checks when everything is in place.
#
#   scripts/setup-redfish.sh          # packages, images, machines, emulator
#   scripts/setup-redfish.sh --stop   # stop the emulator (the machines stay defined)
#
# What it makes, and why:
# - Two boot images, built once into $GPUCLOUD_VM_CACHE/redfish (outside the repository),
#   both a Debian cloud kernel plus a busybox initramfs (no root disk needed, seconds to build):
#   * testos: the customer's OS of the tests. Its init reads the cloud-init NoCloud seed that
#     gpucloud appends to the initrd (/var/lib/cloud/seed/nocloud): the `local-hostname` of
#     meta-data becomes the hostname, the keys under `ssh_authorized_keys` of user-data go to
#     root, and dropbear serves SSH (password logins off, Ed25519 host key made at boot).
#   * wipe: the cleaning image. It discards and zeroes every virtio disk, then powers the
#     machine off — which is how gpucloud learns the wipe succeeded. A wipe that fails leaves
#     the machine on (gpucloud times out and puts it in maintenance).
#   The kernel is the real Debian package (apt-get download), so its modules match it; only
#   the virtio ones the machines need are copied in.
# - Machines gpucloud-bm-1..N (GPUCLOUD_BM_COUNT, default 3): 384 MiB, 1 vCPU, TCG with a
#   32 MiB translation cache (the test hosts are shared and have no KVM), BIOS, a 64 MiB qcow2
#   disk with discard/detect_zeroes=unmap (zeroes written by the wipe free the qcow2 clusters),
#   QEMU user networking with SSH forwarded from 127.0.0.1:$((GPUCLOUD_BM_SSH_BASE + i)).
#   Machine type `pc`: the emulator inserts virtual media as an IDE CD-ROM there.
# - A libvirt storage pool (gpucloud-redfish) into which the emulator uploads inserted media.
# - sushy-emulator on 127.0.0.1:$GPUCLOUD_REDFISH_PORT (default 8470) with HTTP basic auth
#   (user admin, password in $STATE/bmc-password), restricted to these machines.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${GPUCLOUD_VM_CACHE:-/var/cache/gpucloud-test}/redfish"
STATE="${GPUCLOUD_REDFISH_STATE:-/var/lib/gpucloud-test/redfish}"
URI="qemu:///system"
COUNT="${GPUCLOUD_BM_COUNT:-3}"
SSH_BASE="${GPUCLOUD_BM_SSH_BASE:-22100}"
PORT="${GPUCLOUD_REDFISH_PORT:-8470}"
POOL=gpucloud-redfish
IMAGE_VERSION=6  # bump when a recipe below changes: the images are rebuilt
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

say() { echo "setup-redfish: $*" >&2; }
die() { say "CANNOT CONTINUE: $*"; exit 1; }

if [ "${1:-}" = "--stop" ]; then
  if [ -f "$STATE/emulator.pid" ]; then
    kill "$(cat "$STATE/emulator.pid")" 2>/dev/null || true
    rm -f "$STATE/emulator.pid"
  fi
  exit 0
fi

# 1. Packages: busybox and dropbear for the images, isolinux + genisoimage for gpucloud's boot
#    ISOs (the driver builds them), qemu-img to read the disks back.
need=()
for f in /bin/busybox /usr/sbin/dropbear /usr/bin/dropbearkey /usr/lib/ISOLINUX/isolinux.bin \
         /usr/lib/syslinux/modules/bios/ldlinux.c32 /usr/bin/genisoimage /usr/bin/qemu-img /usr/bin/cpio; do
  [ -e "$f" ] || need+=("$f")
done
if [ "${#need[@]}" -gt 0 ]; then
  say "installing packages (missing: ${need[*]})"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
  $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
    busybox-static dropbear-bin isolinux syslinux-common genisoimage qemu-utils cpio >/dev/null \
    || die "apt-get install failed"
fi
virsh -c "$URI" version >/dev/null 2>&1 || die "libvirtd does not answer at $URI: run scripts/setup-libvirt.sh first"
[ -x "$root/.venv/bin/sushy-emulator" ] || die "sushy-emulator is not in .venv: run ./scripts/venv"

# 2. The images.
MODULES="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net virtio_blk"
if [ "$(cat "$CACHE/VERSION" 2>/dev/null)" != "$IMAGE_VERSION" ] || [ ! -f "$CACHE/vmlinuz" ] \
   || [ ! -f "$CACHE/testos.img" ] || [ ! -f "$CACHE/wipe.img" ]; then
  say "building the test OS and wipe images in $CACHE (once)"
  $SUDO mkdir -p "$CACHE"
  work="$(mktemp -d /var/tmp/gpucloud-redfish.XXXXXX)"
  trap 'rm -rf "$work"' EXIT
  pkg="$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')"
  [ -n "$pkg" ] || die "no linux-image-cloud-amd64 in apt's lists (apt-get update?)"
  (cd "$work" && apt-get download -qq "$pkg" 2>/dev/null) || die "apt-get download $pkg failed"
  dpkg-deb -x "$work"/linux-image-*.deb "$work/kernel"
  kver="$(ls "$work/kernel/lib/modules" | head -n1)"

  common() {  # $1 = initramfs root: busybox, devices, modules
    local r="$1"
    mkdir -p "$r"/{bin,sbin,etc,proc,sys,dev,tmp,root,lib/modules,usr/bin,usr/sbin,var/lib/cloud/seed/nocloud}
    cp /bin/busybox "$r/bin/busybox"
    for m in $MODULES; do
      f="$(find "$work/kernel/lib/modules/$kver" -name "$m.ko*" | head -n1)"
      [ -n "$f" ] || die "module $m not found in $pkg"
      case "$f" in
        *.xz) xz -dc "$f" > "$r/lib/modules/$m.ko" ;;
        *.zst) zstd -qdc "$f" > "$r/lib/modules/$m.ko" ;;
        *) cp "$f" "$r/lib/modules/$m.ko" ;;
      esac
    done
    cat > "$r/lib/boot-common.sh" <<EOF
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /dev/pts; mount -t devpts devpts /dev/pts
for m in $MODULES; do insmod /lib/modules/\$m.ko || echo "boot: insmod \$m failed"; done
EOF
  }

  # The test OS.
  t="$work/testos"
  common "$t"
  cp /usr/sbin/dropbear /usr/bin/dropbearkey "$t/usr/sbin/"
  for lib in $(ldd /usr/sbin/dropbear /usr/bin/dropbearkey | awk '/=>/{print $3} /ld-linux/{print $1}' | sort -u); do
    mkdir -p "$t$(dirname "$lib")"; cp -L "$lib" "$t$lib"
  done
  echo 'root:x:0:0:root:/root:/bin/sh' > "$t/etc/passwd"
  echo 'root:*:1::::::' > "$t/etc/shadow"
  echo 'root:x:0:' > "$t/etc/group"
  echo /bin/sh > "$t/etc/shells"
  mkdir -p "$t/usr/share/udhcpc"
  cat > "$t/usr/share/udhcpc/default.script" <<'EOF'
#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route add default via "${router%% *}" dev "$interface"
    : > /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done ;;
esac
exit 0
EOF
  cat > "$t/init" <<'EOF'
#!/bin/busybox sh
. /lib/boot-common.sh
seed=/var/lib/cloud/seed/nocloud
name="$(sed -n 's/^local-hostname: *//p' "$seed/meta-data" 2>/dev/null | tr -d "\"' ")"
hostname "${name:-testos}"
mkdir -p /root/.ssh /etc/dropbear; chmod 700 /root /root/.ssh
# Keys: the list items under `ssh_authorized_keys:` (gpucloud writes one per line).
awk '/ssh_authorized_keys:/{k=1; next} k && /^ *- /{sub(/^ *- */, ""); gsub(/^["'\'']|["'\'']$/, ""); print; next} k && !/^ *- /{k=0}' \
  "$seed/user-data" > /root/.ssh/authorized_keys 2>/dev/null
chmod 600 /root/.ssh/authorized_keys
echo "testos: $(wc -l < /root/.ssh/authorized_keys) key(s) for root, hostname $(hostname)"
ip link set lo up
for _ in 1 2 3 4 5 6 7 8 9 10; do [ -e /sys/class/net/eth0 ] || ls /sys/class/net | grep -q '^e' && break; sleep 0.5; done
echo "testos: interfaces $(ls /sys/class/net | tr '\n' ' ')"
for nic in /sys/class/net/e*; do ip link set "${nic##*/}" up; udhcpc -q -n -t 10 -i "${nic##*/}" -s /usr/share/udhcpc/default.script; done
dropbearkey -t ed25519 -f /etc/dropbear/dropbear_ed25519_host_key >/dev/null 2>&1
dropbear -r /etc/dropbear/dropbear_ed25519_host_key -s -p 22
echo "testos: ssh ready"
while :; do sleep 3600; done
EOF
  chmod 755 "$t/init" "$t/usr/share/udhcpc/default.script"

  # The wipe image.
  w="$work/wipe"
  common "$w"
  cat > "$w/init" <<'EOF'
#!/bin/busybox sh
. /lib/boot-common.sh
ok=1
for b in /sys/block/vd*; do
  [ -e "$b" ] || continue
  dev="/dev/${b##*/}"
  echo "wipe: $dev"
  blkdiscard "$dev" 2>/dev/null || echo "wipe: discard unsupported on $dev"
  dd if=/dev/zero of="$dev" bs=1M conv=fsync 2>/dev/null
  # dd ends with "no space left"; what counts is that the disk reads back as zeroes.
  if [ -n "$(dd if="$dev" bs=1M 2>/dev/null | tr -d '\000' | head -c 1)" ]; then
    echo "wipe: $dev still has data"; ok=0
  fi
done
sync
if [ "$ok" = 1 ]; then echo "wipe: done"; poweroff -f; fi
echo "wipe: FAILED, staying on"
while :; do sleep 3600; done
EOF
  chmod 755 "$w/init"

  for img in testos wipe; do
    (cd "$work/$img" && find . | cpio -o -H newc --quiet | gzip -9) > "$work/$img.img"
  done
  $SUDO install -m 0644 "$work/kernel/boot/vmlinuz-$kver" "$CACHE/vmlinuz"
  $SUDO install -m 0644 "$work/testos.img" "$work/wipe.img" "$CACHE/"
  echo "$IMAGE_VERSION" | $SUDO tee "$CACHE/VERSION" >/dev/null
  say "images ready: $CACHE/{vmlinuz,testos.img,wipe.img} (kernel $kver)"
fi

# 3. The machines and the pool the emulator uploads media into. Boot ISOs that earlier test
#    runs left behind (18 MB each) go once they are an hour old.
find "$(dirname "$STATE")/redfish-media" -mindepth 1 -maxdepth 1 -mmin +60 -exec rm -rf {} + \
  2>/dev/null || true
$SUDO mkdir -p "$STATE/pool"
$SUDO chmod 0755 "$STATE" "$STATE/pool" "$(dirname "$STATE")"
if ! virsh -c "$URI" pool-info "$POOL" >/dev/null 2>&1; then
  virsh -c "$URI" pool-define-as "$POOL" dir --target "$STATE/pool" >/dev/null || die "pool-define-as failed"
fi
case "$(virsh -c "$URI" pool-info "$POOL" 2>/dev/null)" in
  *running*) ;;
  *) virsh -c "$URI" pool-start "$POOL" >/dev/null || die "cannot start storage pool $POOL" ;;
esac
uuids=()
for i in $(seq 1 "$COUNT"); do
  name="gpucloud-bm-$i"
  disk="$STATE/$name.qcow2"
  [ -f "$disk" ] || { qemu-img create -q -f qcow2 "$disk" 64M && chmod 0666 "$disk"; }
  if ! virsh -c "$URI" dominfo "$name" >/dev/null 2>&1; then
    xml="$(mktemp)"
    cat > "$xml" <<EOF
<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>$name</name>
  <title>gpucloud test bare-metal machine $i</title>
  <memory unit='MiB'>384</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <features><acpi/><apic/><tcg><tb-cache unit='MiB'>32</tb-cache></tcg></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap' detect_zeroes='unmap'/>
      <source file='$disk'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'><source path='$STATE/$name.console.log' append='on'/><target port='0'/></serial>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-netdev'/><qemu:arg value='user,id=bmnet0,hostfwd=tcp:127.0.0.1:$((SSH_BASE + i))-:22'/>
    <qemu:arg value='-device'/><qemu:arg value='virtio-net-pci,netdev=bmnet0,bus=pci.0,addr=0x10'/>
  </qemu:commandline>
</domain>
EOF
    virsh -c "$URI" define "$xml" >/dev/null || die "cannot define $name"
    rm -f "$xml"
  fi
  uuids+=("$(virsh -c "$URI" domuuid "$name" | tr -d '[:space:]')")
done

# 4. The emulator.
if [ ! -f "$STATE/bmc-password" ]; then
  head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$STATE/bmc-password"
  chmod 0600 "$STATE/bmc-password"
fi
"$root/.venv/bin/python" - "$STATE" "$PORT" "$URI" "$POOL" "${uuids[@]}" <<'EOF'
import os, sys, bcrypt
state, port, uri, pool, *uuids = sys.argv[1:]
pw = open(f"{state}/bmc-password").read().strip().encode()
if not os.path.exists(f"{state}/htpasswd"):
    with open(f"{state}/htpasswd", "w") as f:
        f.write("admin:" + bcrypt.hashpw(pw, bcrypt.gensalt(rounds=4)).decode() + "\n")
conf = (f"SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\nSUSHY_EMULATOR_LISTEN_PORT = {port}\n"
            f"SUSHY_EMULATOR_LIBVIRT_URI = '{uri}'\nSUSHY_EMULATOR_STORAGE_POOL = '{pool}'\n"
            f"SUSHY_EMULATOR_ALLOWED_INSTANCES = {uuids!r}\n"
            f"SUSHY_EMULATOR_AUTH_FILE = '{state}/htpasswd'\n"
            "SUSHY_EMULATOR_IGNORE_BOOT_DEVICE = False\n")
path = f"{state}/emulator.conf"
# Rewritten only when it changes: a newer file than the running emulator means restart it.
if not os.path.exists(path) or open(path).read() != conf:
    with open(path, "w") as f:
        f.write(conf)
EOF
answers() { curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/redfish/v1/" 2>/dev/null | grep -q '^[24]'; }
pid="$(cat "$STATE/emulator.pid" 2>/dev/null || true)"
if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && answers \
   && [ "$STATE/emulator.conf" -ot "$STATE/emulator.started" ]; then
  exit 0
fi
[ -n "$pid" ] && kill "$pid" 2>/dev/null && sleep 0.5 || true
say "starting sushy-emulator on 127.0.0.1:$PORT"
setsid "$root/.venv/bin/sushy-emulator" --config "$STATE/emulator.conf" \
  >"$STATE/emulator.log" 2>&1 < /dev/null &
echo $! > "$STATE/emulator.pid"
for _ in $(seq 1 40); do answers && break; sleep 0.25; done
answers || die "sushy-emulator did not answer on 127.0.0.1:$PORT (see $STATE/emulator.log)"
touch "$STATE/emulator.started"
say "sushy-emulator ready: http://127.0.0.1:$PORT/redfish/v1 (admin / $STATE/bmc-password), machines ${uuids[*]}"
