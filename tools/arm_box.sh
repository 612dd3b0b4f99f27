#!/bin/sh
# A Pi without a Pi: an aarch64 Debian bookworm userland run by qemu-user, reachable over ssh
# on 127.0.0.1, so every device path (deploy, bench --device, predict.py) runs the aarch64
# builds of Python 3.11, numpy, ai-edge-litert and onnxruntime. Proves code paths and numerics,
# never latency (the runner labels its times "emulated"). docs/DEVICES.md, "A Pi without a Pi".
#
#   tools/arm_box.sh          build what is missing (cached), start the ssh server, print the URL
#   tools/arm_box.sh test     the same, then run the slow device tests against it
#                             (pytest -m slow tests/test_arm_box.py)
#   tools/arm_box.sh stop     stop the server and unmount /proc and /dev from the root
#   tools/arm_box.sh --arch armhf [test|stop]   a 32-bit armhf root (Raspberry Pi OS 32-bit,
#                             Pi Zero 2 / Pi 3) under qemu-arm, in its own cache folder and
#                             port; each package is tried alone and wheels.txt records which
#                             have an armv7l wheel (docs/DEVICES.md, the support matrix)
#
# Design: the host's own OpenSSH server, a second instance on its own port and config, with
# `ChrootDirectory` the aarch64 root. sshd, key exchange and SFTP (internal-sftp) stay native
# x86 (fast, and nothing to install in the root); the login's shell and everything it starts
# are aarch64 binaries that binfmt_misc hands to qemu-aarch64-static (registered with the F
# flag, so it works inside the chroot). An sshd inside the root would run its key exchange
# under qemu and need openssh-server in the root, for no extra proof.
#
# Needs root (debootstrap, mounts, binfmt_misc, ChrootDirectory). Environment:
#   EDGEPRUNE_ARM_BOX         cache folder (default ~/.cache/edgeprune/arm-box, arm-box-armhf
#                             for armhf): root/, keys, sshd_config, box.json (what the slow
#                             tests read), wheels.txt
#   EDGEPRUNE_ARM_BOX_PORT    ssh port on 127.0.0.1 (default 2222, 2223 for armhf)
#   EDGEPRUNE_ARM_BOX_MIRROR  Debian mirror (default: the one apt uses, from /etc/apt/sources.list*)
#   EDGEPRUNE_ARM_BOX_PACKAGES  pip packages in the root's venv (default arm64: ai-edge-litert
#                             numpy pillow onnxruntime, all required; armhf: those and
#                             tflite-runtime==2.14.0, each tried, apt's numpy underneath)
#   PYTHON                    the host Python that `test` runs pytest with (default python3)
set -eu

ARCH=arm64
if [ "${1:-}" = --arch ]; then ARCH=${2:-}; shift 2 || shift $#; fi
case $ARCH in
    arm64) QEMU=qemu-aarch64 MACHINE=aarch64 CACHE=arm-box DEFAULT_PORT=2222 EXTRA=""
           DEFAULT_PACKAGES="ai-edge-litert numpy pillow onnxruntime" ;;
    armhf) QEMU=qemu-arm MACHINE=armv7l CACHE=arm-box-armhf DEFAULT_PORT=2223
           EXTRA=,python3-numpy
           DEFAULT_PACKAGES="numpy ai-edge-litert tflite-runtime==2.14.0 onnxruntime pillow" ;;
    *) echo "arm-box: error: --arch arm64 or armhf, not '$ARCH'" >&2; exit 2 ;;
esac
BOX=${EDGEPRUNE_ARM_BOX:-$HOME/.cache/edgeprune/$CACHE}
PORT=${EDGEPRUNE_ARM_BOX_PORT:-$DEFAULT_PORT}
PACKAGES=${EDGEPRUNE_ARM_BOX_PACKAGES:-$DEFAULT_PACKAGES}
ROOT=$BOX/root
REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=/opt/edgeprune-venv
USER_NAME=$(id -un)

say() { echo "arm-box: $*" >&2; }
die() { say "error: $*"; exit 2; }

mirror() {
    # The first Debian archive apt uses (deb822 `URIs:` or one-line `deb URL suite`), not security.
    [ -n "${EDGEPRUNE_ARM_BOX_MIRROR:-}" ] && { echo "$EDGEPRUNE_ARM_BOX_MIRROR"; return; }
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
        2>/dev/null | sed -n -e 's/^URIs:[[:space:]]*//p' -e 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?//p' \
        | awk '{print $1}' | grep -v -e security -e '^$' | head -n 1
}

