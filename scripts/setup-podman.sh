#!/usr/bin/env bash
# Make a Podman engine answer the Docker Engine API on this machine, for the docker driver's
# tests, the local provider and bench/containers.py. Idempotent and quick when all is in place.
#
#   scripts/setup-podman.sh            # install, configure, build the test image, serve
#   GPUCLOUD_PODMAN_SOCKET=/path.sock  # where to serve (default below)
#
# Why each step:
# - Debian's podman; runc because the default crun fails on this kernel's cgroup layout;
#   catatonit is the init process containers get (`init: true`); busybox-static is the whole
#   test image, since no registry is reachable from here.
# - default_ulimits: podman's defaults exceed the sandbox's hard limits, and container start
#   fails with "operation not permitted" when it tries to raise them.
# - events_logfile_max_size: the default 1m event log rotates within minutes of test churn,
#   and /events reads the engine's events for a container from it.
# - a registry (Debian's docker-registry, the reference implementation) on 127.0.0.1: the
#   tests push the test image there under fresh names, so that a deploy really pulls an image
#   the engine does not have. Plain HTTP, so the engine is told it is an insecure registry.
set -euo pipefail

SOCKET="${GPUCLOUD_PODMAN_SOCKET:-/run/gpucloud-podman/podman.sock}"
IMAGE="${GPUCLOUD_TEST_IMAGE:-localhost/gpucloud-busybox:latest}"
LOG="${GPUCLOUD_PODMAN_LOG:-/tmp/gpucloud-podman-service.log}"
REGISTRY="${GPUCLOUD_TEST_REGISTRY:-127.0.0.1:5070}"
REGISTRY_DIR=/var/lib/gpucloud-test-registry
REGISTRIES_CONF=/etc/containers/registries.conf.d/50-gpucloud-test.conf
PIDFILE="$(dirname "$SOCKET")/service.pid"
MARK="gpucloud: setup-podman v2"
CONF=/etc/containers/containers.conf
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

say() { echo "setup-podman: $*" >&2; }

answers() {
  # The Engine API's ping, over the unix socket.
  curl -sf --max-time 3 --unix-socket "$SOCKET" http://d/_ping >/dev/null 2>&1
}

# 1. Packages.
need=()
for cmd in podman runc slirp4netns fuse-overlayfs newuidmap busybox catatonit curl \
    docker-registry; do
  command -v "$cmd" >/dev/null 2>&1 || need+=("$cmd")
done
if [ ! -x /bin/busybox ] || ! /bin/busybox --list >/dev/null 2>&1; then need+=(busybox-static); fi
if [ "${#need[@]}" -gt 0 ]; then
  say "installing packages (missing: ${need[*]})"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq podman runc slirp4netns fuse-overlayfs uidmap busybox-static \
    catatonit curl docker-registry >/dev/null
fi

# 2. Engine configuration (only rewritten when ours is not there yet).
conf_changed=0
if ! grep -q "$MARK" "$CONF" 2>/dev/null; then
  conf_changed=1
  say "writing $CONF"
  $SUDO mkdir -p /etc/containers
  if [ -f "$CONF" ]; then
    say "keeping the previous one as $CONF.bak-gpucloud"
    $SUDO cp "$CONF" "$CONF.bak-gpucloud"
  fi
  $SUDO tee "$CONF" >/dev/null <<'EOF'
# gpucloud: setup-podman v2 — scripts/setup-podman.sh wrote this file (see it for why).
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]

[engine]
runtime = "runc"
events_logger = "file"
events_logfile_max_size = "100m"
EOF
fi

# The test registry is plain HTTP: the engine must know, or it insists on HTTPS.
if ! grep -qs "location = \"$REGISTRY\"" "$REGISTRIES_CONF"; then
  conf_changed=1
  say "writing $REGISTRIES_CONF (insecure test registry $REGISTRY)"
  $SUDO mkdir -p "$(dirname "$REGISTRIES_CONF")"
  $SUDO tee "$REGISTRIES_CONF" >/dev/null <<EOF
