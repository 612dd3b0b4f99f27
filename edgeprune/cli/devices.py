"""`edgeprune bench` and `edgeprune targets`: thin Typer shells over
`edgeprune.jobs.bench.bench_models` and the device profiles.

Results go to stdout as one rich table (one row per model file), progress and stage lines to
stderr; --json and --run write the raw results only after every file was measured, so a
failing device leaves them untouched.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from edgeprune import console
from edgeprune.cli.bounds import bounded
from edgeprune.cli.options import (
    D,
    DeviceOpt,
    JsonOpt,
    QuietOpt,
    RemotePythonOpt,
    SshOpt,
    TargetOpt,
    ThreadsOpt,
    TrustCodeOpt,
)

if TYPE_CHECKING:
    from edgeprune.devices.bench import BenchOptions
    from edgeprune.jobs.bench import BenchRow

ModelsArg = Annotated[list[Path], typer.Argument(
    help=".onnx / .tflite files, e.g. dense.tflite pruned.tflite; ratios are relative to the "
    "first", show_default=False)]

def bench(
    models: ModelsArg,
    target: TargetOpt = D.target,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    runs: Annotated[int, bounded("runs", "timed runs per file (at least)")] = 50,
    min_seconds: Annotated[float, bounded(
        "min_seconds", "timed seconds per file (at least)")] = 1.0,
    warmup: Annotated[int, bounded("warmup", "untimed runs before timing")] = 10,
    rounds: Annotated[int, bounded(
        "rounds", "the files are timed in turn in this many rounds (ratios hold under load; "
        "their spread is over the rounds)")] = 10,
    eval_: Annotated[bool, typer.Option("--eval", help="also top-1 accuracy on the sample "
                                        "batch shipped with each model")] = False,
    samples: Annotated[Path | None, typer.Option(
        help="the --eval batch (default: <stem>.samples.npz beside each model)")] = None,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="write the raw results to this JSON file")] = None,
    run: Annotated[Path | None, typer.Option(
        "--run", help="append the results to this run folder's manifest.json")] = None,
    ssh_option: SshOpt = None,
    remote_python: RemotePythonOpt = D.remote_python,
    timeout: Annotated[float, bounded("timeout", "seconds allowed per model file")] = 600,
    quiet: QuietOpt = False,
) -> None:
    """Benchmark model files on this machine (plus a target estimate) or on devices."""
    console.set_quiet(quiet)
    from edgeprune.devices.bench import BenchOptions
    from edgeprune.devices.ssh import SshOptions
    from edgeprune.jobs.bench import bench_command

    options = BenchOptions(warmup=warmup, runs=runs, min_seconds=min_seconds, rounds=rounds,
                           timeout_s=timeout, eval=eval_, samples=samples)
    outcome = bench_command(models, target, device, threads, options,
                            SshOptions.of(ssh_option, remote_python), json_out, run)
    for rows in outcome.fleet.values():
        console.stdout.print(bench_table(rows, outcome.target, outcome.options))
    if outcome.json_path is not None:
        console.info(f"wrote {outcome.json_path}")
    for d, manifest in (outcome.appended or {}).items():
        n = len(outcome.fleet[d])
        console.info(f"appended {n} result{'s' if n > 1 else ''} from {d} to {manifest}")


def _size(n: int) -> str:
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def bench_table(rows: list[BenchRow], target: str, options: BenchOptions) -> Table:
    """One row per model file: size, latency percentiles (ms) and ratios to the first file;
    the estimate column only for host runs, headed and captioned as an estimate."""
    first = rows[0].result
    estimates = [r.estimate for r in rows if r.estimate]
    with_eval = any(r.result.eval for r in rows)
    caption = (f"est.: roofline estimate for {target} ({estimates[0].threads} threads) from its "
               "profile, not a measurement" if estimates else None)
    emulated = next((r.result for r in rows if r.result.label == "emulated"), None)
    if emulated is not None:  # qemu's times: labelled, never a speed claim
        caption = "; ".join(filter(None, [caption, (
            f"emulated: timed under qemu ({escape(emulated.emulation)}); these times and "
            "speedups say nothing of a device's speed, only that the files run")]))
    table = Table(title=f"latency in ms, measured on {escape(first.device)} ({first.label}), "
                  f"{options.threads} threads, warm-up {options.warmup}, >= {options.runs} "
                  f"runs and >= {options.min_seconds:g} s per file, interleaved in "
                  f"{options.rounds} rounds; x size: size / the first file's; speedup: the "
                  "first file's p50 / this file's (lowest-highest round)",
                  caption=caption, box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1),
                  collapse_padding=True, show_edge=False)
    table.add_column("model", overflow="fold")
    table.add_column("format")
    for name in ("size", "x size", "p50", "p90", "p99", "speedup"):
        table.add_column(name, justify="right")
    table.add_column("where")
    if with_eval:
        table.add_column("top-1", justify="right")
    if estimates:
        table.add_column(f"{target} est.", justify="right")
    for r in rows:
        res = r.result
        cells = [escape(r.path.name), res.format + (f" {res.precision}" if res.precision else ""),
                 _size(res.file_size_bytes), f"{r.size_ratio:.2f}", f"{res.p50_ms:.3f}",
                 f"{res.p90_ms:.3f}", f"{res.p99_ms:.3f}",
                 f"{1 / r.p50_ratio:.2f}x ({1 / r.p50_spread[1]:.2f}-"
                 f"{1 / r.p50_spread[0]:.2f})", res.label]
        if with_eval:
            cells.append(f"{res.top1 * 100:.1f}%" if res.eval else "-")
        if estimates:
            cells.append(f"~{r.estimate.latency_ms:.3f}" if r.estimate else "-")
        table.add_row(*cells)
    return table


targets = typer.Typer(help="The device profiles --target accepts, and calibrating your own.",
                      no_args_is_help=False, invoke_without_command=True)


@targets.callback()
def list_profiles(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """List the device profiles --target accepts (or a .toml/.json profile file of yours)."""
    if ctx.invoked_subcommand is not None:
        return
    from dataclasses import asdict

    from edgeprune.devices.targets import list_targets

    profiles = list_targets()
    if json_out:
        typer.echo(json.dumps([asdict(p) for p in profiles], indent=2))
        return
    table = Table("target", "cpu", "cores", "SIMD width", "RAM", "runtime", "threads",
                  "formats", "precisions", "peak GFLOPS", title="device profiles")
    for p in profiles:
        table.add_row(p.name, p.cpu, str(p.cores), str(p.simd_width), f"{p.ram_mb} MB",
                      p.runtime, str(p.threads), ",".join(p.formats), ",".join(p.precisions),
                      f"{p.peak_gflops:g}")
    console.stdout.print(table)


@targets.command()
def calibrate(
    device: Annotated[str, typer.Option(help="ssh://user@host[:port] of the board",
                                        show_default=False)],
    name: Annotated[str, typer.Option(help="the profile's name", show_default=False)],
    out: Annotated[Path, typer.Option(help="profile file to write (.toml or .json)",
                                      show_default=False)],
    base: Annotated[str, typer.Option(
        help="shipped profile giving what a benchmark cannot measure (SIMD width, memory "
        "bandwidth, FLOPs per cycle)")] = D.target,
    runtime: Annotated[str | None, typer.Option(
        help="tflite | onnxruntime \\[default: the base profile's]")] = None,
    model: Annotated[str, typer.Option(help="reference model")] = "torchvision:mobilenet_v2",
    input_size: Annotated[str, typer.Option(help="its input, CxHxW")] = "3x224x224",
    runs: Annotated[int, bounded("runs", "timed runs per file (at least)")] = 50,
    min_seconds: Annotated[float, bounded(
        "min_seconds", "timed seconds per file (at least)")] = 1.0,
    ssh_option: SshOpt = None,
    remote_python: RemotePythonOpt = D.remote_python,
    overwrite: Annotated[bool, typer.Option(help="replace an existing --out file")] = False,
    trust_code: TrustCodeOpt = False,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Measure a reference model on your board (fp32 and int8) and write its profile."""
    console.set_quiet(quiet)
    from dataclasses import asdict

    from edgeprune.devices.ssh import SshOptions
    from edgeprune.jobs.calibrate import calibrate_target

    result = calibrate_target(device, name, out, base, runtime, model, input_size, runs,
                              min_seconds, SshOptions.of(ssh_option, remote_python),
                              overwrite, trust_code)
    if json_out:
        typer.echo(json.dumps({"out": str(result.out), "profile": asdict(result.profile),
                               "measured_p50_ms": {p: r.p50_ms for p, r in
                                                   result.measured.items()}}, indent=2))
        return
    p = result.profile
    typer.echo(f"wrote {result.out}: {p.cpu}, {p.runtime}, fp32 "
               f"{result.measured['fp32'].p50_ms:.3f} ms and int8 "
               f"{result.measured['int8'].p50_ms:.3f} ms at {p.threads} threads; use it with "
               f"--target {result.out}")


