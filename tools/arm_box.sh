#!/bin/sh
# A Pi without a Pi: an aarch64 Debian bookworm userland run by qemu-user, reachable over ssh
# on 127.0.0.1, so every device path (deploy, bench --device, predict.py) runs the aarch64
# builds of Python 3.11, numpy, ai-edge-litert and onnxruntime. Proves code paths and numerics,
# never latency (the runner labels its times "emulated"). docs/DEVICES.md, "A Pi without a Pi".
#
#   tools/arm_box.sh          build what is missing (cached), start the ssh server, print the URL
#   tools/arm_box.sh stop     stop the server and unmount /proc and /dev from the root
#
# Design: the host's own OpenSSH server, a second instance on its own port and config, with
# `ChrootDirectory` the aarch64 root. sshd, key exchange and SFTP (internal-sftp) stay native
# x86 (fast, and nothing to install in the root); the login's shell and everything it starts
# are aarch64 binaries that binfmt_misc hands to qemu-aarch64-static (registered with the F
# flag, so it works inside the chroot). An sshd inside the root would run its key exchange
# under qemu and need openssh-server in the root, for no extra proof.
#
# Needs root (debootstrap, mounts, binfmt_misc, ChrootDirectory). Environment:
#   EDGEPRUNE_ARM_BOX         cache folder (default ~/.cache/edgeprune/arm-box): root/, keys,
#                             sshd_config, box.json (what the slow tests read)
#   EDGEPRUNE_ARM_BOX_PORT    ssh port on 127.0.0.1 (default 2222)
#   EDGEPRUNE_ARM_BOX_MIRROR  Debian mirror (default: the one apt uses, from /etc/apt/sources.list*)
#   EDGEPRUNE_ARM_BOX_PACKAGES  pip packages in the root's venv
#                             (default: ai-edge-litert numpy pillow onnxruntime)
set -eu

BOX=${EDGEPRUNE_ARM_BOX:-$HOME/.cache/edgeprune/arm-box}
PORT=${EDGEPRUNE_ARM_BOX_PORT:-2222}
PACKAGES=${EDGEPRUNE_ARM_BOX_PACKAGES:-ai-edge-litert numpy pillow onnxruntime}
ROOT=$BOX/root
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
    if ! grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null; then
        update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || update-binfmts --import qemu-aarch64
    fi
    grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 || die "qemu-aarch64 binfmt is not enabled"
}

build_root() {
    [ -f "$ROOT/.edgeprune-root-done" ] && return
    url=$(mirror); [ -n "$url" ] || die "no Debian mirror in /etc/apt/sources.list*; set EDGEPRUNE_ARM_BOX_MIRROR"
    say "debootstrap arm64 bookworm from $url (about 10 min)"
    rm -rf "$ROOT.partial"
    debootstrap --arch=arm64 --variant=minbase \
        --include=python3,python3-venv,python3-pip,ca-certificates bookworm "$ROOT.partial" "$url" \
        >"$BOX/debootstrap.log" 2>&1 || die "debootstrap failed: see $BOX/debootstrap.log"
    rm -rf "$ROOT" && mv "$ROOT.partial" "$ROOT"
    touch "$ROOT/.edgeprune-root-done"
}

mount_root() {
    mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
    mountpoint -q "$ROOT/dev" || mount --bind /dev "$ROOT/dev"
    # /sys stays unmounted, as in a minimal root: the runner must read it as unknown, quietly.
}

build_venv() {
    [ -f "$ROOT/.edgeprune-venv-done" ] && return
    cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
    cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/host-ca.crt"
    say "pip install $PACKAGES in $VENV (aarch64 wheels, a few minutes under qemu)"
    chroot "$ROOT" python3 -m venv "$VENV"
    # A clean environment: the host's PIP_*, SSL_CERT_FILE and REQUESTS_CA_BUNDLE name host
    # paths that mean another file (or nothing) inside the root; proxies pass through.
    ca=/etc/ssl/certs/host-ca.crt
    chroot "$ROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        ${http_proxy:+http_proxy=$http_proxy} ${https_proxy:+https_proxy=$https_proxy} \
        ${HTTP_PROXY:+HTTP_PROXY=$HTTP_PROXY} ${HTTPS_PROXY:+HTTPS_PROXY=$HTTPS_PROXY} \
        ${no_proxy:+no_proxy=$no_proxy} ${NO_PROXY:+NO_PROXY=$NO_PROXY} \
        PIP_CERT=$ca SSL_CERT_FILE=$ca REQUESTS_CA_BUNDLE=$ca PIP_DISABLE_PIP_VERSION_CHECK=1 \
        "$VENV/bin/pip" install -q --only-binary=:all: $PACKAGES >"$BOX/pip.log" 2>&1 \
        || die "pip install in the root failed: see $BOX/pip.log"
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
{"url": "ssh://$USER_NAME@127.0.0.1:$PORT", "user": "$USER_NAME", "port": $PORT,
 "key": "$BOX/user_key", "known_hosts": "$BOX/known_hosts", "python": "$VENV/bin/python",
 "root": "$ROOT"}
EOF
}

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, mounts, binfmt_misc, sshd's ChrootDirectory)"
mkdir -p "$BOX"
chmod 755 "$BOX"
if [ "${1:-}" = stop ]; then stop_box; exit 0; fi
host_tools
build_root
mount_root
build_venv
keys_and_config
start_sshd
ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile="$BOX/known_hosts" \
    -o IdentityFile="$BOX/user_key" -o IdentitiesOnly=yes -o LogLevel=ERROR -p "$PORT" \
    "$USER_NAME@127.0.0.1" "$VENV/bin/python -c 'import platform; print(platform.machine())'" \
    | grep -qx aarch64 || die "the box answers, but not as aarch64: see $BOX/sshd.log"
say "ready: --device ssh://$USER_NAME@127.0.0.1:$PORT --remote-python $VENV/bin/python" \
    "--ssh-option IdentityFile=$BOX/user_key --ssh-option UserKnownHostsFile=$BOX/known_hosts"