# gpucloud: scripts/setup-podman.sh wrote this file: the tests' local registry speaks HTTP.
[[registry]]
location = "$REGISTRY"
insecure = true
EOF
fi

# A service started before the registry file existed has not read it (the engine reads the
# registries configuration once): restart it.
if [ -f "$PIDFILE" ] && [ "$REGISTRIES_CONF" -nt "$PIDFILE" ]; then conf_changed=1; fi

# 3. The test image: a busybox-static root filesystem, imported (no registry needed).
if ! podman image exists "$IMAGE" 2>/dev/null; then
  say "building $IMAGE from busybox-static"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/rootfs/bin" "$work/rootfs/tmp" "$work/rootfs/www" "$work/rootfs/etc"
  cp /bin/busybox "$work/rootfs/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] && continue
    ln -sf busybox "$work/rootfs/bin/$applet"
  done
  echo 'root:x:0:0:root:/root:/bin/sh' >"$work/rootfs/etc/passwd"
  echo 'root:x:0:' >"$work/rootfs/etc/group"
  tar -C "$work/rootfs" -cf "$work/rootfs.tar" .
  podman import --change 'ENV PATH=/bin' --change 'CMD ["/bin/sh"]' \
    "$work/rootfs.tar" "$IMAGE" >/dev/null
fi

# 4. The test registry (its own config: the package's default one listens on every address).
registry_answers() { curl -sf --max-time 3 "http://$REGISTRY/v2/" >/dev/null 2>&1; }
if ! registry_answers; then
  say "starting the test registry on $REGISTRY (data: $REGISTRY_DIR)"
  $SUDO mkdir -p "$REGISTRY_DIR"
  $SUDO tee "$REGISTRY_DIR/config.yml" >/dev/null <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $REGISTRY_DIR/data
  delete:
    enabled: true
http:
  addr: $REGISTRY
EOF
  (cd / && exec nohup docker-registry serve "$REGISTRY_DIR/config.yml" \
      >/tmp/gpucloud-test-registry.log 2>&1 </dev/null) &
  for _ in $(seq 1 50); do registry_answers && break; sleep 0.1; done
  if ! registry_answers; then
    say "the test registry did not answer on $REGISTRY; see /tmp/gpucloud-test-registry.log"
    exit 1
  fi
fi

# 5. The API service (restarted when the configuration changed under a running one).
# A service whose working directory was deleted (it inherited a checkout or a test's temp
# dir that is gone) still answers pings, but conmon cannot start any container under it.
cwd_gone=0
if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
  case "$(readlink "/proc/$(cat "$PIDFILE")/cwd" 2>/dev/null)" in
    *"(deleted)"*) cwd_gone=1 ;;
  esac
fi
if { [ "$conf_changed" = 1 ] || [ "$cwd_gone" = 1 ]; } && [ -f "$PIDFILE" ] \
    && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
  say "configuration changed or working directory gone: restarting the service"
  kill "$(cat "$PIDFILE")" || true
  for _ in $(seq 1 50); do answers || break; sleep 0.1; done
fi
if answers; then
  say "engine answers on unix://$SOCKET"
  exit 0
fi
mkdir -p "$(dirname "$SOCKET")"
rm -f "$SOCKET"
say "starting podman system service on unix://$SOCKET (log: $LOG)"
# From /: a daemon must not hold on to whatever directory the caller happened to be in.
(cd / && exec nohup podman system service --time=0 "unix://$SOCKET" >"$LOG" 2>&1 </dev/null) &
echo $! >"$PIDFILE"
for _ in $(seq 1 100); do
  if answers; then
    say "engine answers on unix://$SOCKET"
    exit 0
  fi
  sleep 0.1
done
say "podman service did not answer on $SOCKET; see $LOG"
tail -n 20 "$LOG" >&2 || true
exit 1
