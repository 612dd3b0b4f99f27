"""A real OpenSSH server on 127.0.0.1 for the tests that reach a "device" over ssh.

`running_sshd(folder)` runs Debian's /usr/sbin/sshd in the foreground with a throwaway host
key, a throwaway user key in a temporary authorized_keys file and TMPDIR pointing at a folder
the tests watch, and logs in as the current user. The "device" is this machine, so the remote
Python is this interpreter (`Sshd.python`); other remote interpreters are shell wrappers.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgeprune.devices import BenchOptions
from edgeprune.devices.ssh import SshBackend, SshOptions, parse_ssh_url

SSHD = Path("/usr/sbin/sshd")
PRIVSEP_DIR = Path("/run/sshd")  # Debian's sshd refuses to start as root without it
FAST = BenchOptions(threads=1, warmup=0, runs=3, min_seconds=0, timeout_s=60)

def needs_sshd_reason() -> str:
    """Why the ssh tests cannot run here ('' when they can)."""
    if SSHD.is_file() and shutil.which("ssh") and shutil.which("ssh-keygen"):
        return ""
    return ("needs Debian's OpenSSH server and client: apt-get install openssh-server "
            "openssh-client")


needs_sshd = pytest.mark.skipif(bool(needs_sshd_reason()), reason=needs_sshd_reason())


@dataclass
class Sshd:
    """A running test server and what a client needs to reach it."""

    port: int
    user: str
    key: Path
    other_key: Path
    known_hosts: Path
    remote_tmp: Path
    folder: Path

    @property
    def url(self) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}"

    def options(self, key: Path | None = None, python: str = sys.executable) -> SshOptions:
        return SshOptions(options=(f"UserKnownHostsFile={self.known_hosts}",
                                   "StrictHostKeyChecking=accept-new",
                                   f"IdentityFile={key or self.key}", "IdentitiesOnly=yes",
                                   "LogLevel=ERROR"), remote_python=python)

    def backend(self, **kwargs) -> SshBackend:
        return SshBackend(parse_ssh_url(self.url), self.options(**kwargs))

    def cli_args(self) -> list[str]:
        """The flags a command takes to reach this server as the device."""
        args = ["--device", self.url, "--remote-python", sys.executable]
        for option in self.options().options:
            args += ["--ssh-option", option]
        return args

    def leftovers(self) -> list[str]:
        """Our temporary folders still on the "device" (login scripts may add other files)."""
        return sorted(p.name for p in self.remote_tmp.glob("edgeprune-bench.*"))


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                   check=True, capture_output=True)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"sshd exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"sshd did not listen on port {port}: {log.read_text()[-2000:]}")


@contextmanager
def running_sshd(folder: Path) -> Iterator[Sshd]:
    """Start a server whose files live in `folder`; stopped when the block ends."""
    key, other = _keygen(folder / "user_key"), _keygen(folder / "other_key")
    (folder / "authorized_keys").write_text(Path(f"{key}.pub").read_text())
    remote_tmp = folder / "remote-tmp"
    remote_tmp.mkdir()
    port = free_port()
    config = folder / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {_keygen(folder / 'host_key')}",
        f"PidFile {folder / 'sshd.pid'}", f"AuthorizedKeysFile {folder / 'authorized_keys'}",
        "StrictModes no", "PubkeyAuthentication yes", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password", "UsePAM no",
        "Subsystem sftp internal-sftp", f"SetEnv TMPDIR={remote_tmp}", "LogLevel VERBOSE", ""]))
    made_privsep = os.geteuid() == 0 and not PRIVSEP_DIR.exists()
    if made_privsep:
        PRIVSEP_DIR.mkdir(mode=0o755)
    log = folder / "sshd.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=log_file,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        _wait_listening(proc, port, log)
        yield Sshd(port=port, user=pwd.getpwuid(os.geteuid()).pw_name, key=key,
                   other_key=other, known_hosts=folder / "known_hosts", remote_tmp=remote_tmp,
                   folder=folder)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if made_privsep:
            shutil.rmtree(PRIVSEP_DIR, ignore_errors=True)


