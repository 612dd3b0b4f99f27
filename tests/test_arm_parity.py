"""The comparison that decides whether an ARM build reproduces the host (benchmarks/
bench_arm_box.py `parity`, used by the aarch64 box's slow test and the parity table) and the
runner's --logits, which both sides of it read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeprune.devices import write_eval_samples
from edgeprune.export.precision import DEFAULT_CHECKS

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from bench_arm_box import RUNNER, parity  # noqa: E402


def logits(n: int = 100, classes: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits with a clear winner per sample (margin 2) and labels right on 80 of 100."""
    rng = np.random.default_rng(seed)
    out = rng.normal(0, 0.3, (n, classes)).astype(np.float32)
    winners = rng.integers(0, classes, n)
    out[np.arange(n), winners] += 2.0
    labels = winners.copy()
    labels[: n // 5] = (labels[: n // 5] + 1) % classes
    return out, labels


def test_identical_logits_pass_at_every_precision() -> None:
    host, labels = logits()
    for precision in DEFAULT_CHECKS:
        p = parity("m", precision, host, host.copy(), labels)
        assert p.passed and p.max_abs_diff == 0 and p.same_class == 1.0, precision
        assert p.correct_host == p.correct_box == 80


def test_fp32_fails_one_logit_beyond_the_export_tolerance() -> None:
    host, labels = logits()
    check = DEFAULT_CHECKS["fp32"]
    allowed = float(check.bound(host)[3, 0])  # atol + rtol * sample 3's largest |logit|
    box = host.copy()
    box[3, 1] += 0.5 * allowed
    assert parity("m", "fp32", host, box, labels).passed
    box[3, 1] = host[3, 1] + 3 * allowed
    p = parity("m", "fp32", host, box, labels)
    assert not p.passed and "1 of 1000 logits not within 0.0001 + 0.001" in p.failures[0]
    assert p.max_abs_diff == pytest.approx(3 * allowed, rel=1e-4)
    assert p.same_class == 1.0  # the class never changed: the logit alone fails it


def test_int8_tolerates_a_quantization_step_but_not_lost_top1() -> None:
    host, labels = logits()
    box = host + 0.05  # one output quantization step everywhere: no class moves
    assert parity("m", "int8", host, box, labels).passed
    wrong = host.copy()
    right = np.flatnonzero(wrong.argmax(1) == labels)[:2]
    wrong[right, labels[right]] -= 10  # two correct samples change class: 2 points
    p = parity("m", "int8", host, wrong, labels)
    assert not p.passed and p.correct_box == 78 and p.same_class == 0.98
    assert p.failures == ["top-1 78/100 in the box vs 80/100 here: 2.00 points apart, more "
                          "than 1 allowed"]
    better = host.copy()
    fix = np.arange(2)  # labels wrong here on the first 20: the box "right" on two
    better[fix, labels[fix]] += 10
    assert not parity("m", "int8-qat", host, better, labels).passed  # same computation


def test_an_int8_tie_on_the_host_is_left_out_but_a_decided_sample_is_not() -> None:
    """Where the host's two highest int8 logits are equal, its argmax takes the first and a
    box one step apart may take the other: no class to reproduce, so the sample is left out
    (and counted); a decided sample changing class still fails."""
    host, labels = logits()
    tied = int(np.flatnonzero(host.argmax(1) == labels)[0])
    other = (labels[tied] + 1) % host.shape[1]
    host[tied, other] = host[tied, labels[tied]]  # exact tie, the right class first
    box = host.copy()
    box[tied, other] += 0.05  # one step: the box takes the other class
    p = parity("m", "int8", host, box, labels)
    assert p.passed and p.host_ties == 1 and p.samples == 99 and p.same_class == 1.0
    decided = int(np.flatnonzero(host.argmax(1) == labels)[1])
    box[decided, labels[decided]] -= 10  # a class the host decided, lost: 1.01 points
    assert not parity("m", "int8", host, box, labels).passed


def test_agreement_floor_of_fp16_fails_many_swaps_that_keep_top1() -> None:
    host, labels = logits()
    box = host.copy()
    box[20:24] = np.roll(host[20:24], 1, axis=1)  # 4 of 100 change class, top-1 drops 4...
    box[:4] = np.roll(host[:4], 1, axis=1)  # ...and 4 wrong ones become right: 80 both
    p = parity("m", "fp16", host, box, labels)
    assert p.correct_box == p.correct_host == 80 and p.same_class == 0.92
    assert not p.passed and "below 97%" in p.failures[0]


def test_non_finite_and_misshapen_outputs_fail() -> None:
    host, labels = logits()
    box = host.copy()
    box[0, 0] = np.nan
    p = parity("m", "int8", host, box, labels)
    assert not p.passed and p.max_abs_diff == float("inf")
    assert "NaN or inf" in p.failures[0]
    assert not parity("m", "fp32", host, host[:, :5], labels).passed


def tiny_onnx(path: Path, scale: float = 1.0) -> Path:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 5)).eval()
    with torch.no_grad():
        model[2].weight.mul_(scale)
    torch.onnx.export(model, (torch.randn(1, 3, 8, 8),), str(path), dynamo=True,
                      external_data=False)
    return path


def test_runner_logits_feed_the_comparison(tmp_path: Path) -> None:
    """The runner saves each file's logits on the batch by file name; the same file on two
    runs passes, a file whose weights differ by 1% fails the fp32 tolerance."""
    files = [tiny_onnx(tmp_path / "a.onnx"), tiny_onnx(tmp_path / "b.onnx", scale=1.01)]
    rng = np.random.default_rng(0)
    batch = write_eval_samples(tmp_path / "batch.npz", rng.normal(size=(6, 3, 8, 8)),
                               rng.integers(0, 5, 6))
    out = tmp_path / "logits.npz"
    proc = subprocess.run([sys.executable, str(RUNNER), *map(str, files), "--eval", "--runs",
                           "1", "--min-seconds", "0", "--warmup", "0", "--rounds", "1",
                           "--samples", str(batch), "--logits", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    with np.load(out) as saved:
        assert sorted(saved.files) == ["a.onnx", "b.onnx"]
        a, b = saved["a.onnx"], saved["b.onnx"]
    labels = np.load(batch)["y"]
    assert a.shape == (6, 5) and a.dtype == np.float32
    assert int(np.sum(a.argmax(1) == labels)) == report["results"][0]["eval"]["correct"]
    assert parity("a", "fp32", a, a.copy(), labels).passed
    assert not parity("a", "fp32", a, b, labels).passed


def test_runner_logits_need_eval(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(RUNNER), str(tmp_path / "m.onnx"), "--logits",
                           str(tmp_path / "l.npz")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--logits needs --eval" in proc.stderr
