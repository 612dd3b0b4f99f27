"""Latency estimates for a target from its profile: a roofline per model, counted from the file.

compute time = FLOPs / (peak_gflops x threads/cores x efficiency[precision]),
memory time  = bytes moved / mem_bandwidth_gbs, estimate = the larger of the two.

FLOPs are 2 x the multiply-accumulates of the convolutions and matrix products (the ops
that dominate a CNN); bytes moved are the weights read once plus every activation written
once and read once. `efficiency` is calibrated per target against published whole-network
latencies (see each target JSON's `calibration` and docs/DEVICES.md). An estimate is always
labelled `estimate` and kept apart from measurements.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from math import prod
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgeprune.devices.targets import TargetProfile
from edgeprune.errors import EdgepruneError

INT8_DTYPES = (np.int8, np.uint8)


@dataclass(frozen=True)
class ModelCost:
    """What one inference of a model file asks of the hardware, counted from the file."""

    macs: int
    weight_bytes: int
    activation_bytes: int
    precision: str
    """Compute precision of most MACs: 'int8' (quantized kernels) or 'fp32'."""
    ops: int
    uncounted_ops: int = 0
    """Conv/MatMul ops whose shapes were unknown, so their MACs are missing."""

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def bytes_moved(self) -> int:
        return self.weight_bytes + 2 * self.activation_bytes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"flops": self.flops, "bytes_moved": self.bytes_moved}


@dataclass(frozen=True)
class Estimate:
    """The roofline latency of one model on one target; never a measurement."""

    target: str
    threads: int
    precision: str
    latency_ms: float
    compute_ms: float
    memory_ms: float
    bound: Literal["compute", "memory"]
    efficiency: float
    macs: int
    bytes_moved: int
    label: Literal["estimate"] = "estimate"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate_latency(cost: ModelCost, target: TargetProfile,
                     threads: int | None = None) -> Estimate:
    """Roofline estimate of `cost` on `target` with `threads` threads (default: the target's
    own thread count, where its efficiency was calibrated); the peak scales with
    threads/cores."""
    threads = max(1, min(threads or target.threads, target.cores))
    efficiency = target.efficiency[cost.precision]
    peak_flops = target.peak_gflops * 1e9 * threads / target.cores
    compute_ms = cost.flops / (peak_flops * efficiency) * 1e3
    memory_ms = cost.bytes_moved / (target.mem_bandwidth_gbs * 1e9) * 1e3
    return Estimate(
        target=target.name, threads=threads, precision=cost.precision,
        latency_ms=max(compute_ms, memory_ms), compute_ms=compute_ms, memory_ms=memory_ms,
        bound="compute" if compute_ms >= memory_ms else "memory", efficiency=efficiency,
        macs=cost.macs, bytes_moved=cost.bytes_moved)


def count_model(path: Path | str) -> ModelCost:
    """MACs, weight and activation bytes of a .onnx or .tflite file."""
    path = Path(path)
    counters = {".onnx": count_onnx, ".tflite": count_tflite}
    if path.suffix.lower() not in counters:
        raise EdgepruneError(f"cannot count {path.name}: expected a .onnx or .tflite file")
    if not path.is_file():
        raise EdgepruneError(f"model file not found: {path}")
    try:
        return counters[path.suffix.lower()](path)
    except EdgepruneError:
        raise
    except Exception as e:  # a model the parsers cannot read
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise EdgepruneError(f"cannot count the operations of {path.name}: {reason}") from None


def estimate_model(path: Path | str, target: TargetProfile,
                   threads: int | None = None) -> tuple[ModelCost, Estimate]:
    """Count a model file and estimate it on `target`."""
    cost = count_model(path)
    return cost, estimate_latency(cost, target, threads)


class _Tally:
    """MACs split by compute precision, plus the count of heavy ops without shapes."""

    def __init__(self) -> None:
        self.macs = {"fp32": 0, "int8": 0}
        self.heavy_ops = 0
        self.uncounted = 0

    def add(self, macs: int | None, int8: bool) -> None:
        self.heavy_ops += 1
        if macs is None:
            self.uncounted += 1
        else:
            self.macs["int8" if int8 else "fp32"] += macs

    def cost(self, weight_bytes: int, activation_bytes: int, ops: int) -> ModelCost:
        precision = "int8" if self.macs["int8"] > self.macs["fp32"] else "fp32"
        return ModelCost(macs=sum(self.macs.values()), weight_bytes=weight_bytes,
                         activation_bytes=activation_bytes, precision=precision, ops=ops,
                         uncounted_ops=self.uncounted)


def _numel(shape: Iterable[int] | None) -> int | None:
    return None if shape is None else int(prod(max(int(d), 1) for d in shape))


# ---------------------------------------------------------------------------------- ONNX

ONNX_WEIGHT_INPUT = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3, "ConvTranspose": 1,
                     "Gemm": 1, "MatMul": 1, "MatMulInteger": 1, "QLinearMatMul": 3}
ONNX_INT8_OPS = {"ConvInteger", "QLinearConv", "MatMulInteger", "QLinearMatMul"}


def count_onnx(path: Path) -> ModelCost:
    """Walk the graph after ONNX shape inference; constants are initializers, Constant nodes
    and anything computed from constants only (e.g. DequantizeLinear of int8 weights)."""
    import onnx
    from onnx import helper, shape_inference

    model = onnx.load(str(path), load_external_data=False)
    with contextlib.suppress(Exception):  # if inference fails, count what has shapes
        model = shape_inference.infer_shapes(model)
    graph = model.graph

    def itemsize(elem_type: int) -> int:
        try:
            return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize
        except Exception:  # strings and other non-numeric types
            return 0

    shapes: dict[str, tuple[list[int], int]] = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        t = info.type.tensor_type
        if t.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else 1 for d in t.shape.dim]
            shapes[info.name] = (dims, t.elem_type)
    weight_bytes = 0
    const: set[str] = {""}
    for init in graph.initializer:
        shapes[init.name] = (list(init.dims), init.data_type)
        weight_bytes += _numel(init.dims) * itemsize(init.data_type)
        const.add(init.name)
    producers = {}
    activation_bytes = sum(_numel(shapes[i.name][0]) * itemsize(shapes[i.name][1])
                           for i in graph.input if i.name not in const and i.name in shapes)
    tally = _Tally()
    for node in graph.node:
        for out in node.output:
            producers[out] = node
        if node.op_type == "Constant" or all(i in const for i in node.input):
            const.update(node.output)
            if node.op_type == "Constant" and node.attribute and node.attribute[0].t.dims:
                t = node.attribute[0].t
                weight_bytes += _numel(t.dims) * itemsize(t.data_type)
            continue
        for out in node.output:
            if out in shapes:
                activation_bytes += _numel(shapes[out][0]) * itemsize(shapes[out][1])
        if node.op_type in ONNX_WEIGHT_INPUT:
            tally.add(*_onnx_macs(node, shapes, producers))
    return tally.cost(weight_bytes, activation_bytes, ops=len(graph.node))


def _onnx_macs(node: Any, shapes: dict[str, tuple[list[int], int]],
               producers: dict[str, Any]) -> tuple[int | None, bool]:
    """MACs of one Conv/Gemm/MatMul-like node and whether it runs in int8."""
    op = node.op_type
    w_name = node.input[ONNX_WEIGHT_INPUT[op]]
    w = shapes.get(w_name, (None, 0))[0]
    out = shapes.get(node.output[0], (None, 0))[0]
    a = shapes.get(node.input[0], (None, 0))[0]
    dequantized = getattr(producers.get(w_name), "op_type", "") == "DequantizeLinear"
    int8 = op in ONNX_INT8_OPS or dequantized
    if w is None or out is None or (op in ("MatMul", "MatMulInteger", "QLinearMatMul", "Gemm")
                                    and a is None):
        return None, int8
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        return _numel(out) * _numel(w[1:]), int8
    if op == "ConvTranspose":
        return _numel(a) * _numel(w[1:]) if a is not None else None, int8
    if op == "Gemm":
        trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
        return _numel(out) * int(a[0] if trans_a else a[-1]), int8
    return _numel(out) * int(a[-1]), int8


# -------------------------------------------------------------------------------- TFLite

TFLITE_HEAVY = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL",
                "TRANSPOSE_CONV")


def count_tflite(path: Path) -> ModelCost:
    """Read tensor shapes and the op list from the interpreter (no tensors allocated)."""
    from edgeprune.devices.runner import RunnerError, _tflite_interpreter

    try:
        interpreter_class, _, _ = _tflite_interpreter()
    except RunnerError as e:
        raise EdgepruneError(str(e)) from None
    interpreter = interpreter_class(model_path=str(path))
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()
    produced = {int(i) for op in ops for i in op["outputs"]}
    graph_inputs = {d["index"] for d in interpreter.get_input_details()}
    const = {i for i in tensors if i not in produced and i not in graph_inputs}

    def nbytes(i: int) -> int:
        t = tensors[i]
        return _numel(t["shape"]) * np.dtype(t["dtype"]).itemsize

    weight_bytes = sum(nbytes(i) for i in const)
    activation_bytes = sum(nbytes(i) for i in graph_inputs)
    tally = _Tally()
    for op in ops:
        inputs = [int(i) for i in op["inputs"] if int(i) >= 0]
        if all(i in const for i in inputs):  # e.g. DEQUANTIZE of fp16 weights: still weights
            const.update(int(i) for i in op["outputs"])
            continue
        activation_bytes += sum(nbytes(int(i)) for i in op["outputs"])
        if op["op_name"] in TFLITE_HEAVY:
            tally.add(_tflite_macs(op["op_name"], inputs, [int(i) for i in op["outputs"]],
                                   tensors), _tflite_int8(inputs, tensors))
    return tally.cost(weight_bytes, activation_bytes, ops=len(ops))


def _tflite_int8(inputs: list[int], tensors: dict[int, dict]) -> bool:
    """Quantized kernels run when the weights (input 1 of every heavy op) are 8-bit."""
    return np.dtype(tensors[inputs[1]]["dtype"]).type in INT8_DTYPES


def _tflite_macs(name: str, inputs: list[int], outputs: list[int],
                 tensors: dict[int, dict]) -> int:
    """MACs of one heavy TFLite op (shapes are NHWC; filters OHWI, depthwise 1HWC)."""
    out = tensors[outputs[0]]["shape"]
    if name == "CONV_2D":
        return _numel(out) * _numel(tensors[inputs[1]]["shape"][1:])
    if name == "DEPTHWISE_CONV_2D":
        return _numel(out) * _numel(tensors[inputs[1]]["shape"][1:3])
    if name == "TRANSPOSE_CONV":  # inputs: output shape, weights (O, H, W, I), input
        return _numel(tensors[inputs[2]]["shape"]) * _numel(tensors[inputs[1]]["shape"][:3])
    return _numel(out) * int(tensors[inputs[0]]["shape"][-1])  # FULLY_CONNECTED, BATCH_MATMUL
