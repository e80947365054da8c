#!/usr/bin/env bash
# Make this machine a libvirt/QEMU host for the libvirt driver's tests and bench/vms.py:
# packages, running daemons, and a cached Debian 12 guest image. Idempotent; quick (a few
# checks) when everything is in place. The image is built once (about 80-120 s) and kept in
# $GPUCLOUD_VM_CACHE, outside the repository.
#
#   scripts/setup-libvirt.sh             # install, start, build the image if missing
#   scripts/setup-libvirt.sh --packages  # only the packages (scripts/test runs this step
#                                        # before the venv: libvirt-python builds against them)
#
# Why each step:
# - qemu-system-x86 + libvirt-daemon-system: the hypervisor and its manager. These test
#   machines have no usable KVM, so guests run under TCG (`domain_type: qemu`).
# - libvirt-dev + pkg-config: pip builds libvirt-python from source against them.
# - genisoimage builds the cloud-init NoCloud seed; qemu-utils makes the per-VM overlays.
# - mmdebstrap builds the guest from Debian's own packages (no cloud image download needed):
#   cloud-init reads the seed, openssh-server answers the tests. `PasswordAuthentication no`
#   is baked in because cloud-init's `ssh_pwauth` restarts sshd after it came up, which
#   races the first login. `datasource_list: [NoCloud, None]` skips slow probing of clouds.
#   Only an Ed25519 host key is generated: RSA-3072 generation took 30 s of a boot under
#   emulation. The config/final stages (locale, apt, grub...) only spend CPU on a guest that
#   other guests share the host with, so they are masked, with e2scrub (see below).
# - The guest boots straight from its kernel and initrd (`root=/dev/vda`): no bootloader and
#   no partition table to maintain. Its network is systemd-networkd with DHCP on any NIC.
# - Files are world-readable and directories traversable: QEMU runs as libvirt-qemu.
# - Daemons are started by hand when there is no systemd (containers, CI sandboxes).
# - libvirt's `default` NAT network (bridge virbr0, DHCP from dnsmasq) runs: the tests put
#   guests on it (`network:default`) and on its bridge (`bridge:virbr0`). dnsmasq-base is what
#   libvirt starts for the network's DHCP; without it the network does not start.
set -euo pipefail

CACHE="${GPUCLOUD_VM_CACHE:-/var/cache/gpucloud-test}"
URI="qemu:///system"
MIRROR="${GPUCLOUD_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
IMAGE_VERSION=3  # bump when the recipe below changes: the cached image is rebuilt
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

say() { echo "setup-libvirt: $*" >&2; }
die() { say "CANNOT CONTINUE: $*"; exit 1; }

# 1. Packages.
need=()
for cmd in virsh libvirtd virtlogd qemu-system-x86_64 qemu-img genisoimage mmdebstrap pkg-config dnsmasq; do
  command -v "$cmd" >/dev/null 2>&1 || need+=("$cmd")
done
pkg-config --exists libvirt 2>/dev/null || need+=(libvirt-dev)
if [ "${#need[@]}" -gt 0 ]; then
  say "installing packages (missing: ${need[*]})"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
  $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
    qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt-dev pkg-config \
    genisoimage mmdebstrap e2fsprogs dnsmasq-base >/dev/null || die "apt-get install failed"
fi
if [ "${1:-}" = "--packages" ]; then exit 0; fi

# 2. Daemons.
if ! virsh -c "$URI" version >/dev/null 2>&1; then
  say "starting virtlogd and libvirtd"
  pgrep -x virtlogd >/dev/null || $SUDO virtlogd -d || die "virtlogd did not start"
  pgrep -x libvirtd >/dev/null || $SUDO libvirtd -d || die "libvirtd did not start"
  for _ in $(seq 1 30); do virsh -c "$URI" version >/dev/null 2>&1 && break; sleep 0.5; done
  virsh -c "$URI" version >/dev/null 2>&1 \
    || die "libvirtd does not answer at $URI (see /var/log/libvirt/libvirtd.log)"
fi

# 2b. The `default` NAT network (defined by libvirt's packages; defined here if it is not).
if ! virsh -c "$URI" net-info default >/dev/null 2>&1; then
  say "defining libvirt's default network (virbr0, 192.168.122.0/24)"
  netxml="$(mktemp)"
  cat >"$netxml" <<'EOF'
<network>
  <name>default</name>
  <forward mode='nat'/>
  <bridge name='virbr0' stp='on' delay='0'/>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
    <dhcp><range start='192.168.122.2' end='192.168.122.254'/></dhcp>
  </ip>
