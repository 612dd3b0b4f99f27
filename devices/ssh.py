"""The `ssh` backend: benchmark on a real device through the system OpenSSH client.

`ssh://[user@]host[:port]` -> check the remote Python and runtime (one connection), copy the
runner, the model and its sidecar/eval samples into a fresh `mktemp -d` folder with `scp`,
run the runner there and remove the folder (one connection; a best-effort extra one removes
the folder when anything failed before). `ssh`/`scp` are the user's own, so keys, agents and
~/.ssh/config apply; `BatchMode=yes` turns a password prompt into an error instead of a hang.
Every failure becomes one EdgepruneError line naming the device.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from edgeprune.devices import runner
from edgeprune.devices.formats import ARM32, ARM32_NUMPY, format_of
from edgeprune.devices.results import RUNNER, BenchOptions, BenchResult, Label, runner_report
from edgeprune.devices.runner import sidecar_path
from edgeprune.errors import EdgepruneError

ENV_OPTIONS = "EDGEPRUNE_SSH_OPTIONS"
"""Extra `-o` options from the environment, e.g. 'IdentityFile=~/.ssh/pi Compression=yes'."""
MIN_PYTHON = (3, 8)
CHECK_TAG = "EDGEPRUNE_FACTS "
DIR_TAG = "EDGEPRUNE_DIR "
# Runs under any python (2.7 and 3.x syntax), so an old Python still gets a clear message:
# the device's CPU, memory, Python and the versions of numpy and the modules named in argv.
CHECK_SNIPPET = r"""
import json, os, platform, sys
def read(path):
    try:
        with open(path) as f:
            return f.read()
    except Exception:
        return ""
def version(name):
    try:
        module = __import__(name)
        return str(getattr(module, "__version__", "unknown"))
    except Exception:
        return None
cpu = {}
for line in read("/proc/cpuinfo").splitlines():
    key, _, value = line.partition(":")
    cpu.setdefault(key.strip(), value.strip())
mem = [l.split()[1] for l in read("/proc/meminfo").splitlines() if l.startswith("MemTotal:")]
khz = read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").strip()
mhz = int(khz) / 1000.0 if khz.isdigit() else (float(cpu["cpu MHz"]) if "cpu MHz" in cpu else None)
cores = os.cpu_count() if hasattr(os, "cpu_count") else None
facts = {"machine": platform.machine(), "cores": cores,
         "cpu_model": cpu.get("model name") or cpu.get("Model") or cpu.get("Hardware"),
         "max_mhz": mhz, "ram_mb": int(mem[0]) // 1024 if mem else None,
         "python": "%d.%d.%d" % tuple(sys.version_info[:3]),
         "modules": dict((m, version(m)) for m in ["numpy"] + sys.argv[1:])}
try:  # the runner's own reading of the CPU and of emulation (Python 3.8+ only)
    exec(DETECT)
    why = emulation()
    facts.update(cpu_model=cpu_model(), emulated=why is not None, emulation=why or "")
except Exception:
    pass
