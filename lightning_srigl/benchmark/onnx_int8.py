"""The int8 ONNX models the peer benchmark gives the int8 engines, made from the masked dense model's fp32 export.

* `quantize_dynamic_int8`: ONNX Runtime's dynamic quantization (``quantize_dynamic``, QInt8 weights per
  tensor, activations quantized per call), what ``onnxruntime_int8`` runs;
* `quantize_static_int8`: ONNX Runtime's static quantization in operator format (every MatMul, Gemm and Conv
  becomes ``QLinearMatMul``/``QLinearConv``: int8 weights, u8 activations calibrated (min/max) on a few
  batches), what ``deepsparse_int8`` runs: DeepSparse 1.8 runs this form on its sparse int8 kernels, while it
  aborts on the dynamic form and runs the QDQ form (``QuantizeLinear``/``DequantizeLinear`` pairs) much slower;
* `relative_l2`: the error measure the int8 engines are checked with (`INT8_TOLERANCE`), since
  none of them is exact.

Both quantizers keep the IR version DeepSparse's onnx reads (`ONNX_IR_VERSION`). onnxruntime is imported
only when one is called.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from lightning_srigl.benchmark.peers import ONNX_IR_VERSION

__all__ = ["INT8_TOLERANCE", "quantize_dynamic_int8", "quantize_static_int8", "relative_l2"]

# Relative L2 error of an int8 engine's output against the masked dense fp32 model's that still counts as
# the same model (acceleration keeps each int8 layer within 0.02; the error compounds over the layers).
INT8_TOLERANCE = 0.05


def relative_l2(out: np.ndarray, reference: np.ndarray) -> float:
    """``||out - reference|| / ||reference||`` over every element (inf for other shapes)."""
    out, reference = np.asarray(out, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if out.shape != reference.shape:
        return float("inf")
    return float(np.linalg.norm(out - reference) / max(np.linalg.norm(reference), 1e-30))


def _keep_ir_version(path: Path) -> Path:
    import onnx

    proto = onnx.load(str(path))
    proto.ir_version = min(proto.ir_version, ONNX_IR_VERSION)
    onnx.save(proto, str(path))
    return path


def quantize_dynamic_int8(fp32: Path, out: Path) -> Path:
    """``fp32``'s ONNX Runtime dynamic int8 quantization (QInt8 weights) at ``out``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(fp32, out, weight_type=QuantType.QInt8)
    return _keep_ir_version(out)


def quantize_static_int8(fp32: Path, out: Path, batches: Sequence[Sequence[np.ndarray]]) -> Path:
    """``fp32`` statically quantized in operator format at ``out``: MatMul, Gemm and Conv with QInt8 weights (per
    tensor) and QUInt8 activations whose ranges are the min/max over ``batches`` (each the model's inputs)."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    names = [i.name for i in ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).get_inputs()]

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds: Iterator[dict[str, np.ndarray]] = (dict(zip(names, arrays)) for arrays in batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    quantize_static(
        fp32, out, Batches(), quant_format=QuantFormat.QOperator, op_types_to_quantize=["MatMul", "Gemm", "Conv"],
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
    )  # fmt: skip
    return _keep_ir_version(out)
