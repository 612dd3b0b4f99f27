"""The compatibility matrix (docs/MODELS.md): every torchvision classifier and a timm selection
through prune (score + surgery) -> export (ONNX fp32, TFLite fp32, TFLite int8) -> verify,
with the product's own job functions (`prune_file`, `export_files`).

Each model runs in a child process with a timeout and an address-space cap, so a hang or an
out-of-memory ends that model only; results are merged into benchmarks/results/models.json
after each model, and a second run skips the models already there (resumable). The score
stage uses the data-free `l1` criterion (cheap; the matrix checks that the stages complete on
the architecture, not how good the cut is) at -50% MACs, or at 95% of the most an
architecture allows where that is less (its protected layers; the prune column shows the
cut). Data: a generated 3-class image folder. Models
are untrained, with their BatchNorm statistics estimated on 64 of its images first
(`with_data_statistics`; rows marked "bn": "recalibrated").

    nice -n 10 python benchmarks/bench_models.py [--only torchvision|timm] [--timeout 900]
    nice -n 10 python benchmarks/bench_models.py --models timm:deit_tiny_patch16_224,...
    python benchmarks/bench_models.py --table     # writes the matrix into docs/MODELS.md
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from results_file import ResultsFile  # noqa: E402

RESULTS = HERE / "results" / "models.json"
DOC = HERE.parent / "docs" / "MODELS.md"
STAGES = ("prune", "onnx", "tflite fp32", "tflite int8", "verify")
EXPORTS = (("onnx", "fp32"), ("tflite", "fp32"), ("tflite", "int8"))
COMMAND = ("nice -n 10 python benchmarks/bench_models.py --only torchvision --timeout 1200` and "
           "`nice -n 10 python benchmarks/bench_models.py --only timm --timeout 1200")

TIMM = (
    # CNNs
    "resnet18", "resnet26d", "resnet50d", "regnetx_002", "regnety_002", "mobilenetv2_050",
    "mobilenetv3_small_050", "mobilenetv3_large_100", "efficientnet_b0", "efficientnet_lite0",
    "tf_efficientnetv2_b0", "ghostnet_100", "mnasnet_small", "fbnetc_100", "rexnet_100",
    "hardcorenas_a", "lcnet_050", "dla34", "densenet121", "dpn68", "cspresnet50", "tinynet_e",
    "semnasnet_050", "spnasnet_100", "repvgg_a0", "resnest14d", "seresnext26d_32x4d",
    "convnext_atto", "convnextv2_atto", "efficientformer_l1", "hrnet_w18_small",
    # hybrids
    "mobilevit_xxs", "mobilevitv2_050", "edgenext_xx_small", "coat_lite_tiny",
    "levit_128s", "fastvit_t8", "repvit_m1", "efficientvit_b0", "mobileone_s0", "poolformer_s12",
    # ViTs
    "deit_tiny_patch16_224", "vit_tiny_patch16_224", "deit_small_patch16_224",
    "swin_tiny_patch4_window7_224", "pit_ti_224", "cait_xxs24_224", "xcit_nano_12_p16_224",
)
SIZE_224 = ("vit_", "maxvit", "swin", "deit", "pit_", "cait", "xcit", "coat", "levit",
            "efficientformer", "efficientvit", "fastvit")
"""Name prefixes/parts of models that need their native 224-pixel input (patch grids,
windows or fixed position tables); the rest run at 64 pixels."""


def input_size(library: str, name: str) -> int:
    """The side the model runs at in the matrix: 64 where it fits, else 224 (or 96)."""
    if any(part in name for part in SIZE_224):
        return 224
    if name in ("inception_v3", "googlenet"):
        return 96 if name == "googlenet" else 160
    return 64


def models(only: str | None) -> list[str]:
    """`library:name` for every torchvision classifier (smallest first) and the timm
    selection."""
    import torchvision

    refs = []
    if only in (None, "torchvision"):
        names = torchvision.models.list_models(module=torchvision.models)
        refs += [f"torchvision:{n}" for n in sorted(names, key=_torchvision_params)]
    if only in (None, "timm"):
        refs += [f"timm:{n}" for n in TIMM]
    return refs


def _torchvision_params(name: str) -> tuple[int, str]:
    """(parameters, name) from the builder's weights metadata (no download), so a resumed
    run measures the small models first and a session that stops early covers the most."""
    import torchvision

    try:
        params = torchvision.models.get_model_weights(name).DEFAULT.meta["num_params"]
    except (KeyError, AttributeError, ValueError):
        params = 0
    return params, name


def with_data_statistics(ref: str, out: Path, data: dict) -> Path:
    """`ref` built untrained, its BatchNorm statistics estimated on 64 of the folder's images,
    saved as an edgeprune checkpoint at `out`. An untrained network's eval-mode BatchNorm
    (mean 0, variance 1) lets activations shrink layer by layer (torchvision MobileNetV2:
    ReLU6 outputs below 1e-8, which TFLite on ARM refuses to quantize, and logits of 1e-15,
    whose int8 top-1 is a coin toss); with statistics from data they have a trained model's
    ranges, which is what the stages are meant to see."""
    from edgeprune.jobs.loading import load_model_and_data
    from edgeprune.models.checkpoint import save_checkpoint
    from edgeprune.pruning.bn_recalibration import recalibrate_bn

    md = load_model_and_data(ref, **data)
    recalibrate_bn(md.loaded.model, md.data.reference(64, batch_size=16))
    save_checkpoint(out, md.loaded.model, md.loaded.arch, md.spec)
    return out


def one_model(ref: str, data_dir: Path, work: Path) -> dict:
    """All stages of one model in this process; each stage's outcome, first failure ends it."""
    from edgeprune.jobs.export import export_files
    from edgeprune.jobs.prune import prune_file
    from edgeprune.pruning.search import Unreachable

    library, name = ref.split(":", 1)
    side = input_size(library, name)
    data = {"dataset": "imagefolder", "data_dir": data_dir, "input_size": f"3x{side}x{side}"}
    row: dict = {"size": side, "stages": {}, "bn": "recalibrated"}
    t0 = time.perf_counter()
    try:
        model = with_data_statistics(ref, work / "model.pt", data)
        try:
            summary = prune_file(str(model), criterion="l1", score_samples=8,
                                 out=work / "pruned.pt", **data)
        except Unreachable as exc:  # the architecture allows less than -50%: prune to that
            most = 1 - exc.most.macs / exc.reference.macs
            summary = prune_file(str(model), criterion="l1", score_samples=8,
                                 flops_reduction=math.floor(95 * most) / 100,
                                 out=work / "pruned.pt", **data)
            row["most_cut"] = round(most, 4)
        row["stages"]["prune"] = {"ok": True, "macs_cut": summary.get("flops_reduction")}
    except BaseException as exc:  # noqa: BLE001 - the reason is the result
        row["stages"]["prune"] = {"ok": False, "reason": reason(exc)}
        return row | {"wall_s": time.perf_counter() - t0}
    verified = []
    for fmt, precision in EXPORTS:
        stage = fmt if fmt == "onnx" else f"{fmt} {precision}"
        try:
            result = export_files(str(work / "pruned.pt"), formats=fmt, precisions=precision,
                                  out=work / f"{fmt}-{precision}", calibration_samples=64,
                                  eval_samples=60, verify=False, **data)[0]
            row["stages"][stage] = {"ok": True, "mb": result.size_bytes / 1e6}
            verified.append((stage, result.verified, result.accuracy,
                             result.reference_accuracy, result.max_abs_diff))
        except BaseException as exc:  # noqa: BLE001
            row["stages"][stage] = {"ok": False, "reason": reason(exc)}
    failed = [f"{s}: top-1 {a:.1%} vs {r:.1%}, max|diff| {d:.1e}"
              for s, ok, a, r, d in verified if not ok]
    if verified:
        row["stages"]["verify"] = ({"ok": True} if not failed
                                   else {"ok": False, "reason": "; ".join(failed)})
    return row | {"wall_s": time.perf_counter() - t0}


