#!/usr/bin/env python3
"""Standalone on-device benchmark runner for .tflite, .onnx and .ort models.

Copy this one file to a device and run `python3 runner.py MODEL [MODEL ...] [--threads N]
[--eval]`. It needs only the Python standard library (3.8+), numpy and one runtime:
ai-edge-litert (or the older tflite-runtime) for .tflite, onnxruntime for .onnx and .ort. It
never imports torch or edgeprune. It prints one JSON object on stdout; errors are one line on
stderr with exit code 2.

Several files are measured interleaved in one process: every file is loaded and warmed up,
then `--rounds` rounds each time every file in turn (the order rotates each round), so a load
from other processes slows every file alike and the ratios between files hold; each file's
per-round medians are reported, so a ratio's spread over rounds can be given. Timed runs
continue until both --runs runs and --min-seconds have passed per file, as TFLite's
benchmark_model does. With --eval it also measures top-1 accuracy (batch 1) on the sample
batch shipped beside each model as `<stem>.samples.npz` (arrays `x`: float32 NCHW, already
normalized; `y`: int64 labels), transposed to NHWC when the model's input is NHWC; with
--logits it also saves each file's logits on that batch, so two machines can be compared.

The report names the CPU of the architecture the runner runs on (an ARM board and core from
/proc/cpuinfo or the device tree, never the x86 host that qemu-user shows) and whether it ran
under emulation (`emulated`, and why in `emulation`): such times say nothing of a device.
A minimal root without /proc or /sys reads as unknown, and the runtimes' CPU probe warnings
about it are kept off stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

try:
    import numpy as np
except ImportError:
    print("error: numpy is not installed: pip install numpy", file=sys.stderr)
    sys.exit(2)

SCHEMA = "edgeprune.runner/2"
ORT_DTYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int16)": np.int16,
    "tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(bool)": np.bool_,
}


class RunnerError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


class RuntimeSession(NamedTuple):
    """A model file loaded in its runtime: `invoke()` runs one inference on fixed random inputs;
    `predict(x)` runs one batch of real inputs through the first input and returns the first
    output as float (quantized tensors are converted with their scale and zero point)."""

    runtime: str
    version: str
    invoke: Callable[[], Any]
    inputs: list[dict[str, Any]]
    load_ms: float
    predict: Callable[[np.ndarray], np.ndarray]


def sidecar_path(model: Path) -> Path:
    """The exporter's JSON sidecar of a model file: `<file name>.json` beside it (e.g.
    `model.tflite.json`), so the ONNX and TFLite files of one model each have their own."""
    return model.with_name(model.name + ".json")


PRECISION_TAGS = (".int8-qat", ".int8-dynamic", ".int8", ".fp16")
"""What an exported file name carries after the model's stem (`pruned.int8.tflite`)."""


def default_samples_path(model: Path) -> Path:
    """Where --eval looks for the sample batch by default: `<stem>.samples.npz` beside the
    model, the stem without a precision tag, so every file of one model shares one batch
    (`pruned.tflite` and `pruned.int8.tflite` both read `pruned.samples.npz`)."""
    stem = model.stem
    for tag in PRECISION_TAGS:
        if stem.endswith(tag):
            stem = stem[: -len(tag)]
            break
    return model.with_name(stem + ".samples.npz")


def random_input(shape: Any, dtype: Any, rng: np.random.Generator) -> np.ndarray:
    """Seeded random data of `shape` and `dtype`; dynamic dimensions become 1."""
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in shape]
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(dtype)
    info = np.iinfo(dtype)  # quantized inputs: the 8-bit range
    return rng.integers(max(info.min, -128), min(info.max, 255) + 1, shape).astype(dtype)


def _describe(name: str, array: np.ndarray) -> dict[str, Any]:
    return {"name": name, "shape": list(array.shape), "dtype": str(array.dtype)}


def _tflite_interpreter() -> tuple[Any, str, str]:
    """The TFLite Interpreter class, runtime name and version: ai-edge-litert first."""
    try:
        import ai_edge_litert as module
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter, "ai-edge-litert", getattr(module, "__version__", "unknown")
    except ImportError:
        pass
    try:
        import tflite_runtime as module
        from tflite_runtime.interpreter import Interpreter
        return Interpreter, "tflite-runtime", getattr(module, "__version__", "unknown")
    except ImportError:
        raise RunnerError("no TFLite runtime installed: pip install ai-edge-litert") from None


