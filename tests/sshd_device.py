"""Real SSH devices for the tests: Debian's OpenSSH server on 127.0.0.1 with keys made here, a
device virtualenv with only ``edgekit[onnxruntime]`` (no torch), and the emulated ARM64 root
filesystem built by ``scripts/build_arm64_device.sh``.

The device venv and the edgekit wheel are cached under ``~/.cache/edgekit/`` (the wheel by a
hash of the sources, so a changed edgekit is rebuilt and reinstalled).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path.home() / ".cache" / "edgekit"
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
ARM64_ROOTFS = Path(os.environ.get("EDGEKIT_ARM64_ROOTFS", CACHE / "arm64-device"))
ARM64_BUILD = f"sudo {REPO / 'scripts' / 'build_arm64_device.sh'}"
DEVICE_DEPS = ["onnxruntime", "tokenizers", "pillow", "numpy", "click", "rich"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgekit-test", "-f", str(path)],
                   check=True, capture_output=True)
    return path


@dataclass
class Sshd:
    """A running test sshd: where it listens, its host key, the key that may log in."""

    port: int
    dir: Path
    host_key: Path
    user_key: Path
    proc: subprocess.Popen

    @property
    def url(self) -> str:
        import getpass

        return f"ssh://{getpass.getuser()}@127.0.0.1:{self.port}"

    def connections(self) -> int:
        """Connections sshd accepted so far (needs ``sshd(..., log_level="VERBOSE")``)."""
        log = self.dir / "sshd.log"
        return log.read_text(errors="replace").count("Connection from ") if log.is_file() else 0

    def session_pids(self) -> list[int]:
        """The per-connection sshd processes (children of the listener), not the commands they run."""
        out = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:
                continue
            comm, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
            if int(rest[1]) == self.proc.pid and comm.startswith("sshd"):
                out.append(int(stat.parent.name))
        return out


@contextmanager
def sshd(root: Path, *, chroot: Path | None = None, host_key: Path | None = None,
         log_level: str = "ERROR") -> Iterator[Sshd]:
    """Debian's sshd on 127.0.0.1:<free port>; with ``chroot``, every session runs inside it.
    ``log_level="VERBOSE"`` logs a "Connection from" line per connection (:meth:`Sshd.connections`)."""
    root.mkdir(parents=True, exist_ok=True)
    host_key = host_key or keygen(root / "host_ed25519")
    user_key = root / "user_ed25519"
    if not user_key.exists():
        keygen(user_key)
    (root / "authorized_keys").write_text((root / "user_ed25519.pub").read_text())
    port = free_port()
    lines = ["ListenAddress 127.0.0.1", f"Port {port}", f"HostKey {host_key}", f"PidFile {root / 'sshd.pid'}",
             f"AuthorizedKeysFile {root / 'authorized_keys'}", "StrictModes no", "UsePAM no",
             "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
             "PermitRootLogin prohibit-password", "Subsystem sftp internal-sftp", f"LogLevel {log_level}",
             "ClientAliveInterval 0"]
    if chroot is not None:
        lines.append(f"ChrootDirectory {chroot}")
    (root / "sshd_config").write_text("\n".join(lines) + "\n")
    Path("/run/sshd").mkdir(exist_ok=True) if os.geteuid() == 0 else None
    argv = [SSHD, "-D", "-e", "-f", str(root / "sshd_config")]
    if chroot is not None:  # /proc and /dev inside the chroot, private to this sshd and its sessions (no
        # /sys: the host's x86 sysfs crashes onnxruntime's aarch64 cpuinfo under qemu-user)
        script = 'set -e; r="$1"; shift; mount -t proc proc "$r/proc"; mount --rbind /dev "$r/dev"; exec "$@"'
        argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", str(chroot), *argv]
    proc = subprocess.Popen(argv, stderr=open(root / "sshd.log", "ab"), start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"sshd did not start: {(root / 'sshd.log').read_text()[-2000:]}") from None
                time.sleep(0.05)
        yield Sshd(port, root, host_key, user_key, proc)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _source_hash() -> str:
    h = hashlib.sha256()
    files = [REPO / "pyproject.toml", *sorted(p for d in ("edgekit", "converters", "runtimes")
                                              for p in (REPO / d).rglob("*") if p.suffix in (".py", ".typed"))]
    for f in files:
        h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def edgekit_wheel() -> Path:
    """A wheel of this checkout (built from a copy, so the tree gets no build/ or egg-info)."""
    out = CACHE / "edgekit-wheels" / _source_hash()
    found = sorted(out.glob("edgekit-*.whl"))
    if found:
        return found[0]
    src = out.parent / f".src-{os.getpid()}"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    for name in ("edgekit", "converters", "runtimes"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    tmp = out.parent / f".out-{os.getpid()}"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp), str(src)],
                   check=True, capture_output=True)
    shutil.rmtree(src)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return next(out.glob("edgekit-*.whl"))


def device_venv() -> Path:
    """The loopback device's Python: a venv with the runtime-only deps (cached), no torch."""
    venv = CACHE / "loopback-device" / "venv"
    py = venv / "bin" / "python"
    if not (venv / ".deps-ready").is_file():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "-c", str(REPO / "constraints.txt"), *DEVICE_DEPS],
                       check=True, capture_output=True)
        (venv / ".deps-ready").write_text("ok\n")
    return py


def arm64_ready() -> str | None:
    """None when the emulated ARM64 device can run here, else why not (with the build command)."""
    if not (ARM64_ROOTFS / ".edgekit-device-ready").is_file():
        return f"the ARM64 root filesystem is not built: run {ARM64_BUILD} (about 10 min, cached in {ARM64_ROOTFS})"
    if os.geteuid() != 0:
        return "the ARM64 device needs root (sshd ChrootDirectory and mounts): run the tests as root"
    if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").is_file():
        return f"qemu-aarch64 is not registered with binfmt_misc: run {ARM64_BUILD}"
    return None