def deploy(
    run_dir: Annotated[Path, typer.Argument(help="folder of an `edgeprune compress` run",
                                            show_default=False)],
    device: Annotated[str, typer.Option(help="ssh://user@host[:port]", show_default=False)],
    remote_dir: Annotated[str | None, typer.Option(
        help="folder on the device \\[default: ~/edgeprune/RUN_NAME]")] = None,
    threads: ThreadsOpt = None,
    runs: Annotated[int, bounded("runs", "timed runs (at least)")] = 50,
    min_seconds: Annotated[float, bounded("min_seconds", "timed seconds (at least)")] = 1.0,
    ssh_option: SshOpt = None,
    remote_python: RemotePythonOpt = D.remote_python,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Copy a run's ship/ folder to the device, check it, and run its --eval batch there."""
    console.set_quiet(quiet)
    from edgeprune.devices.ssh import SshOptions
    from edgeprune.errors import EdgepruneError
    from edgeprune.jobs.deploy import deploy_run

    d = deploy_run(run_dir, device, remote_dir, threads, runs, min_seconds,
                   SshOptions.of(ssh_option, remote_python))
    if json_out:
        typer.echo(json.dumps(d.to_dict(), indent=2, default=str))
    else:
        typer.echo(f"copied {len(d.files)} files to {d.device}:{d.remote_dir} (SHA256SUMS "
                   "match)")
    runtime_missing = [m for m in d.missing if not m.lower().startswith("pillow")]
    if d.missing and not runtime_missing:
        console.info(f"note: predict.py needs {', '.join(d.missing)}, missing on the device: "
                     f"pip install -r {d.remote_dir}/requirements.txt")
    if runtime_missing:
        raise EdgepruneError(f"{d.device} lacks {', '.join(d.missing)}; nothing was installed: "
                             f"run `pip install -r {d.remote_dir}/requirements.txt` there, then "
                             "deploy again")
    if d.result is not None and not json_out:
        r = d.result
        typer.echo(f"on {d.device} ({d.facts.cpu_model or d.facts.machine}, {r.runtime} "
                   f"{r.runtime_version}): top-1 {r.top1 * 100:.1f}% on {r.eval['samples']} "
                   f"shipped samples, p50 {r.p50_ms:.3f} ms, p90 {r.p90_ms:.3f} ms at "
                   f"{r.threads} threads, peak RSS {r.peak_rss_mb or 0:.0f} MB"
                   + (f"; emulated ({r.emulation}): these times say nothing of a device's "
                      "speed" if r.label == "emulated" else ""))