def _quantize(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """Float input to the tensor's dtype: scale/zero-point for quantized integer tensors."""
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if dtype.kind == "f":
        return x.astype(dtype)
    if not scale:
        raise RunnerError(f"input {detail['name']} is {dtype} without quantization parameters; "
                          "the runner cannot feed it normalized floats")
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if np.dtype(detail["dtype"]).kind != "f" and scale:
        return (y.astype(np.float32) - zero_point) * scale
    return y.astype(np.float32)


def load_tflite(path: Path, threads: int, rng: np.random.Generator) -> RuntimeSession:
    """Create a TFLite interpreter with `threads` threads and set random inputs once."""
    interpreter_class, runtime, version = _tflite_interpreter()
    t0 = time.perf_counter_ns()
    interpreter = interpreter_class(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    load_ms = (time.perf_counter_ns() - t0) / 1e6
    inputs = []
    for detail in interpreter.get_input_details():
        array = random_input(detail["shape"].tolist(), detail["dtype"], rng)
        interpreter.set_tensor(detail["index"], array)
        inputs.append(_describe(detail["name"], array))
    first_in = interpreter.get_input_details()[0]
    first_out = interpreter.get_output_details()[0]

    def predict(x: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(first_in["index"], _quantize(x, first_in))
        interpreter.invoke()
        return _dequantize(interpreter.get_tensor(first_out["index"]), first_out)

    return RuntimeSession(runtime, version, interpreter.invoke, inputs, load_ms, predict)


def _ort_dtype(name: str, ort_type: str) -> Any:
    if ort_type not in ORT_DTYPES:
        raise RunnerError(f"input {name} has type {ort_type}, which the runner cannot fill")
    return ORT_DTYPES[ort_type]


def load_onnx(path: Path, threads: int, rng: np.random.Generator) -> RuntimeSession:
    """Create an onnxruntime CPU session (intra-op `threads`, inter-op 1) with random inputs."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise RunnerError("no ONNX runtime installed: pip install onnxruntime") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    t0 = time.perf_counter_ns()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    load_ms = (time.perf_counter_ns() - t0) / 1e6
    feeds = {i.name: random_input(i.shape, _ort_dtype(i.name, i.type), rng)
             for i in session.get_inputs()}
    inputs = [_describe(name, array) for name, array in feeds.items()]
    first_in, first_out = session.get_inputs()[0], session.get_outputs()[0].name
    in_detail = {"name": first_in.name, "dtype": _ort_dtype(first_in.name, first_in.type)}

    def predict(x: np.ndarray) -> np.ndarray:
        out = session.run([first_out], {first_in.name: _quantize(x, in_detail)})[0]
        return np.asarray(out, dtype=np.float32)

    return RuntimeSession("onnxruntime", ort.__version__, lambda: session.run(None, feeds), inputs,
                  load_ms, predict)


LOADERS = {".tflite": load_tflite, ".onnx": load_onnx, ".ort": load_onnx}


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


NATIVE_NOISE = re.compile(r"(Error|Warning) in cpuinfo:|cpuid_info|cpuinfo_initialize failed|"
                          r"/sys/devices/system/cpu")
"""What the runtimes' CPU probes (cpuinfo in XNNPACK and onnxruntime) print to stderr when a
minimal root lacks /sys or /proc: nothing the user can act on."""


@contextlib.contextmanager
def native_noise_filtered() -> Iterator[None]:
    """Hold what native code writes to stderr (file descriptor 2) while the block runs, then
    pass on every line but the CPU probes' noise (`NATIVE_NOISE`)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no descriptor 2: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [ln for ln in held.read().decode(errors="replace").splitlines(True)
                    if not NATIVE_NOISE.search(ln)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def load_model(path: Path, threads: int, seed: int) -> RuntimeSession:
    """Pick the runtime from the file suffix and load the model; load failures are one line."""
    if not path.is_file():
        raise RunnerError(f"model file not found: {path}")
    loader = LOADERS.get(path.suffix.lower())
    if loader is None:
        raise RunnerError(f"unsupported model file {path.name}: expected .tflite, .onnx or .ort")
    try:
        with native_noise_filtered():
            return loader(path, threads, np.random.default_rng(seed))
    except RunnerError:
        raise
    except Exception as e:  # the runtimes raise many types for a bad model file
        raise RunnerError(f"cannot load {path.name}: {first_line(e)}") from None


def time_ms(invoke: Callable[[], Any]) -> float:
    t0 = time.perf_counter_ns()
    invoke()
    return (time.perf_counter_ns() - t0) / 1e6


def timed_runs(invoke: Callable[[], Any], runs: int,
               min_seconds: float) -> tuple[list[float], float]:
    """Latencies in ms of at least `runs` runs lasting at least `min_seconds`, and the
    wall time in seconds the runs took."""
    samples: list[float] = []
    start = time.perf_counter_ns()
    deadline = start + int(min_seconds * 1e9)
    while len(samples) < runs or time.perf_counter_ns() < deadline:
        samples.append(time_ms(invoke))
    return samples, (time.perf_counter_ns() - start) / 1e9


def latency_stats(samples: list[float]) -> dict[str, float]:
    a = np.asarray(samples, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"min": float(a.min()), "mean": float(a.mean()), "p50": float(p50),
            "p90": float(p90), "p99": float(p99), "max": float(a.max()), "std": float(a.std())}


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process (ru_maxrss: KB on Linux, bytes on macOS)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024 if sys.platform == "darwin" else 1024)


def _read(path: str, root: str = "/") -> str | None:
    """The text of `path` under `root` (a minimal root may lack /proc and /sys: None, silently)."""
    try:
        return Path(root, path.lstrip("/")).read_text(errors="replace").strip()
    except OSError:
        return None


ARM_MACHINES = ("aarch64", "arm64", "armv8l", "armv7l", "armv6l")
X86_MACHINES = ("x86_64", "amd64", "i686", "i386")
X86_VENDORS = ("GenuineIntel", "AuthenticAMD", "HygonGenuine", "CentaurHauls")
X86_MODEL_WORDS = ("Intel", "AMD", "EPYC", "Xeon", "Ryzen", "Core(TM)")
ARM_CORES = {"0xb76": "ARM1176", "0xc07": "Cortex-A7", "0xd03": "Cortex-A53",
             "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
             "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75",
             "0xd0b": "Cortex-A76", "0xd0d": "Cortex-A77", "0xd41": "Cortex-A78"}
"""Arm Ltd (`CPU implementer` 0x41) cores by `CPU part`: every Raspberry Pi's and the common
boards' (A53: Pi 3 / Zero 2, A72: Pi 4, A76: Pi 5, A55: RK3566 ...)."""
QEMU_BINFMT = {"aarch64": "qemu-aarch64", "arm64": "qemu-aarch64", "armv8l": "qemu-arm",
               "armv7l": "qemu-arm", "armv6l": "qemu-arm", "x86_64": "qemu-x86_64",
               "amd64": "qemu-x86_64", "i686": "qemu-i386", "i386": "qemu-i386"}


def cpu_fields(root: str = "/") -> dict[str, str]:
    """/proc/cpuinfo as {key: first value}; {} when it cannot be read."""
    fields: dict[str, str] = {}
    for line in (_read("/proc/cpuinfo", root) or "").splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def x86_cpu(fields: dict[str, str]) -> str | None:
    """The x86 CPU the cpuinfo fields describe (its model name or vendor), else None."""
    name, vendor = fields.get("model name", ""), fields.get("vendor_id", "")
    if vendor in X86_VENDORS or any(word in name for word in X86_MODEL_WORDS):
        return name or vendor
    return None


def arm_cpu(fields: dict[str, str], root: str = "/") -> str | None:
    """The ARM CPU: the board (`Model` line or the device tree's model) and the core decoded
    from `CPU implementer`/`CPU part`, e.g. 'Raspberry Pi 4 Model B Rev 1.4 (Cortex-A72)'."""
    board = fields.get("Model") or (_read("/sys/firmware/devicetree/base/model", root)
                                    or "").strip("\x00").strip() or None
    part = fields.get("CPU part", "").lower()
    core = ARM_CORES.get(part) if fields.get("CPU implementer", "").lower() == "0x41" else None
    if core is None and part:
        core = f"implementer {fields.get('CPU implementer', '?')} part {part}"
    if board and core:
        return f"{board} ({core})"
    return board or core


def qemu_binfmt(machine: str, root: str = "/") -> str | None:
    """The qemu binfmt_misc entry registered and enabled for `machine`, or None."""
    name = QEMU_BINFMT.get(machine)
    text = _read(f"/proc/sys/fs/binfmt_misc/{name}", root) if name else None
    if not text or text.splitlines()[0].strip() != "enabled":
        return None
    return name


def emulation(machine: str | None = None, root: str = "/") -> str | None:
    """Why this process runs under emulation (qemu-user), or None: the machine and the CPU
    /proc/cpuinfo describes belong to different architectures (qemu-user passes the host's
    cpuinfo through), the qemu binfmt entry for this machine being named when enabled."""
    machine = machine or platform.machine()
    fields = cpu_fields(root)
    binfmt = qemu_binfmt(machine, root)
    with_binfmt = f", qemu binfmt {binfmt} enabled" if binfmt else ""
    host = x86_cpu(fields)
    if machine in ARM_MACHINES and host:
        return f"{machine} process on an x86 CPU ({host}){with_binfmt}"
    if machine in X86_MACHINES and "CPU implementer" in fields and not host:
        return f"{machine} process on an ARM CPU ({arm_cpu(fields, root)}){with_binfmt}"
    return None


def cpu_model(machine: str | None = None, root: str = "/") -> str | None:
    """The model of the CPU this process's architecture runs on: for ARM the board and core
    (`arm_cpu`), never the x86 host's name that qemu-user shows; else the 'model name'."""
    machine = machine or platform.machine()
    fields = cpu_fields(root)
    if machine in ARM_MACHINES:
        return arm_cpu(fields, root)
    return fields.get("model name") or fields.get("Model") or platform.processor() or None


def host_info(root: str = "/") -> dict[str, Any]:
    """The machine the runner ran on: architecture, CPU, cores, governor, temperature, and
    whether it was emulated (`emulation`: why; its latencies then say nothing of a device)."""
    machine = platform.machine()
    temp = _read("/sys/class/thermal/thermal_zone0/temp", root)
    why = emulation(machine, root)
    return {
        "machine": machine, "cpu_model": cpu_model(machine, root), "cores": os.cpu_count(),
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor", root),
        "temperature_c": int(temp) / 1000 if temp and temp.lstrip("-").isdigit() else None,
        "emulated": why is not None, "emulation": why or "",
    }


def read_sidecar(model: Path) -> dict[str, Any]:
    """The exporter's sidecar as a dict; {} when there is none or it is not a JSON object."""
    try:
        data = json.loads(sidecar_path(model).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_samples(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The eval batch: `x` float32 (N, C, H, W) and `y` int64 (N,), checked."""
    if not path.is_file():
        raise RunnerError(f"eval samples not found: {path} (write them with "
                          "edgeprune.devices.write_eval_samples, or pass --samples)")
    try:
        with np.load(path, allow_pickle=False) as data:
            x, y = data["x"], data["y"]
    except Exception as e:  # not a zip, no x/y, pickled objects, ...
        raise RunnerError(f"cannot read eval samples {path.name}: {first_line(e)}") from None
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y) or len(x) == 0:
        raise RunnerError(f"eval samples {path.name} need x (N, C, H, W) and y (N,), got "
                          f"x {x.shape} and y {y.shape}")
    return x.astype(np.float32), y.astype(np.int64)


def to_model_layout(x: np.ndarray, input_shape: list[Any], hint: str = "NCHW") -> tuple[
        np.ndarray, str]:
    """`x` (N, C, H, W) as the model wants it: unchanged for an NCHW input, transposed for an
    NHWC one; `hint` (the sidecar's layout) decides when the shape fits both."""
    dims = [d if isinstance(d, int) and d > 0 else None for d in input_shape]
    _, c, h, w = x.shape

    def fits(chw: tuple[int, int, int]) -> bool:
        return len(dims) == 4 and all(dims[i + 1] in (None, v) for i, v in enumerate(chw))

    layouts = [name for name, chw in (("NCHW", (c, h, w)), ("NHWC", (h, w, c))) if fits(chw)]
    if not layouts:
        raise RunnerError(f"eval samples of shape {list(x.shape[1:])} (C, H, W) do not fit the "
                          f"model input {list(input_shape)}")
    layout = hint if hint in layouts else layouts[0]
    return (x.transpose(0, 2, 3, 1) if layout == "NHWC" else x), layout


def evaluate(model: RuntimeSession, samples: Path, hint: str,
             keep: list[np.ndarray] | None = None) -> dict[str, Any]:
    """Top-1 accuracy over the sample batch, one image per inference (batch 1); each image's
    logits are appended to `keep` when given (--logits)."""
    if len(model.inputs) != 1:
        raise RunnerError(f"--eval needs a model with one input, this one has "
                          f"{len(model.inputs)}")
    x, y = load_samples(samples)
    x, layout = to_model_layout(x, model.inputs[0]["shape"], hint)
    t0 = time.perf_counter_ns()
    correct = 0
    try:
        for i in range(len(x)):
            logits = model.predict(np.ascontiguousarray(x[i : i + 1]))
            correct += int(np.argmax(logits.reshape(-1)) == y[i])
            if keep is not None:
                keep.append(np.asarray(logits, dtype=np.float32).reshape(-1))
    except RunnerError:
        raise
    except Exception as e:  # the runtimes raise many types for a mismatched input
        raise RunnerError(f"inference on the eval samples failed: {first_line(e)}") from None
    return {"samples": len(x), "correct": correct, "top1": correct / len(x), "layout": layout,
            "samples_file": str(samples), "wall_ms": (time.perf_counter_ns() - t0) / 1e6}


def interleaved(sessions: list[RuntimeSession], rounds: int, runs: int,
                min_seconds: float) -> list[tuple[list[float], list[float], float]]:
    """Time the sessions in rounds, each round every session in turn (rotating the order);
    per session: (all latencies in ms, the median of each round, the timed seconds)."""
    per_round_runs = -(-runs // rounds)
    per_round_seconds = min_seconds / rounds
    out: list[tuple[list[float], list[float], float]] = [([], [], 0.0) for _ in sessions]
    for r in range(rounds):
        for k in range(len(sessions)):
            i = (r + k) % len(sessions)
            samples, seconds = timed_runs(sessions[i].invoke, per_round_runs, per_round_seconds)
            latencies, medians, total = out[i]
            out[i] = (latencies + samples, medians + [float(np.median(samples))], total + seconds)
    return out


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Load every file, run each once, warm them up, time them interleaved, then evaluate if
    asked; everything the JSON report holds. Peak RSS (of this process, with every file
    loaded) is read before the evaluation so the sample batches do not count."""
    paths = [Path(m) for m in args.models]
    sessions = [load_model(path, args.threads, args.seed) for path in paths]
    sidecars = [read_sidecar(path) for path in paths]
    first_ms = [time_ms(session.invoke) for session in sessions]
    for _ in range(args.warmup):
        for session in sessions:
            session.invoke()
    timings = interleaved(sessions, args.rounds, args.runs, args.min_seconds)
    rss, host = peak_rss_mb(), host_info()
    results, logits = [], {}
    for i, path in enumerate(paths):  # (no zip(strict=): the runner supports Python 3.8)
        session, sidecar, (latencies, medians, seconds) = sessions[i], sidecars[i], timings[i]
        accuracy = None
        if args.eval:
            samples_file = Path(args.samples) if args.samples else default_samples_path(path)
            layout = (sidecar.get("input_spec") or {}).get("layout", "NCHW")
            keep: list[np.ndarray] | None = [] if args.logits else None
            accuracy = evaluate(session, samples_file, layout, keep)
            if keep:
                logits[path.name] = np.stack(keep)
        results.append({
            "model": str(path), "file_size_bytes": path.stat().st_size,
            "format": path.suffix.lower().lstrip("."), "precision": sidecar.get("precision"),
            "runtime": session.runtime, "runtime_version": session.version,
            "threads": args.threads, "warmup": args.warmup, "runs": len(latencies),
            "min_seconds": args.min_seconds, "seed": args.seed, "timed_seconds": seconds,
            "inputs": session.inputs, "load_ms": session.load_ms, "first_inference_ms": first_ms[i],
            "latency_ms": latency_stats(latencies), "rounds_p50_ms": medians,
            "peak_rss_mb": rss, "host": host, "python": platform.python_version(),
            "eval": accuracy})
    if args.logits:
        np.savez(args.logits, **logits)
    return {"schema": SCHEMA, "rounds": args.rounds, "interleaved": len(paths) > 1,
            "emulated": host["emulated"], "emulation": host["emulation"], "results": results}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help=".tflite, .onnx or .ort files, measured interleaved")
    p.add_argument("--threads", type=int, default=1, help="inference threads (default 1)")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs after the first")
    p.add_argument("--runs", type=int, default=50, help="at least this many timed runs")
    p.add_argument("--min-seconds", type=float, default=1.0, help="and at least this long")
    p.add_argument("--rounds", type=int, default=10,
                   help="rounds the timed runs are split into, every file in each (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random input")
    p.add_argument("--eval", action="store_true", help="also measure top-1 accuracy on the "
                   "sample batch (default file: <stem>.samples.npz beside the model)")
    p.add_argument("--samples", help="the .npz sample batch for --eval (arrays x and y), for "
                   "every model")
    p.add_argument("--logits", help="with --eval, also save each file's logits on the sample "
                   "batch to this .npz (one (N, classes) float32 array per file, named by the "
                   "file's name), to compare runtimes or machines")
    args = p.parse_args(argv)
    if (args.threads < 1 or args.warmup < 0 or args.runs < 1 or args.min_seconds < 0
            or args.rounds < 1):
        p.error("need --threads >= 1, --warmup >= 0, --runs >= 1, --min-seconds >= 0, "
                "--rounds >= 1")
    if args.logits and not args.eval:
        p.error("--logits needs --eval")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        report = benchmark(parse_args(argv))
    except RunnerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
