"""Run the default `edgeprune compress --target rpi4` on the shipped demo model and print the
docs/BENCHMARKS.md section: accuracy, FLOPs, parity, file sizes, host latency and wall time.

    python benchmarks/compress_demo.py [--target rpi4] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path


def run_compress(target: str, run_dir: Path) -> tuple[dict, float]:
    cmd = ["edgeprune", "compress", "--target", target, "--out", str(run_dir), "--overwrite",
           "--json", "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"compress failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout), wall


def markdown(summary: dict, wall: float, target: str) -> str:
    d, p = summary["dense"], summary["pruned"]
    lines = [
        f"Command: `edgeprune compress --target {target}` (demo model, full Fashion-MNIST "
        f"test set), {platform.machine()} host, wall time of the whole command "
        f"**{wall:.0f} s** ({wall / 60:.1f} min).",
        "",
        "| | dense | pruned | dense/pruned |",
        "|---|---|---|---|",
        f"| top-1 accuracy | {d['accuracy'] * 100:.2f}% | {p['accuracy'] * 100:.2f}% | "
        f"{(p['accuracy'] - d['accuracy']) * 100:+.2f} points |",
        f"| params | {d['params']:,} | {p['params']:,} | {d['params'] / p['params']:.2f}x |",
        f"| MACs | {d['macs']:,} | {p['macs']:,} | {d['macs'] / p['macs']:.2f}x "
        f"(-{(1 - p['macs'] / d['macs']) * 100:.1f}% FLOPs) |",
    ]
    for fmt, df in d["files"].items():
        pf = p["files"][fmt]
        lines += [
            f"| {fmt} fp32 file | {df['size_bytes']:,} B | {pf['size_bytes']:,} B | "
            f"{df['size_bytes'] / pf['size_bytes']:.2f}x |",
            f"| {fmt} max abs diff vs PyTorch (32 test images) | {df['max_abs_diff']:.1e} | "
            f"{pf['max_abs_diff']:.1e} | |",
        ]
        for q in ("p50", "p90"):
            lines.append(
                f"| {fmt} latency {q}, {df['latency_label']} ({df['runtime']}) | "
                f"{df['latency_ms'][q]:.3f} ms | {pf['latency_ms'][q]:.3f} ms | "
                f"{df['latency_ms'][q] / pf['latency_ms'][q]:.2f}x |")
    stages = summary["stages"]
    lines += ["", "Stage wall times: " + ", ".join(
        f"{k} {v['wall_s']:.0f} s" for k, v in stages.items() if "wall_s" in v) + "."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="rpi4")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    summary, wall = run_compress(args.target, args.out / f"compress-demo-{args.target}")
    summary["command_wall_s"] = wall
    (args.out / f"compress_demo_{args.target}.json").write_text(json.dumps(summary, indent=2))
    print(markdown(summary, wall, args.target))


if __name__ == "__main__":
    main()