def reason(exc: BaseException) -> str:
    """The first line of an exception, with its type when it is not the product's own."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if type(exc).__name__ not in ("EdgepruneError", "ExportError"):
        text = f"{type(exc).__name__}: {text}"
    return text[:300]


def child(ref: str, data_dir: Path, out: Path) -> None:
    """Entry of the child process: run one model, write its row as JSON to `out`."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            row = one_model(ref, data_dir, Path(tmp))
        except BaseException:  # noqa: BLE001
            row = {"stages": {}, "error": traceback.format_exc()[-300:]}
    out.write_text(json.dumps(row))


def run_all(refs: list[str], timeout: float, memory_gb: float, data_dir: Path) -> None:
    """Each model not yet in the results file, in a child process, merged as it ends."""
    results = ResultsFile(RESULTS)
    cap = int(memory_gb * 2**30)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    for ref in refs:
        if ref in results.data:
            continue
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            t0 = time.perf_counter()
            try:
                proc = subprocess.run([sys.executable, __file__, "--child", ref, "--data-dir",
                                       str(data_dir), "--row", out.name], timeout=timeout,
                                      preexec_fn=limit, capture_output=True, text=True)
                text = Path(out.name).read_text()
                row = json.loads(text) if text else {
                    "stages": {}, "error": f"exit {proc.returncode}: "
                    f"{(proc.stderr.strip().splitlines() or ['no output'])[-1][:300]}"}
            except subprocess.TimeoutExpired:
                row = {"stages": {}, "error": f"timed out after {timeout:.0f} s"}
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        results.save(ref, row, show=f"{ref}: {summary(row)}")


