#!/usr/bin/env bash
# Build the emulated ARM64 test device: a Debian bookworm arm64 root filesystem (mmdebstrap, run
# through qemu-user-static + binfmt_misc) with its own Python venv holding the aarch64 wheels of
# numpy, onnxruntime and ai-edge-litert. tests/test_devices_arm64.py reaches it over SSH: a test sshd
# on 127.0.0.1 with ChrootDirectory pointing here, so every remote command runs aarch64 binaries.
#
# Cached in ${EDGEKIT_ARM64_ROOTFS:-~/.cache/edgekit/arm64-device}; a second run is a no-op.
# Needs root and: apt-get install -y qemu-user-static binfmt-support mmdebstrap
# Takes about 5-10 minutes (network + emulated dpkg/pip).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
dest="${EDGEKIT_ARM64_ROOTFS:-${HOME}/.cache/edgekit/arm64-device}"
wheels="${HOME}/.cache/edgekit/arm64-wheels"
stamp="$dest/.edgekit-device-ready"
[ "$(id -u)" -eq 0 ] || { echo "needs root (binfmt_misc, mmdebstrap, chroot, mounts): sudo $0" >&2; exit 1; }
for tool in mmdebstrap qemu-aarch64-static update-binfmts; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y qemu-user-static binfmt-support mmdebstrap" >&2; exit 1; }
done
# binfmt_misc: mount it if the kernel has it unmounted, then register qemu-aarch64 (flag F: the
# interpreter is opened now, so it also works inside the chroot)
[ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64
[ -f "$stamp" ] && { echo "arm64 device ready: $dest ($(cat "$stamp"))"; exit 0; }
start=$(date +%s)

# 1. the aarch64 wheels, downloaded on this machine (the device has no index at test time)
mkdir -p "$wheels"
python3 -m pip download -q -d "$wheels" -c "$here/constraints.txt" \
    --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux_2_27_aarch64 \
    --platform manylinux_2_28_aarch64 --python-version 3.11 --implementation cp --abi cp311 \
    --only-binary=:all: numpy onnxruntime ai-edge-litert click rich tokenizers pillow

# 2. the root filesystem, built beside the cache and renamed into place when complete
tmp="$dest.tmp.$$"
rm -rf "$tmp"
mmdebstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$tmp" http://deb.debian.org/debian

# 3. the device's venv, installed by the emulated pip from the downloaded wheels; /proc, /dev and
#    the wheels are mounted in a private mount namespace, gone when it exits. Not /sys: the host's
#    x86 sysfs makes the aarch64 cpuinfo library inside onnxruntime crash (SIGSEGV) under qemu-user
mkdir -p "$tmp/wheels"
unshare -m --propagation private sh -euc '
    root="$1"; wheels="$2"
    mount -t proc proc "$root/proc"; mount --rbind /dev "$root/dev"
    mount --bind "$wheels" "$root/wheels"
    chroot "$root" uname -m | grep -qx aarch64
    chroot "$root" python3 -m venv /opt/edgekit-venv
    chroot "$root" /opt/edgekit-venv/bin/pip install -q --no-index --find-links /wheels \
        numpy onnxruntime ai-edge-litert click rich tokenizers pillow
    chroot "$root" /opt/edgekit-venv/bin/python -c "import numpy, onnxruntime, ai_edge_litert.interpreter"
' sh "$tmp" "$wheels"
rmdir "$tmp/wheels"
mkdir -p "$tmp/root/.ssh" && chmod 700 "$tmp/root/.ssh"
echo "built $(date -u +%FT%TZ) in $(( $(date +%s) - start ))s" > "$tmp/.edgekit-device-ready"
rm -rf "$dest" && mv "$tmp" "$dest"
cat "$stamp"
