"""PyTorch to ONNX: torch's dynamo exporter, static shapes except an optional batch axis."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from pathlib import Path

import onnx
import onnx.numpy_helper

from runtime.artifact import MAX_BATCH

from .errors import ExportError

# The steps a decomposed LayerNormalization's nodes are named by: "<LayerNormalization node>/<step>".
LAYER_NORM_STEPS = ("mean", "centered", "squared", "variance", "shifted", "deviation", "normalized", "scaled", "biased")
MIN_OPSET = 16  # 16 writes LayerNormalization (opset 17) as primitive operators, for TensorRT 8.5 (JetPack 5)
TRACE_OPSET = 18  # torch's exporter writes 18 or later; older opsets are converted from its folded graph


def max_opset() -> int:
    """The newest opset the installed onnx knows (and so the newest this export can write)."""
    return onnx.defs.onnx_opset_version()


def trace(model, opset: int, batch: int | None, path: Path) -> None:
    """Trace `model` to an ONNX graph at `opset` (MIN_OPSET..max_opset()) and write it to `path`, its weights to
    `<path>.data`: straight from the torch tensors, never held twice. `batch` None makes the batch axis
    dynamic, up to MAX_BATCH."""
    # Imported here, not above: the command line reads MIN_OPSET and max_opset() before it imports torch.
    import onnx_ir as ir
    import torch

    config = model.config
    examples = {"pixel_values": torch.zeros(batch or 2, config.in_chans, *config.input_size)}
    if "noise" in model.input_names:  # MAE's second input
        examples["noise"] = torch.rand(batch or 2, config.mask_units)
    batch_axis = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    dynamic = {name: {0: batch_axis} for name in examples} if batch is None else None
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(model, tuple(examples.values()), dynamo=True, opset_version=max(opset, TRACE_OPSET),
                                    input_names=list(examples), output_names=model.output_names,
                                    dynamic_shapes=dynamic, optimize=True, verbose=False)
        # Small constants (shapes, axes) stay in the graph, where the opset rewrite reads them.
        ir.save(program.model, path, external_data=f"{Path(path).name}.data", size_threshold_bytes=1024)
    # The exporter's graph values outlive the program (torch keeps some of them), and they hold the model's
    # parameters: let go of those, so that the weights are freed with the model.
    for value in program.model.graph.initializers.values():
        value.const_value = None
    del program
    graph = onnx.load(path, load_external_data=False)  # the structure only: the weights stay on disk
    for node in graph.graph.node:  # the exporter's notes: stack traces with this machine's paths in them
        del node.metadata_props[:]
    if opset < TRACE_OPSET:
        to_opset_17(graph)
    onnx.save_model(graph, path)


def to_onnx(model, opset: int, batch: int | None) -> onnx.ModelProto:
    """`trace`, returned as one in-memory graph (for tools and tests; the export works from files)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "traced.onnx"
        trace(model, opset, batch, path)
        return onnx.load(path)


def to_opset_17(model: onnx.ModelProto) -> None:
    """Rewrite, in place, the opset-18 forms this graph uses into their opset-13..17 forms: reductions other
    than ReduceSum take `axes` as an attribute instead of an input, and Split has no `num_outputs` (it splits evenly
    into its outputs). onnx's own version converter has no downgrade for Split."""
    constants = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type.startswith("Reduce") and len(node.input) > 1 \
                and "axes" in onnx.defs.get_schema(node.op_type, 17).attributes:  # ReduceSum took its input at 13
            axes = constants.get(node.input[1])
            if axes is None:
                raise ExportError(f"cannot write opset 17: node {node.name} ({node.op_type}) has computed axes")
            _drop_attribute(node, "noop_with_empty_axes")  # new in 18; moot with explicit axes
            node.attribute.append(onnx.helper.make_attribute("axes", onnx.numpy_helper.to_array(axes).tolist()))
            del node.input[1:]
        elif node.op_type == "Split":
            _drop_attribute(node, "num_outputs")
        elif onnx.defs.get_schema(node.op_type, TRACE_OPSET).since_version == TRACE_OPSET:
            raise ExportError(f"cannot write opset 17: node {node.name} uses the opset-18 form of {node.op_type}")
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = 17
    used = {name for node in model.graph.node for name in node.input}  # the axes moved into attributes
    for tensor in [t for t in model.graph.initializer if t.name not in used]:
        model.graph.initializer.remove(tensor)


def to_opset_16(model: onnx.ModelProto) -> None:
    """Rewrite, in place, an opset-17 graph as opset 16: each LayerNormalization (new in 17, and unknown to
    TensorRT 8.5's parser) becomes the primitive operators it is defined by, in its own input type (which
    the fp16 conversion keeps fp32: the squares would overflow in fp16)."""
    initializers = {t.name: t for t in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        if node.op_type != "LayerNormalization" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attributes.get("axis", -1) != -1 or len([o for o in node.output if o]) > 1:
            raise ExportError(f"cannot write opset 16: node {node.name} normalizes other than the last axis, or "
                              "uses the mean and inverse deviation outputs")
        x, scale, bias = (list(node.input) + [""])[:3]
        scale_type = initializers[scale].data_type if scale in initializers else onnx.TensorProto.FLOAT
        eps = f"{node.name}/epsilon"
        model.graph.initializer.append(onnx.helper.make_tensor(eps, scale_type, [], [attributes.get("epsilon", 1e-5)]))
        names = {step: f"{node.name}/{step}" for step in LAYER_NORM_STEPS}
        make = onnx.helper.make_node
        nodes += [
            make("ReduceMean", [x], [names["mean"]], axes=[-1], name=names["mean"]),
            make("Sub", [x, names["mean"]], [names["centered"]], name=names["centered"]),
            make("Mul", [names["centered"], names["centered"]], [names["squared"]], name=names["squared"]),
            make("ReduceMean", [names["squared"]], [names["variance"]], axes=[-1], name=names["variance"]),
            make("Add", [names["variance"], eps], [names["shifted"]], name=names["shifted"]),
            make("Sqrt", [names["shifted"]], [names["deviation"]], name=names["deviation"]),
            make("Div", [names["centered"], names["deviation"]], [names["normalized"]], name=names["normalized"]),
            make("Mul", [names["normalized"], scale], [names["scaled"] if bias else node.output[0]],
                 name=names["scaled"]),
        ]
        if bias:
            nodes.append(make("Add", [names["scaled"], bias], [node.output[0]], name=names["biased"]))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = 16


def _drop_attribute(node: onnx.NodeProto, name: str) -> None:
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept)


@contextlib.contextmanager
def _quiet():
    """The exporter logs and prints notes about its own internals (torchvision absent, passes run)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stdout(None):
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)