def summary(row: dict) -> str:
    """One line: the stages that passed, or the first failure."""
    if "error" in row:
        return f"error: {row['error']}"
    bad = [f"{s}: {v['reason']}" for s, v in row["stages"].items() if not v["ok"]]
    return "all stages ok" if not bad and len(row["stages"]) == len(STAGES) else "; ".join(bad)


MIN_CUT = 0.01
"""A prune stage that removes less of the MACs than this cut nothing worth the name (every
layer protected but a few channels): the row does not count as a pass."""


def passed(row: dict) -> bool:
    cut = row["stages"].get("prune", {}).get("macs_cut")
    return "error" not in row and len(row["stages"]) == len(STAGES) and all(
        v["ok"] for v in row["stages"].values()) and (cut is None or cut >= MIN_CUT)


def table(refs: list[str]) -> str:
    """The matrix as markdown: one row per model, one column per stage, pass rates."""
    data = ResultsFile(RESULTS).data
    lines = ["| model | px | BN statistics | " + " | ".join(STAGES) + " |",
             "|---|---|---|" + "---|" * len(STAGES)]
    for ref in refs:
        row = data.get(ref)
        if row is None:
            lines.append(f"| {ref} | | | " + " | ".join(["not run (time)"] * len(STAGES))
                         + " |")
            continue
        cells = []
        for stage in STAGES:
            v = row["stages"].get(stage)
            if v is None:
                cells.append(row.get("error", "-")[:120] if stage == "prune" else "-")
            elif v["ok"]:
                cut = v.get("macs_cut")
                cells.append("ok" if cut is None else f"ok (-{cut:.0%} FLOPs)" if cut >= MIN_CUT
                             else f"**cuts nothing** (-{cut:.2%} FLOPs: the rest is protected)")
            else:
                cells.append("**fails**: " + v["reason"].replace("|", "/")[:160])
        stats = "from data" if row.get("bn") == "recalibrated" else "initial"
        lines.append(f"| {ref} | {row.get('size', '')} | {stats} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rates(refs: list[str]) -> str:
    """Pass rates per library, over the models run and over all."""
    data = ResultsFile(RESULTS).data
    out = []
    for lib in ("torchvision", "timm"):
        mine = [r for r in refs if r.startswith(lib + ":")]
        ran = [r for r in mine if r in data]
        ok = [r for r in ran if passed(data[r])]
        out.append(f"- {lib}: {len(ok)} of {len(ran)} run pass every stage; "
                   f"{len(ran)} of {len(mine)} were run ({len(ok)}/{len(mine)} of all).")
    return "\n".join(out)


def write_doc(refs: list[str]) -> None:
    """Replace the matrix section of docs/MODELS.md (between its markers)."""
    start, end = "<!-- matrix:start -->", "<!-- matrix:end -->"
    refs = sorted(refs, key=lambda r: (not r.startswith("torchvision:"), r))  # by name
    body = (f"{start}\nMade by `{COMMAND}` then `python benchmarks/bench_models.py --table` "
            f"(results: `benchmarks/results/models.json`).\n\n{rates(refs)}\n\n"
            f"{table(refs)}\n{end}")
    text = DOC.read_text()
    if start in text:
        text = text[:text.index(start)] + body + text[text.index(end) + len(end):]
    else:
        text += "\n## Compatibility matrix\n\n" + body + "\n"
    DOC.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("torchvision", "timm"))
    parser.add_argument("--models", help="comma-separated library:name references to run, in "
                        "this order (those already in the results file are skipped)")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--memory-gb", type=float, default=12.0)
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--child")
    parser.add_argument("--row", type=Path)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.data_dir, args.row)
    refs = models(args.only)
    if args.models:
        refs = [r.strip() for r in args.models.split(",") if r.strip()]
        unknown = sorted(set(refs) - set(models(None)))
        if unknown:
            parser.error(f"not in the matrix: {', '.join(unknown)}")
    if args.table:
        return write_doc(models(None))
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir
        if data_dir is None:
            from imagetree import make_tree

            data_dir = make_tree(Path(tmp) / "imgs", per_class=40, size=(72, 72))
        run_all(refs, args.timeout, args.memory_gb, data_dir)


if __name__ == "__main__":
    main()
