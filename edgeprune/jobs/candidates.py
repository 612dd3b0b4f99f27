"""The files compress may ship and the choice between them.

A candidate is one model (dense or pruned) at one precision in the format the target's
runtime loads, with its top-1 accuracy on the test images (measured in that runtime), its size
and its latency (measured with every other candidate interleaved in one runner process, on the
device when one is given, else on this machine; plus the target's roofline estimate). compress
ships the fastest candidate whose accuracy is within `max_drop` points of the dense fp32 file;
with a latency budget, a candidate that meets it comes first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from rich.markup import escape

from edgeprune.console import info, progress_bar
from edgeprune.devices.bench import get_backend
from edgeprune.devices.results import BenchOptions, BenchResult, Ratio
from edgeprune.devices.ssh import SshOptions
from edgeprune.errors import EdgepruneError

T = TypeVar("T")


@dataclass
class Candidate:
    """One file compress may ship, and how it measured."""

    model: str
    precision: str
    format: str
    path: str
    size_bytes: int
    accuracy: float | None
    quantization: str = "none"
    """'none' (fp32), 'ptq' (post-training, calibrated) or 'qat' (quantization-aware)."""
    latency_ms: dict[str, float] | None = None
    latency_label: str = ""
    speedup: dict[str, float] | None = None
    """Dense fp32's p50 / this file's, per round: {"value", "low", "high", "rounds"}."""
    size_ratio: float = 1.0
    estimate_ms: float | None = None
    """The target's roofline estimate of this file's latency (calibrated profiles included)."""
    estimate_speedup: float | None = None
    """Dense fp32's estimate / this file's: what decides when no device is attached."""
    estimate_label: str = ""
    drop_points: float | None = None
    """Top-1 points below dense fp32 on the test images (reported, never decided on when a
    validation split exists)."""
    test_drop: dict[str, Any] | None = None
    """That drop with its 95% interval from the paired test predictions (edgeprune.stats)."""
    validation_accuracy: float | None = None
    validation_drop: dict[str, Any] | None = None
    """The drop below dense fp32 on the validation split, with its one-sided 95% upper bound
    and the figure the tolerance judges (`policy.ToleranceVerdict.to_dict`)."""
    within_tolerance: bool = False
    meets_budget: bool | None = None
    budget_latency_ms: float | None = None
    """The latency the --latency-ms budget judged: p50 on the device, else the estimate."""
    fleet: dict[str, dict[str, Any]] | None = None
    """With several devices: per device, its p50/p90/mean (ms) and speedup over dense fp32
    there; the first device's measurement is the one above, the one the choice uses."""

    @property
    def name(self) -> str:
        qat = " (QAT)" if self.quantization == "qat" else ""
        return f"{self.model} {self.precision}{qat} {self.format}"

    @property
    def p50(self) -> float:
        return self.latency_ms["p50"] if self.latency_ms else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"name": self.name}


@dataclass(frozen=True)
class Choice:
    """The shipped candidate (None when none qualifies) and why, in one sentence."""

    shipped: Candidate | None
    reason: str


def drop_points(reference_accuracy: float, accuracy: float) -> float:
    """Top-1 points `accuracy` lies below `reference_accuracy` (both shares in [0, 1])."""
    return (reference_accuracy - accuracy) * 100


def judge(candidates: list[Candidate], reference_accuracy: float, max_drop: float,
          budget_ms: float | None, budget_on_device: bool) -> None:
    """Fill in each candidate's accuracy drop (points below `reference_accuracy`), whether it
    is within `max_drop`, and, with a budget, whether it meets it: measured p50 on a device,
    else the roofline estimate. A candidate with a `validation_drop` is judged by it (its
    bound, see `policy.ToleranceVerdict`) and its test drop is only reported."""
    for c in candidates:
        c.drop_points = None if c.accuracy is None else drop_points(reference_accuracy,
                                                                    c.accuracy)
        basis = _judged_drop(c)[0]
        c.within_tolerance = basis <= max_drop + 1e-9
        if budget_ms is not None:
            c.budget_latency_ms = c.p50 if budget_on_device else c.estimate_ms
            c.meets_budget = (c.budget_latency_ms is not None
                              and c.budget_latency_ms <= budget_ms)


def _judged_drop(c: Candidate) -> tuple[float, str]:
    """The figure the tolerance judges (on validation when there is one: the bound of the
    drop, or its point estimate on a split too small for a bound; else the test drop) and
    the words naming where it was taken."""
    if c.validation_drop is not None:
        return c.validation_drop["judged"], " on the validation images"
    return (c.drop_points if c.drop_points is not None else float("inf")), ""


def _judged_words(c: Candidate) -> str:
    """The judged drop as the reason quotes it: 'top-1 -0.45 points, 95% bound 0.91'."""
    v = c.validation_drop
    if v is None:
        return f"top-1 {0.0 - _judged_drop(c)[0]:+.2f} points"
    bound = f", 95% bound {v['bound']:.2f}" if v["rule"] == "bound" else ""
    return f"top-1 {0.0 - v['points']:+.2f} points{bound}"


def _budget_latency(c: Candidate) -> float:
    return c.budget_latency_ms if c.budget_latency_ms is not None else float("inf")


def _points(n: float) -> str:
    return f"{n:g} point{'' if n == 1 else 's'}"


def _slowness(c: Candidate, by_estimate: bool) -> tuple[float, ...]:
    """What the choice ranks by, a statistic the table, the reason and the report print: on
    the target itself (a device attached), the measured speedup over dense fp32 (median of
    the per-round ratios, files interleaved), p50 breaking ties; for a target that is not
    attached (`by_estimate`), the target's estimated speedup, since this host's CPU is not
    the target's (x86 int8 can run slower than fp32 where the Pi runs it twice as fast),
    the host's speedup breaking ties."""
    measured = (-c.speedup["value"] if c.speedup else 0.0, c.p50)
    if by_estimate and c.estimate_speedup is not None:
        return (-c.estimate_speedup, *measured)
    return measured


