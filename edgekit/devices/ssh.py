"""The SSH transport (paramiko): verified host keys, key or agent auth, a deadline on every command.

Host keys come from ``~/.ssh/known_hosts`` and edgekit's own ``known_hosts``. An unknown key is
refused unless ``accept_new_host_key`` (then it is recorded, like OpenSSH's ``accept-new``); a
changed key is always refused. A command that outlives its timeout closes the connection, so a
dead link fails that call and the next call reconnects.
"""

from __future__ import annotations

import os
import select
import shlex
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.deps import require
from edgekit.devices.config import DeviceSpec, known_hosts_path
from edgekit.errors import RemoteDeviceError


@dataclass(frozen=True)
class Completed:
    """How a remote command ended."""

    returncode: int
    stdout: bytes
    stderr: bytes

    def tail(self) -> str:
        lines = self.stderr.decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else ""


class CommandTimeout(RemoteDeviceError):
    """A remote command gave no complete answer before its deadline (the link is then closed)."""


def quote(argv: list[str]) -> str:
    """One remote command line; a leading ``~/`` stays unquoted so the remote shell expands it."""
    parts = []
    for arg in argv:
        if arg.startswith("~/"):
            parts.append("~/" + shlex.quote(arg[2:]))
        else:
            parts.append(shlex.quote(arg))
    return " ".join(parts)