stop_box() {
    if [ -f "$BOX/sshd.pid" ] && kill -0 "$(cat "$BOX/sshd.pid")" 2>/dev/null; then
        kill "$(cat "$BOX/sshd.pid")" && say "stopped the ssh server"
    fi
    for m in "$ROOT/dev" "$ROOT/proc"; do
        if mountpoint -q "$m" 2>/dev/null; then umount "$m" || umount -l "$m"; fi
    done
}

host_tools() {
    missing=""
    for p in qemu-user-static binfmt-support debootstrap openssh-server openssh-client; do
        dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        say "installing$missing"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    fi
    if ! mountpoint -q /proc/sys/fs/binfmt_misc; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
            || die "cannot mount binfmt_misc (a container without that right cannot run the box)"
    fi
    if ! grep -q '^enabled' /proc/sys/fs/binfmt_misc/$QEMU 2>/dev/null; then
        update-binfmts --enable $QEMU >/dev/null 2>&1 || update-binfmts --import $QEMU
    fi
    grep -q '^enabled' /proc/sys/fs/binfmt_misc/$QEMU || die "$QEMU binfmt is not enabled"
}

build_root() {
    [ -f "$ROOT/.edgeprune-root-done" ] && return
    url=$(mirror); [ -n "$url" ] || die "no Debian mirror in /etc/apt/sources.list*; set EDGEPRUNE_ARM_BOX_MIRROR"
    say "debootstrap $ARCH bookworm from $url (about 10 min)"
    rm -rf "$ROOT.partial"
    debootstrap --arch=$ARCH --variant=minbase \
        --include=python3,python3-venv,python3-pip,ca-certificates$EXTRA bookworm "$ROOT.partial" "$url" \
        >"$BOX/debootstrap.log" 2>&1 || die "debootstrap failed: see $BOX/debootstrap.log"
    rm -rf "$ROOT" && mv "$ROOT.partial" "$ROOT"
    touch "$ROOT/.edgeprune-root-done"
}

mount_root() {
    mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
    mountpoint -q "$ROOT/dev" || mount --bind /dev "$ROOT/dev"
    # /sys stays unmounted, as in a minimal root: the runner must read it as unknown, quietly.
}

in_root() {
    # A clean environment: the host's PIP_*, SSL_CERT_FILE and REQUESTS_CA_BUNDLE name host
    # paths that mean another file (or nothing) inside the root; proxies pass through.
    ca=/etc/ssl/certs/host-ca.crt
    chroot "$ROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        ${http_proxy:+http_proxy=$http_proxy} ${https_proxy:+https_proxy=$https_proxy} \
        ${HTTP_PROXY:+HTTP_PROXY=$HTTP_PROXY} ${HTTPS_PROXY:+HTTPS_PROXY=$HTTPS_PROXY} \
        ${no_proxy:+no_proxy=$no_proxy} ${NO_PROXY:+NO_PROXY=$NO_PROXY} \
        PIP_CERT=$ca SSL_CERT_FILE=$ca REQUESTS_CA_BUNDLE=$ca PIP_DISABLE_PIP_VERSION_CHECK=1 "$@"
}

build_venv() {
    [ -f "$ROOT/.edgeprune-venv-done" ] && return
    cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
    cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/host-ca.crt"
    if [ "$ARCH" = arm64 ]; then
        say "pip install $PACKAGES in $VENV (aarch64 wheels, a few minutes under qemu)"
        chroot "$ROOT" python3 -m venv "$VENV"
        in_root "$VENV/bin/pip" install -q --only-binary=:all: $PACKAGES >"$BOX/pip.log" 2>&1 \
            || die "pip install in the root failed: see $BOX/pip.log"
        in_root "$VENV/bin/pip" freeze >"$BOX/wheels.txt"
    else
        # Measure, package by package, what PyPI has for armv7l and Python 3.11: `pip download`
        # of the package alone, without its dependencies, says whether a wheel exists (apt's
        # numpy, seen through --system-site-packages, cannot answer for it); what has one is
        # installed. wheels.txt is the support matrix's source.
        say "trying $PACKAGES one by one in $VENV (armv7l wheels, under qemu-arm)"
        chroot "$ROOT" python3 -m venv --system-site-packages "$VENV"
        : >"$BOX/pip.log"; : >"$BOX/wheels.txt"
        for p in $PACKAGES; do
            rm -rf "$ROOT/tmp/wheel" && mkdir -p "$ROOT/tmp/wheel"
            if in_root "$VENV/bin/pip" download -q --no-deps --only-binary=:all: -d /tmp/wheel \
                    "$p" >>"$BOX/pip.log" 2>&1; then
                wheel=$(ls "$ROOT/tmp/wheel")
                if in_root "$VENV/bin/pip" install -q --only-binary=:all: "$p" \
                        >>"$BOX/pip.log" 2>&1; then
                    echo "$p: wheel $wheel, installed" >>"$BOX/wheels.txt"
                else
                    echo "$p: wheel $wheel, install failed (see pip.log)" >>"$BOX/wheels.txt"
                fi
            else
                echo "$p: no wheel for $MACHINE" >>"$BOX/wheels.txt"
            fi
        done
        in_root "$VENV/bin/pip" list 2>/dev/null >>"$BOX/wheels.txt" || true
        rm -rf "$ROOT/tmp/wheel"
    fi
    touch "$ROOT/.edgeprune-venv-done"
}