print("EDGEPRUNE_FACTS " + json.dumps(facts))
"""
DETECTION = (runner._read, runner.cpu_fields, runner.x86_cpu, runner.arm_cpu,
             runner.qemu_binfmt, runner.emulation, runner.cpu_model)
DETECTION_CONSTANTS = ("ARM_MACHINES", "X86_MACHINES", "X86_VENDORS", "X86_MODEL_WORDS",
                       "ARM_CORES", "QEMU_BINFMT")


def detection_source() -> str:
    """The runner's CPU and emulation readers as source, so the device check reports what the
    runner will (one home: runner.py; the check cannot copy it first)."""
    head = ["from __future__ import annotations", "import os, platform",
            "from pathlib import Path", "from typing import Any"]
    constants = [f"{name} = {getattr(runner, name)!r}" for name in DETECTION_CONSTANTS]
    try:
        functions = [inspect.getsource(f) for f in DETECTION]
    except (OSError, TypeError):  # installed without sources: the runner's report still says
        return ""
    return "\n".join([*head, *constants, *functions])


CHECK_SNIPPET = f"DETECT = {detection_source()!r}\n" + CHECK_SNIPPET


@dataclass(frozen=True)
class DeviceFacts:
    """What the device says about itself (CHECK_SNIPPET)."""

    machine: str
    cores: int
    cpu_model: str | None
    max_mhz: float | None
    ram_mb: int | None
    python: str
    modules: dict[str, str | None] = field(default_factory=dict)
    emulated: bool = False
    """Whether the device runs under emulation (qemu-user): its latencies mean nothing."""
    emulation: str = ""
    """Why it was found emulated (the runner's `emulation`)."""

    def has(self, module: str) -> bool:
        return bool(self.modules.get(module))


REACH_ERRORS = ("Connection refused", "No route to host", "Connection timed out",
                "Could not resolve hostname", "Network is unreachable", "Operation timed out",
                "Connection reset", "Connection closed")


@dataclass(frozen=True)
class SshOptions:
    """How to reach the device: extra `-o KEY=VALUE` options, the remote interpreter and the
    connect timeout."""

    options: tuple[str, ...] = ()
    remote_python: str = "python3"
    connect_timeout_s: int = 10

    @classmethod
    def of(cls, options: Sequence[str] | None, remote_python: str = "python3") -> SshOptions:
        """The options of --ssh-option (repeatable) and --remote-python, the one place every
        command builds them."""
        return cls(options=tuple(options or ()), remote_python=remote_python)

    def with_environment(self) -> SshOptions:
        """These options, then those in $EDGEPRUNE_SSH_OPTIONS: ssh keeps the first value of
        each key, so the command line wins over the environment, and both over our defaults."""
        env = tuple(shlex.split(os.environ.get(ENV_OPTIONS, "")))
        return SshOptions(self.options + env, self.remote_python, self.connect_timeout_s)


@dataclass(frozen=True)
class SshDevice:
    """A parsed `ssh://[user@]host[:port]`."""

    host: str
    user: str | None = None
    port: int | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{self.user}@" if self.user else ""
        return f"ssh://{user}{host}" + (f":{self.port}" if self.port else "")

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def scp_target(self, folder: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}:{folder}/" if self.user else f"{host}:{folder}/"


def parse_ssh_url(url: str) -> SshDevice:
    """`ssh://[user@]host[:port]` as an SshDevice; anything else is a one-line error."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise EdgepruneError(f"bad device {url!r}: {e}; write ssh://user@host:port") from None
    bad = (parts.scheme != "ssh" or not parts.hostname or parts.path not in ("", "/")
           or parts.query or parts.fragment or parts.password is not None
           or parts.hostname.startswith("-") or (parts.username or "").startswith("-"))
    if bad:
        raise EdgepruneError(f"bad device {url!r}: write ssh://user@host or ssh://user@host:port")
    return SshDevice(host=parts.hostname, user=parts.username or None, port=port)


_RUNS = "runs a program or loads code on this machine"
_WRITES = "writes a file or socket at a path it names"
_STAYS = "leaves an ssh process running after edgeprune exits"
_OPENS = "gives the device a way into this machine or its secrets"
RISKY_OPTIONS = {
    "proxycommand": _RUNS, "localcommand": _RUNS, "permitlocalcommand": _RUNS,
    "knownhostscommand": _RUNS, "match": _RUNS, "pkcs11provider": _RUNS,
    "securitykeyprovider": _RUNS, "smartcarddevice": _RUNS, "xauthlocation": _RUNS,
    "include": "reads another ssh config file, which may run programs",
    "proxyjump": "starts another ssh through a host of its choosing",
    "userknownhostsfile": _WRITES, "controlpath": _WRITES,
    "controlmaster": _STAYS, "controlpersist": _STAYS,
    "forwardagent": _OPENS, "forwardx11": _OPENS, "forwardx11trusted": _OPENS,
    "localforward": _OPENS, "remoteforward": _OPENS, "dynamicforward": _OPENS,
    "sendenv": _OPENS, "tunnel": _OPENS, "tunneldevice": _OPENS,
}
"""ssh_config(5) options that do more than say how to connect, by lower-case name, with why:
a config file may not set them (edgeprune.jobs.config.check_file_trust); the command line,
$EDGEPRUNE_SSH_OPTIONS and --trust-code may."""


def option_risk(option: str) -> str | None:
    """Why `ssh -o OPTION` is more than connection settings (see RISKY_OPTIONS), or None."""
    key = re.split(r"[=\s]", option.strip(), maxsplit=1)[0].lower()
    return RISKY_OPTIONS.get(key)


REMOTE_PYTHON = re.compile(r"(~/|/)?([\w.+-]+/)*(python|pypy)[0-9.]*")
"""What --remote-python looks like when it names a Python interpreter."""


def remote_python_problem(name: str) -> str | None:
    """Why `name` is not plainly a Python interpreter on the device, or None."""
    if REMOTE_PYTHON.fullmatch(name):
        return None
    return "is not a Python interpreter's name (python3, /usr/bin/python3.11, ~/venv/bin/python)"


def check_options(options: tuple[str, ...]) -> None:
    """Each extra option must be KEY=VALUE, as `ssh -o` takes it."""
    for option in options:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*=.+", option):
            raise EdgepruneError(f"ssh option {option!r} is not KEY=VALUE (e.g. "
                                 "IdentityFile=~/.ssh/pi_key)")


def _tagged_lines(stdout: str) -> dict[str, str]:
    """{'EDGEPRUNE_CHECK ': rest of line, ...} from the remote output; login scripts may
    print other lines, which are ignored."""
    out = {}
    for line in stdout.splitlines():
        for tag in (CHECK_TAG, DIR_TAG):
            if line.startswith(tag):
                out[tag] = line[len(tag):].strip()
    return out


def remote_path(text: str) -> str:
    """Quote a remote path for sh, keeping a leading ~/ expandable."""
    if text.startswith("~/"):
        return '"$HOME"/' + shlex.quote(text[2:])
    return shlex.quote(text)


class SshBackend:
    """A device reached with the system `ssh` and `scp`; results are labelled 'device'."""

    label: Label = "device"

    def __init__(self, device: SshDevice, options: SshOptions | None = None) -> None:
        self.remote = device
        self.options = (options or SshOptions()).with_environment()
        check_options(self.options.options)
        self.device = device.url
        self.found: DeviceFacts | None = None
        """What the last check found on the device: Python and module versions."""

    @classmethod
    def from_device(cls, device: str, ssh: SshOptions | None = None) -> SshBackend:
        return cls(parse_ssh_url(device), ssh)

    # ---------------------------------------------------------------- commands

    def _common(self) -> list[str]:
        """Options for ssh and scp: ours that must hold, the user's, then our defaults (ssh
        keeps the first value it sees for each key)."""
        args = ["-o", "BatchMode=yes"]
        for option in self.options.options:
            args += ["-o", option]
        args += ["-o", f"ConnectTimeout={self.options.connect_timeout_s}",
                 "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"]
        if self.remote.port:
            args += ["-o", f"Port={self.remote.port}"]
        return args

    def ssh_command(self, script: str) -> list[str]:
        """`ssh ... host "sh -c '<script>'"`: sh whatever the login shell is."""
        return ["ssh", *self._common(), "-T", "--", self.remote.destination,
                "sh -c " + shlex.quote(script)]

    def scp_command(self, files: list[Path], folder: str) -> list[str]:
        """scp of local `files` into the device's `folder`. Local paths go absolute, so that
        a name like 'x:y.onnx' is not read as host 'x' (and '--' keeps '-x.onnx' a file)."""
        return ["scp", "-q", *self._common(), "--", *(str(Path(f).absolute()) for f in files),
                self.remote.scp_target(folder)]

    def run_command(self, command: list[str], timeout_s: float,
                    what: str) -> subprocess.CompletedProcess:
        """Run ssh or scp; a missing client or a timeout is one EdgepruneError."""
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                                  stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise EdgepruneError(f"'{command[0]}' is not installed: install the OpenSSH client "
                                 "(apt install openssh-client)") from None
        except subprocess.TimeoutExpired:
            raise EdgepruneError(f"{what} on {self.device} did not finish in {timeout_s:g} s"
                                 ) from None

    def ssh_error(self, stderr: str, what: str) -> EdgepruneError:
        """One line for a failed ssh/scp connection, from OpenSSH's own message."""
        lines = [ln.strip() for ln in stderr.splitlines()
                 if ln.strip() and not ln.startswith("Warning: Permanently added")]
        line = next((ln for ln in lines if any(k in ln for k in (
            *REACH_ERRORS, "Permission denied", "Host key verification failed"))),
            lines[-1] if lines else "no message")
        line = line.removeprefix("ssh: ").removeprefix("scp: ")
        if "Permission denied" in line:
            return EdgepruneError(f"{self.device} refused the login ({line}): install your key "
                                  "with ssh-copy-id, or pass --ssh-option IdentityFile=PATH")
        if "Host key verification failed" in line:
            return EdgepruneError(f"{self.device}: host key verification failed; connect once "
                                  "with plain ssh to accept the key, or fix ~/.ssh/known_hosts")
        if any(k in line for k in REACH_ERRORS):
            return EdgepruneError(f"cannot reach {self.device}: {line}")
        return EdgepruneError(f"{what} on {self.device} failed: {line}")

    # ---------------------------------------------------------------- steps

    def _facts_script(self, modules: Sequence[str]) -> str:
        return (f"{remote_path(self.options.remote_python)} -c {shlex.quote(CHECK_SNIPPET)} "
                f"{' '.join(modules)} || exit $?\n")

    def _parse_facts(self, proc: subprocess.CompletedProcess) -> DeviceFacts:
        if proc.returncode == 255:
            raise self.ssh_error(proc.stderr, "reading the device")
        tagged = _tagged_lines(proc.stdout)
        if CHECK_TAG not in tagged:
            raise self.no_python_error(proc)
        return DeviceFacts(**json.loads(tagged[CHECK_TAG]))

    def facts(self, modules: Sequence[str], timeout_s: float | None = None) -> DeviceFacts:
        """What the device is and has (one connection): CPU, memory, Python, and the
        versions of numpy and `modules` (None where absent)."""
        proc = self.run_command(self.ssh_command(self._facts_script(modules)),
                                timeout_s or self.options.connect_timeout_s + 50,
                                "reading the device")
        return self._parse_facts(proc)

    def prepare(self, suffixes: Sequence[str], timeout_s: float) -> str:
        """Check Python, numpy and the runtime of every file suffix and make the temporary
        folder, in one connection."""
        needed = list(dict.fromkeys(format_of("model" + s) for s in suffixes))
        script = (self._facts_script([m for f in needed for m in f.modules])
                  + 'd=$(mktemp -d "${TMPDIR:-/tmp}/edgeprune-bench.XXXXXX") || exit 97\n'
                  f'echo "{DIR_TAG}$d"\n')
        proc = self.run_command(self.ssh_command(script), timeout_s, "checking Python")
        self.found = self._parse_facts(proc)
        folder = _tagged_lines(proc.stdout).get(DIR_TAG, "").strip()
        try:
            for f in needed:
                self.check_versions(self.found, f.modules, f.install_line(self.found.machine))
        except EdgepruneError:
            if folder:
                self.remove(folder)
            raise
        if proc.returncode != 0 or not folder:
            last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            raise EdgepruneError(f"cannot make a temporary folder on {self.device}: {last}")
        return folder

    def no_python_error(self, proc: subprocess.CompletedProcess) -> EdgepruneError:
        """Why the remote Python did not run (not installed, or it failed)."""
        name = self.options.remote_python
        if proc.returncode in (126, 127):
            return EdgepruneError(f"{name} not found on {self.device}: install Python "
                                  f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]}+ there, or pass "
                                  "--remote-python PATH")
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        return EdgepruneError(f"{name} on {self.device} did not run the check: {last}")

    def check_versions(self, facts: DeviceFacts, modules: tuple[str, ...],
                       pip_line: str) -> None:
        """EdgepruneError unless the remote Python is new enough and has numpy and one of
        `modules` (the runtime), naming `pip_line`."""
        python, found = facts.python, facts.modules
        where = f"{self.device} ({self.options.remote_python} {python})"
        if tuple(int(p) for p in python.split(".")[:2]) < MIN_PYTHON:
            raise EdgepruneError(f"{where}: the runner needs Python {MIN_PYTHON[0]}."
                                 f"{MIN_PYTHON[1]}+; install it or pass --remote-python PATH")
        if not found.get("numpy"):
            raise EdgepruneError(f"numpy is missing on {where}: " + (
                ARM32_NUMPY if facts.machine in ARM32 else "pip install numpy"))
        if not any(found.get(m) for m in modules):
            runtime = modules[0].split(".")[0].replace("_", "-")
            raise EdgepruneError(f"no {runtime} runtime on {where}: {pip_line}")

    def check(self, suffixes: Sequence[str], timeout_s: float | None = None) -> str:
        """Reach the device and check Python, numpy and the runtimes for `suffixes` (one
        connection, a temporary folder made and removed); a line saying what was found."""
        timeout_s = timeout_s or self.options.connect_timeout_s + 30
        folder = self.prepare(suffixes, timeout_s)
        self.remove(folder)
        found = self.found
        runtimes = ", ".join(f"{m.split('.')[0]} {v}" for m, v in found.modules.items()
                             if v and m != "numpy")
        emulated = f" (emulated: {found.emulation})" if found.emulated else ""
        return (f"{self.device} reachable, {found.cpu_model or found.machine}{emulated}, "
                f"Python {found.python}, numpy {found.modules.get('numpy')}, {runtimes}")

    def bench(self, model_paths: Sequence[Path], options: BenchOptions) -> list[BenchResult]:
        """Copy, run (the files interleaved in one runner) and clean up; the results are the
        device's report, labelled 'device'."""
        paths = [Path(p) for p in model_paths]
        for path in paths:
            format_of(path)  # an unsupported file fails before connecting
        files = self._files(paths, options)
        what = f"benchmark of {', '.join(p.name for p in paths)}"
        step_timeout = options.timeout_s * len(paths) + self.options.connect_timeout_s
        folder = self.prepare([p.suffix.lower() for p in paths], step_timeout)
        cleaned = False
        try:
            proc = self.run_command(self.scp_command(files, folder), step_timeout,
                                    "copying the model")
            if proc.returncode != 0:
                raise self.ssh_error(proc.stderr, "copying the model")
            proc = self.run_command(self.ssh_command(self._run_script(folder, paths, options)),
                             step_timeout + 15, what)
            if proc.returncode == 255:
                raise self.ssh_error(proc.stderr, what)
            cleaned = True  # the run script removed the folder itself
            if proc.returncode == 124:  # timeout(1) stopped the runner
                raise EdgepruneError(f"{what} on {self.device} did not finish in "
                                     f"{options.timeout_s * len(paths):g} s; lower --runs or "
                                     "--min-seconds")
            results = runner_report(paths, proc, self.label, self.device, self.device)
        finally:
            if not cleaned:
                self.remove(folder)
        for path, result in zip(paths, results, strict=True):
            result.model = str(path)
        return results

    def _files(self, paths: list[Path], options: BenchOptions) -> list[Path]:
        """Runner, models, their sidecars if any and, with --eval, the sample batches."""
        files = [RUNNER]
        for path in paths:
            if not path.is_file():
                raise EdgepruneError(f"model file not found: {path}")
            files.append(path)
            if sidecar_path(path).is_file():
                files.append(sidecar_path(path))
            if options.eval:
                samples = options.samples_for(path)
                if not samples.is_file():
                    raise EdgepruneError(f"eval samples not found: {samples} (write them with "
                                         "edgeprune.devices.write_eval_samples, or pass "
                                         "--samples)")
                if samples not in files:
                    files.append(samples)
        names = [f.name for f in files]
        if len(set(names)) != len(names):
            raise EdgepruneError(f"cannot copy files with the same name to one folder: {names}")
        return files

    def _run_script(self, folder: str, paths: list[Path], options: BenchOptions) -> str:
        """cd into the folder, run the runner under `timeout` when the device has it, remove
        the folder, exit with the runner's status."""
        # './NAME': a file named '-x.onnx' stays a file for the runner's argument parser
        samples = f"./{Path(options.samples).name}" if options.eval and options.samples else None
        args = " ".join(shlex.quote(a) for a in [*(f"./{p.name}" for p in paths),
                                                  *options.runner_args(samples)])
        limit = f"timeout -k 5 {max(1, round(options.timeout_s * len(paths)))}"
        return (f"cd {shlex.quote(folder)} || exit 96\n"
                f"if command -v timeout >/dev/null 2>&1; then t='{limit}'; else t=''; fi\n"
                f"$t {remote_path(self.options.remote_python)} runner.py {args}\n"
                "rc=$?\ncd / && rm -rf " + shlex.quote(folder) + "\nexit $rc\n")

    def remove(self, folder: str) -> None:
        """Best-effort removal of the temporary folder (errors are ignored)."""
        if not re.fullmatch(r"[\w./-]*edgeprune-bench\.\w+", folder):
            return  # never rm anything but a folder we made
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(self.ssh_command(f"rm -rf {shlex.quote(folder)}"),
                           capture_output=True, timeout=self.options.connect_timeout_s + 20,
                           stdin=subprocess.DEVNULL)