</network>
EOF
  virsh -c "$URI" net-define "$netxml" >/dev/null || die "could not define the default network"
  rm -f "$netxml"
fi
# Read whole before grep: with pipefail, `grep -q` closing the pipe early fails the pipeline.
net_info="$(virsh -c "$URI" net-info default 2>/dev/null || true)"
if ! grep -Eq '^Active:[[:space:]]+yes' <<<"$net_info"; then
  say "starting libvirt's default network"
  virsh -c "$URI" net-start default >/dev/null \
    || die "libvirt's default network did not start (see /var/log/libvirt/libvirtd.log)"
fi
virsh -c "$URI" net-autostart default >/dev/null

# 3. The guest image: Debian 12 + cloud-init + sshd, with its kernel and initrd beside it.
if [ "$(cat "$CACHE/VERSION" 2>/dev/null)" != "$IMAGE_VERSION" ] \
   || [ ! -f "$CACHE/debian12.qcow2" ] || [ ! -f "$CACHE/vmlinuz" ] || [ ! -f "$CACHE/initrd.img" ]; then
  say "building the Debian 12 guest image in $CACHE (once; about two minutes)"
  $SUDO mkdir -p "$CACHE"
  work="$(mktemp -d /var/tmp/gpucloud-image.XXXXXX)"
  trap '$SUDO rm -rf "$work"' EXIT
  root="$work/root"
  $SUDO mmdebstrap --quiet --variant=minbase --components=main \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --include=systemd-sysv,udev,kmod,e2fsprogs,iproute2,sudo,linux-image-cloud-amd64,initramfs-tools,cloud-init,openssh-server \
    bookworm "$root" "$MIRROR" || die "mmdebstrap failed (is $MIRROR reachable?)"
  $SUDO tee "$root/etc/fstab" >/dev/null <<'EOF'
/dev/vda / ext4 defaults,errors=remount-ro 0 1
EOF
  $SUDO tee "$root/etc/systemd/network/80-dhcp.network" >/dev/null <<'EOF'
[Match]
Name=en* eth*

[Network]
DHCP=yes
EOF
  $SUDO chroot "$root" systemctl enable systemd-networkd >/dev/null 2>&1
  $SUDO tee "$root/etc/ssh/sshd_config.d/10-gpucloud.conf" >/dev/null <<'EOF'
PasswordAuthentication no
KbdInteractiveAuthentication no
EOF
  $SUDO tee "$root/etc/cloud/cloud.cfg.d/90-gpucloud.cfg" >/dev/null <<'EOF'
datasource_list: [NoCloud, None]
network: {config: disabled}
ssh_genkeytypes: [ed25519]
EOF
  # What a test guest only spends CPU on. A boot of one idle guest (systemd-analyze blame):
  # e2scrub_reap 12.6 s and cloud-init's config and final stages 11.5 s of 46 s (each stage is
  # a Python start, and the seed here needs neither: users and keys are the init stage's).
  $SUDO chroot "$root" systemctl mask e2scrub_reap.service e2scrub_all.timer \
    cloud-config.service cloud-final.service >/dev/null 2>&1
  # Every guest makes its own host keys (cloud-init) and machine id (systemd).
  $SUDO rm -f "$root"/etc/ssh/ssh_host_*
  echo "uninitialized" | $SUDO tee "$root/etc/machine-id" >/dev/null
  echo debian | $SUDO tee "$root/etc/hostname" >/dev/null
  $SUDO rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  kernel="$(ls "$root"/boot/vmlinuz-* | sort -V | tail -n1)"
  initrd="$(ls "$root"/boot/initrd.img-* | sort -V | tail -n1)"
  $SUDO cp "$kernel" "$work/vmlinuz"
  $SUDO cp "$initrd" "$work/initrd.img"
  $SUDO mkfs.ext4 -q -L root -d "$root" "$work/root.raw" 2G || die "mkfs.ext4 -d failed"
  $SUDO qemu-img convert -O qcow2 "$work/root.raw" "$work/debian12.qcow2"
  $SUDO install -m 0644 "$work/debian12.qcow2" "$work/vmlinuz" "$work/initrd.img" "$CACHE/"
  echo "$IMAGE_VERSION" | $SUDO tee "$CACHE/VERSION" >/dev/null
  say "image ready: $CACHE/debian12.qcow2 ($(du -h "$CACHE/debian12.qcow2" | cut -f1))"
fi
$SUDO chmod 0755 "$CACHE"
$SUDO chmod 0644 "$CACHE"/debian12.qcow2 "$CACHE"/vmlinuz "$CACHE"/initrd.img
