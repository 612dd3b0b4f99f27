#!/usr/bin/env python3
"""Classify image files with the model shipped beside this script, on the device.

    python3 predict.py photo.jpg [more.png ...] [--model FILE] [--top 3] [--threads 4] [--json]

Needs numpy, Pillow and the model's runtime (ai-edge-litert or tflite-runtime for .tflite,
onnxruntime for .onnx and .ort), never torch or edgeprune. `runner.py` (loading the model) and
`preprocess.py` (turning an image file into the model's input exactly as its training data
was) ship in the same folder. The model's sidecar (`<file>.json`) gives the input size,
channels, normalization, layout and class labels. Errors are one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402 - after the folder joins the path
import preprocess  # noqa: E402
import runner  # noqa: E402

MODEL_SUFFIXES = (".tflite", ".onnx", ".ort")


def find_model(given: str | None) -> Path:
    """The --model file, else the one model file in this folder."""
    if given:
        return Path(given)
    found = sorted(p for p in HERE.iterdir() if p.suffix in MODEL_SUFFIXES)
    if len(found) != 1:
        raise runner.RunnerError(f"{HERE} holds {len(found)} model files; pass --model FILE")
    return found[0]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max())
    return z / z.sum()


def classify(model_path: Path, images: list[str], top: int, threads: int) -> list[dict]:
    """Top-`top` labels and probabilities for each image file."""
    sidecar = runner.read_sidecar(model_path)
    spec = sidecar.get("input_spec")
    if not spec:
        raise runner.RunnerError(f"{runner.sidecar_path(model_path).name} (the model's sidecar) "
                                 "is missing or has no input_spec")
    labels = spec.get("labels") or [str(i) for i in range(10_000)]
    c, h, w = spec["channels"], spec["height"], spec["width"]
    inputs = []
    for image in images:  # every file is read before the model loads
        try:
            inputs.append(preprocess.model_input(image, c, h, w, spec["mean"], spec["std"]))
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            raise runner.RunnerError(f"cannot read image {image}: {runner.first_line(e)}"
                                     ) from None
    session = runner.load_model(model_path, threads, seed=0)
    out = []
    for i, x in enumerate(inputs):  # (no zip(strict=): the script supports Python 3.8)
        batch, _ = runner.to_model_layout(x[None], session.inputs[0]["shape"],
                                          spec.get("layout", "NCHW"))
        probs = softmax(session.predict(np.ascontiguousarray(batch)).reshape(-1))
        best = np.argsort(-probs, kind="stable")[:top]
        out.append({"image": images[i], "top": [{"label": labels[k], "index": int(k),
                                                 "probability": float(probs[k])} for k in best]})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    p.add_argument("--model", help="the model file (default: the one in this folder)")
    p.add_argument("--top", type=int, default=1, help="how many classes to print per image")
    p.add_argument("--threads", type=int, default=1, help="inference threads")
    p.add_argument("--json", action="store_true", help="print JSON instead of lines")
    args = p.parse_args(argv)
    try:
        results = classify(find_model(args.model), args.images, max(1, args.top),
                           max(1, args.threads))
    except runner.RunnerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        best = ", ".join(f"{t['label']} {t['probability']:.1%}" for t in r["top"])
        print(f"{r['image']}: {best}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