def _speed(c: Candidate, by_estimate: bool) -> str:
    """How much faster than dense fp32 `c` is, by the figure that decided."""
    if by_estimate and c.estimate_speedup is not None:
        host = (f"; {c.latency_label} measured {c.speedup['value']:.2f}x" if c.speedup
                else "")
        return (f", {c.estimate_speedup:.2f}x faster than dense fp32 on the "
                f"{c.estimate_label}, which decided{host}")
    return (f", {c.speedup['value']:.2f}x faster than dense fp32 ({c.latency_label})"
            if c.speedup else "")


def choose(candidates: list[Candidate], max_drop: float, budget_ms: float | None,
           budget_label: str, by_estimate: bool = False) -> Choice:
    """The fastest candidate within the tolerance (one that meets the budget first): fastest
    on the device's measurements, or with `by_estimate` (no device attached) on the target's
    estimate, see `_slowness`."""
    fit = sorted((c for c in candidates if c.within_tolerance),
                 key=lambda c: _slowness(c, by_estimate))
    if not fit:
        best = min(candidates, key=lambda c: _judged_drop(c)[0])
        where = _judged_drop(best)[1]
        return Choice(None, f"no candidate is within {_points(max_drop)} of dense fp32{where} "
                      f"(the closest, {best.name}: {_judged_words(best)}); raise --max-drop "
                      "or prune less")
    within = [c for c in fit if c.meets_budget] if budget_ms is not None else fit
    shipped = (within or fit)[0]
    speed = _speed(shipped, by_estimate)
    where = _judged_drop(shipped)[1]
    test = (f"; {0.0 - shipped.drop_points:+.2f} on the test images"
            if where and shipped.drop_points is not None else "")
    reason = (f"fastest of {len(fit)} candidate{'s' if len(fit) > 1 else ''} within "
              f"{_points(max_drop)} of dense fp32{where} ({_judged_words(shipped)}{test}"
              f"{speed})")
    if budget_ms is not None:
        reason += (f"; meets the {budget_ms:g} ms budget ({budget_label})" if within else
                   f"; none within the tolerance meets the {budget_ms:g} ms budget "
                   f"({budget_label}): this, the fastest, misses it by "
                   f"{_budget_latency(shipped) - budget_ms:.3f} ms "
                   f"({_budget_latency(shipped):.3f} ms)")
    return Choice(shipped, reason)


def speedup(reference: BenchResult, result: BenchResult) -> dict[str, float]:
    """reference p50 / result p50 over the rounds they shared, with its spread."""
    ratio = Ratio.of(reference, result)
    return {"value": ratio.value, "low": ratio.low, "high": ratio.high, "rounds": ratio.rounds}


EMULATED = ", emulated"
"""How a latency label ends when qemu took the time (`latency_fields`)."""


def latency_fields(result: BenchResult) -> dict[str, Any]:
    """What a file's measurement adds to its summary entry; a time taken under emulation is
    labelled so, with why."""
    threads = f"{result.threads} thread{'s' if result.threads > 1 else ''}"
    where = result.device if result.label in ("device", "emulated") else "host"
    emulated = EMULATED if result.label == "emulated" else ""
    return {"latency_ms": {"p50": result.p50_ms, "p90": result.p90_ms,
                           "mean": result.latency_ms["mean"]},
            "latency_label": f"{where}, {threads}{emulated}",
            "runtime": f"{result.runtime} {result.runtime_version}",
            **({"emulation": result.emulation} if emulated else {})}


def decided_on_device(candidates: Sequence[Candidate], device: str | None,
                      target: str) -> tuple[bool, str]:
    """Whether the measurements on `device` (the first --device, None without one) decide,
    and which figures decided: an emulated device's times never do, the `target` estimate
    does instead, as without a device (said in one line)."""
    if not device:
        return False, (f"the {target} estimate (no device attached; this host's timings are "
                       "shown, labelled host)")
    if any(c.latency_label.endswith(EMULATED) for c in candidates):
        info(f"{device} runs under emulation (qemu): its latencies are labelled emulated and "
             f"decide nothing; the {target} estimate chooses, as without a device")
        return False, (f"the {target} estimate ({device} is emulated; its timings are shown, "
                       "labelled emulated)")
    return True, f"the speedup measured on {device}"


def on_each_device(devices: Sequence[str], work: Callable[[str], T]) -> dict[str, T]:
    """`work(device)` for every device at once, one thread (and connection) each, results in
    the devices' order; a failure on any device raises, naming it, once all have ended."""
    if len(devices) == 1:
        return {devices[0]: work(devices[0])}
    with ThreadPoolExecutor(max_workers=len(devices)) as pool, \
            progress_bar(None, f"measuring on {len(devices)} devices"):
        futures = {device: pool.submit(work, device) for device in devices}
        wait(list(futures.values()))
    for device, future in futures.items():
        error = future.exception()
        if error is not None:
            if isinstance(error, EdgepruneError):
                raise EdgepruneError(f"{device}: {error}") from None
            raise error
    return {device: future.result() for device, future in futures.items()}


def measure_files(paths: list[Path], device: str | None, options: BenchOptions,
            ssh: SshOptions | None = None) -> dict[Path, BenchResult]:
    """Measure `paths` interleaved in one runner process on `device` (None: this machine)."""
    backend = get_backend(device or "local", ssh)
    with progress_bar(None, f"benchmarking {len(paths)} files on {escape(backend.device)}"):
        results = backend.bench(paths, options)
    return dict(zip(paths, results, strict=True))
