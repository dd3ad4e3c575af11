"""Turn the int8 (QDQ) SSCD ONNX graph into a differentiable torch module, in memory only.

The weights are never written to disk (the ONNX package's licence forbids redistributing modified
copies). Rewrite rules on the graph, then onnx2torch converts the float graph:

* weight ``DequantizeLinear(int8 initialiser)`` -> a float32 initialiser (exactly the dequantised values);
* activation ``QuantizeLinear -> DequantizeLinear`` pairs ->
  ``ste``: the exact uint8 fake-quantisation forward, straight-through gradient (default; matches
  onnxruntime at cosine ~0.999), or ``relu``: ReLU where the zero point is 0 (ONNX Runtime fused the
  ResNet ReLU into the uint8 quantiser), identity elsewhere (cosine ~0.99, about 1.5x faster);
* the uint8 input ``Cast`` is dropped: the module takes float NHWC in [0, 255].
"""
from __future__ import annotations

import os
import sys
import types

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from .config import TORCH_MODES

__all__ = ["TORCH_MODES", "onnx_to_torch"]

_CUSTOM_DOMAIN = "activeindex"


class FakeQuantU8(torch.nn.Module):
    """uint8 quantise-dequantise with a straight-through gradient (zero outside the range)."""

    def __init__(self, scale: float, zero_point: int):
        super().__init__()
        self.scale, self.zero_point = scale, zero_point

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = torch.clamp(x / self.scale + self.zero_point, 0.0, 255.0)
        q = q + (torch.round(q) - q).detach()
        return (q - self.zero_point) * self.scale


def _dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int | None) -> np.ndarray:
    """DequantizeLinear on an initialiser, per tensor or per channel."""
    q, zero_point = q.astype(np.float32), zero_point.astype(np.float32)
    if scale.ndim == 1 and q.ndim > 1:
        shape = [1] * q.ndim
        shape[1 if axis is None else axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    return ((q - zero_point) * scale).astype(np.float32)


def _activation_node(x: str, out: str, scale: float, zero_point: int, mode: str) -> onnx.NodeProto:
    """The float stand-in for one activation quantise-dequantise pair."""
    if mode == "ste":
        return helper.make_node("FakeQuantU8", [x], [out], domain=_CUSTOM_DOMAIN, scale=scale, zero_point=zero_point)
    return helper.make_node("Relu" if zero_point == 0 else "Identity", [x], [out])


def float_graph(model: onnx.ModelProto, mode: str) -> onnx.ModelProto:
    """The QDQ graph rewritten as a float graph (see the module docstring)."""
    graph = model.graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    weights: dict[str, np.ndarray] = {}
    quantized: dict[str, tuple[str, float, int]] = {}
    renames: dict[str, str] = {}
    nodes: list[onnx.NodeProto] = []
    for n in graph.node:
        if n.op_type == "Cast" and n.input[0] == "image":
            renames[n.output[0]] = "image"
        elif n.op_type == "DequantizeLinear" and n.input[0] in init:
            axis = next((a.i for a in n.attribute if a.name == "axis"), None)
            weights[n.output[0]] = _dequantize(*(init[i] for i in n.input[:3]), axis)
        elif n.op_type == "QuantizeLinear":
            quantized[n.output[0]] = (n.input[0], float(init[n.input[1]]), int(init[n.input[2]]))
        elif n.op_type == "DequantizeLinear" and n.input[0] in quantized:
            x, scale, zero_point = quantized[n.input[0]]
            nodes.append(_activation_node(x, n.output[0], scale, zero_point, mode))
        else:
            nodes.append(n)
    for n in nodes:
        while n.input and n.input[-1] == "":  # onnx2torch's Clip rejects an empty optional input
            n.input.pop()
        n.input[:] = [renames.get(i, i) for i in n.input]
    used = {i for n in nodes for i in n.input}
    initializers = [numpy_helper.from_array(v, k) for k, v in (init | weights).items() if k in used]
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", "height", "width", 3])
    out = helper.make_graph(nodes, graph.name + "_float", [image], list(graph.output), initializers)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(_CUSTOM_DOMAIN, 1)]
    return helper.make_model(out, opset_imports=opsets, ir_version=8)


def _import_onnx2torch():
    """onnx2torch imports torchvision (for NMS / RoIAlign only), which does not load beside torch 2.13 CPU.

    A stub stands in for it while onnx2torch is imported; any use of those two ops raises.
    """
    if "torchvision" not in sys.modules:
        try:
            import torchvision  # noqa: F401
        except Exception:  # noqa: BLE001 - it fails with RuntimeError, ImportError or OSError
            for name in [k for k in sys.modules if k.startswith("torchvision")]:
                del sys.modules[name]
            stub, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")

            def _unavailable(*args, **kwargs):
                raise RuntimeError("torchvision is not available in this environment")

            ops.nms = ops.roi_align = ops.box_convert = _unavailable
            stub.ops = ops
            sys.modules.update({"torchvision": stub, "torchvision.ops": ops})
    import onnx2torch
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription, add_converter
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult

    if OperationDescription(domain=_CUSTOM_DOMAIN, operation_type="FakeQuantU8", version=1) not in _CONVERTER_REGISTRY:

        @add_converter(operation_type="FakeQuantU8", version=1, domain=_CUSTOM_DOMAIN)
        def _convert(node, graph):
            a = node.attributes
            return OperationConverterResult(
                torch_module=FakeQuantU8(float(a["scale"]), int(a["zero_point"])),
                onnx_mapping=OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values),
            )

    return onnx2torch


def onnx_to_torch(path: str | os.PathLike, mode: str = "ste") -> torch.nn.Module:
    """Convert an int8 QDQ ONNX descriptor model into a torch module, in memory.

    Args:
        path: the ``.onnx`` file (input uint8 NHWC RGB 0-255, normalisation inside the graph).
        mode: ``"ste"`` or ``"relu"`` (module docstring).

    Returns:
        a module in eval mode mapping float NHWC in [0, 255] to the graph's output.
    """
    if mode not in TORCH_MODES:
        raise ValueError(f"unknown conversion mode {mode!r}; expected one of {TORCH_MODES}")
    onnx2torch = _import_onnx2torch()
    quantized = onnx.load(str(path))
    graph = float_graph(quantized, mode)
    # shape inference cannot see through the custom op: borrow the shapes of the all-standard graph
    graph.graph.value_info.extend(onnx.shape_inference.infer_shapes(float_graph(quantized, "relu")).graph.value_info)
    return onnx2torch.convert(graph).eval()