keys_and_config() {
    [ -f "$BOX/host_key" ] || ssh-keygen -q -t ed25519 -N "" -f "$BOX/host_key"
    [ -f "$BOX/user_key" ] || ssh-keygen -q -t ed25519 -N "" -f "$BOX/user_key"
    cp "$BOX/user_key.pub" "$BOX/authorized_keys"
    home=$(getent passwd "$USER_NAME" | cut -d: -f6)
    mkdir -p "$ROOT$home"
    cat >"$BOX/sshd_config" <<EOF
Port $PORT
ListenAddress 127.0.0.1
HostKey $BOX/host_key
PidFile $BOX/sshd.pid
AuthorizedKeysFile $BOX/authorized_keys
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
ChrootDirectory $ROOT
Subsystem sftp internal-sftp
EOF
}

start_sshd() {
    if [ -f "$BOX/sshd.pid" ] && kill -0 "$(cat "$BOX/sshd.pid")" 2>/dev/null; then return; fi
    mkdir -p /run/sshd
    /usr/sbin/sshd -f "$BOX/sshd_config" -E "$BOX/sshd.log" || die "sshd did not start: see $BOX/sshd.log"
    cat >"$BOX/box.json" <<EOF
{"url": "ssh://$USER_NAME@127.0.0.1:$PORT", "user": "$USER_NAME", "port": $PORT, "machine": "$MACHINE",
 "key": "$BOX/user_key", "known_hosts": "$BOX/known_hosts", "python": "$VENV/bin/python",
 "root": "$ROOT"}
EOF
}

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, mounts, binfmt_misc, sshd's ChrootDirectory)"
ACTION=${1:-start}
case $ACTION in start|stop|test) ;; *) die "unknown command '$ACTION': start, test or stop" ;; esac
mkdir -p "$BOX"
chmod 755 "$BOX"
if [ "$ACTION" = stop ]; then stop_box; exit 0; fi
host_tools
build_root
mount_root
build_venv
keys_and_config
start_sshd
ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile="$BOX/known_hosts" \
    -o IdentityFile="$BOX/user_key" -o IdentitiesOnly=yes -o LogLevel=ERROR -p "$PORT" \
    "$USER_NAME@127.0.0.1" "$VENV/bin/python -c 'import platform; print(platform.machine())'" \
    | grep -qx "$MACHINE" || die "the box answers, but not as $MACHINE: see $BOX/sshd.log"
say "ready: --device ssh://$USER_NAME@127.0.0.1:$PORT --remote-python $VENV/bin/python" \
    "--ssh-option IdentityFile=$BOX/user_key --ssh-option UserKnownHostsFile=$BOX/known_hosts"
if [ "$ACTION" = test ]; then
    # The slow device tests, reading box.json from this cache folder; those of the other
    # architecture's box run too when it is up, and skip when it is not.
    say "running the slow device tests against the $ARCH box (about 20 min under qemu)"
    cd "$REPO"
    if [ "$ARCH" = arm64 ]; then export EDGEPRUNE_ARM_BOX="$BOX"
    else export EDGEPRUNE_ARM_BOX_ARMHF="$BOX"; fi
    exec "${PYTHON:-python3}" -m pytest -q -m slow -p no:cacheprovider tests/test_arm_box.py
fi