def _fingerprint(key: Any) -> str:
    import base64
    import hashlib

    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def _record_host_key(hostname: str, key: Any) -> None:
    """Append ``hostname key`` to edgekit's known_hosts (rewritten atomically)."""
    path = known_hosts_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if path.is_file() else ""
    line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
    fd, tmp = tempfile.mkstemp(prefix=".known_hosts.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(old + ("" if not old or old.endswith("\n") else "\n") + line)
    os.replace(tmp, path)


class SSHLink:
    """One SSH connection to a device; ``run`` commands and ``sftp`` files over it."""

    def __init__(self, spec: DeviceSpec, *, accept_new_host_key: bool = False) -> None:
        self.spec = spec
        self.accept_new = accept_new_host_key
        self._client: Any = None
        self._sftp: Any = None
        self.host, self.port, self.user, self.identities = self._address()

    def _address(self) -> tuple[str, int, str | None, list[str]]:
        """Host, port, user and identity files: the spec first, then ``~/.ssh/config``."""
        paramiko = require("paramiko", "ssh", "devices over SSH")
        found: dict[str, Any] = {}
        cfg = Path("~/.ssh/config").expanduser()
        if cfg.is_file():
            found = dict(paramiko.SSHConfig.from_path(str(cfg)).lookup(self.spec.host))
        host = found.get("hostname", self.spec.host)
        port = self.spec.port or int(found.get("port", 22))
        user = self.spec.user or found.get("user")
        ids = [self.spec.identity] if self.spec.identity else list(found.get("identityfile", []))
        return host, port, user, [str(Path(i).expanduser()) for i in ids]

    @property
    def where(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}:{self.port}"

    def _fail(self, problem: str, fix: str) -> RemoteDeviceError:
        return RemoteDeviceError(self.spec.name, problem, fix=fix)

    def connect(self) -> SSHLink:
        """Open the connection (once); every failure is a :class:`RemoteDeviceError`."""
        if self._client is not None and self._client.get_transport() and self._client.get_transport().is_active():
            return self
        paramiko = require("paramiko", "ssh", "devices over SSH")
        link = self

        class Policy(paramiko.MissingHostKeyPolicy):
            def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
                if not link.accept_new:
                    raise link._fail(
                        f"the host key of {hostname} is not known ({key.get_name()} {_fingerprint(key)})",
                        f"check that fingerprint on the device (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), "
                        f"then: edgekit devices add {link.spec.name} {link.spec.url} --accept-new-host-key")
                client.get_host_keys().add(hostname, key.get_name(), key)
                _record_host_key(hostname, key)

        client = paramiko.SSHClient()
        client.load_system_host_keys()
        if known_hosts_path().is_file():
            client.load_system_host_keys(str(known_hosts_path()))  # system: never written back by paramiko
        client.set_missing_host_key_policy(Policy())
        t = self.spec.connect_timeout
        try:
            client.connect(self.host, port=self.port, username=self.user, key_filename=self.identities or None,
                           look_for_keys=not self.identities, allow_agent=True, timeout=t,
                           banner_timeout=t, auth_timeout=t, channel_timeout=t)
        except RemoteDeviceError:
            client.close()
            raise
        except paramiko.BadHostKeyException as e:
            client.close()
            raise self._fail(
                f"the host key of {self.where} CHANGED (got {_fingerprint(e.key)}, known {_fingerprint(e.expected_key)}): "
                "refusing to connect, this can be an attacker in the middle",
                f"if the device was reinstalled, delete its line from {known_hosts_path()} or ~/.ssh/known_hosts "
                f"(ssh-keygen -R '[{self.host}]:{self.port}'), then add it again with --accept-new-host-key") from None
        except paramiko.AuthenticationException as e:
            client.close()
            key = self.identities[0] if self.identities else "your SSH agent keys"
            raise self._fail(f"{self.where} refused the login with {key} ({e})",
                             f"install the public key on the device: ssh-copy-id -i {key}.pub -p {self.port} "
                             f"{self.where.rsplit(':', 1)[0]}, or pass the right --identity") from None
        except (paramiko.SSHException, OSError, EOFError) as e:
            client.close()
            why = "connection refused" if isinstance(e, ConnectionRefusedError) or "Unable to connect" in str(e) \
                else ("no answer" if isinstance(e, socket.timeout) else f"{type(e).__name__}: {e}")
            raise self._fail(f"cannot reach {self.where} ({why})",
                             f"check that the device is on and its SSH server listens on port {self.port}: "
                             f"ssh -p {self.port} {self.where.rsplit(':', 1)[0]}") from None
        self._client = client
        return self

    def run(self, argv: list[str], *, stdin: bytes = b"", timeout: float = 60.0) -> Completed:
        """Run ``argv`` on the device; at ``timeout`` the link is closed and :class:`CommandTimeout` raised."""
        self.connect()
        deadline = time.monotonic() + timeout
        try:
            chan = self._client.get_transport().open_session(timeout=min(timeout, self.spec.connect_timeout))
            chan.settimeout(timeout)
            chan.exec_command(quote(argv))
            if stdin:
                chan.sendall(stdin)
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError()
                select.select([chan], [], [], min(left, 1.0))
                while chan.recv_ready():
                    out += chan.recv(1 << 16)
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(1 << 16)
                if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready() \
                        and chan.eof_received:
                    break
            code = chan.recv_exit_status()
            chan.close()
            return Completed(code, bytes(out), bytes(err))
        except TimeoutError:
            self.close()
            raise CommandTimeout(self.spec.name, f"no complete answer from {self.where} within {timeout:.0f} s "
                                 f"(running {argv[0]} ...); the connection was closed",
                                 fix="check the link and that the device is not overloaded; "
                                 "raise --timeout for slow devices") from None
        except (OSError, EOFError) as e:
            self.close()
            raise self._fail(f"the link to {self.where} broke ({type(e).__name__}: {e})",
                             "check the network and the device, then run the command again") from None
        except Exception as e:  # paramiko.SSHException without importing paramiko at module level
            self.close()
            if type(e).__module__.startswith("paramiko"):
                raise self._fail(f"the link to {self.where} broke ({e})",
                                 "check the network and the device, then run the command again") from None
            raise

    def sftp(self, timeout: float = 60.0) -> Any:
        """The connection's SFTP session (files are then plain ``open``/``rename`` calls)."""
        self.connect()
        if self._sftp is None:
            self._sftp = self._client.open_sftp()
        self._sftp.get_channel().settimeout(timeout)
        return self._sftp

    def close(self) -> None:
        for thing in (self._sftp, self._client):
            try:
                if thing is not None:
                    thing.close()
            except Exception:  # closing a broken link must not raise
                pass
        self._sftp = self._client = None

    def __enter__(self) -> SSHLink:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()
