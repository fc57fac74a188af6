"""TensorRT engines from the exported ONNX: the plan in plain Python, the calls into `tensorrt` kept thin.

Reduced precision is built the way TensorRT's own guidance for transformers now goes: a strongly typed
network parsed from our mixed-precision fp16 artifact (matmuls in fp16; LayerNorm, Softmax and the
reductions in fp32, as the graph says), because a plain fp16 build lets LayerNorm overflow. TensorRT
before 10 has no strongly typed networks; there the fallback is the weakly typed build of the fp32
graph with the fp16 flag and those layers constrained to fp32. int8 is explicit quantization: the
calibrated QDQ artifact (`--precision qdq`), with the INT8 flag (and FP16 for `best`, norms in fp32).
Everything but `build` runs without TensorRT (and is tested here); `build` needs `tensorrt` and a GPU.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx

from runtime import files
from runtime.artifact import make_sidecar, write_sidecar
from runtime.errors import FileError
from runtime.tensorrt import this_gpu

from .artifact import load_graph
from .errors import ExportError
from .onnx_export import LAYER_NORM_STEPS

ENGINE_PRECISIONS = ("fp32", "fp16", "bf16", "int8", "best", "fp8")
# What each precision builds from (fp16 from the fp16 artifact on TensorRT 10), and its builder flags.
SOURCES = {"fp32": "fp32", "fp16": "fp32", "bf16": "fp32", "int8": "qdq", "best": "qdq"}
FLAGS = {"fp32": [], "fp16": ["FP16"], "bf16": ["BF16"], "int8": ["INT8"], "best": ["INT8", "FP16"]}
TIMING_CACHE_BYTES = 1 << 30
FP32_OP_TYPES = {"LayerNormalization", "Softmax", "ReduceMean", "Sqrt", "Div", "Pow"}  # norms and their parts


@dataclass(frozen=True)
class EngineOptions:
    precision: str = "fp16"
    max_batch: int = 8  # the profile's largest batch (dynamic-batch graphs)
    workspace_gb: float = 4.0
    timing_cache: Path | None = None
    hardware_compatible: bool = False  # runs on any GPU from Ampere on, slightly slower
    version_compatible: bool = False  # runs on later TensorRT releases of the same major version


@dataclass
class Plan:
    """What to build and how: everything `build` and `trtexec_command` need, decided without TensorRT."""
    source: str  # the ONNX artifact the engine is built from
    precision: str
    strongly_typed: bool
    flags: list[str]  # BuilderFlag names
    fp32_layers: list[str] = field(default_factory=list)  # weakly typed builds: layers kept in fp32
    profile: dict | None = None  # input name -> {"min", "opt", "max"} shapes, for a dynamic batch
    workspace_gb: float = 4.0
    timing_cache: str | None = None
    hardware_compatible: bool = False
    version_compatible: bool = False


def plan(artifacts: dict[str, Path], models: dict[str, onnx.ModelProto], options: EngineOptions,
         trt_version: str) -> Plan:
    """Choose the source graph, the network typing and the builder flags for `options` on TensorRT `trt_version`.

    `artifacts`/`models`: the exported files and graphs by precision. The source must be a standard-op
    graph: TensorRT cannot parse onnxruntime's fused operators."""
    if options.precision not in ENGINE_PRECISIONS:
        raise ExportError(f"engine precision {options.precision}: choose from {', '.join(ENGINE_PRECISIONS)}",
                          "engine.precision")
    if options.precision == "fp8":
        raise ExportError("engine precision fp8: needs an FP8 Q/DQ graph, which this export does not write (NVIDIA "
                          "ModelOpt does; build it with trtexec); use fp16, or int8 from the qdq artifact",
                          "engine.precision")
    major = int(trt_version.split(".")[0])
    strongly_typed = options.precision == "fp16" and major >= 10
    source = "fp16" if strongly_typed else SOURCES[options.precision]
    if source not in artifacts:
        how = " with calibration images" if source == "qdq" else ""
        raise ExportError(f"engine precision {options.precision} builds from the {source} artifact: add {source} "
                          f"to the precisions{how}", "precisions")
    graph = models[source]
    fused = [n.op_type for n in graph.graph.node if n.domain not in ("", "ai.onnx")]
    if fused:
        raise ExportError(f"engine precision {options.precision} builds from the {source} graph, which has "
                          f"onnxruntime's fused {fused[0]}: export it without optimization", "optimize")
    flags = [] if strongly_typed else list(FLAGS[options.precision])
    fp32_layers = []
    if {"FP16", "BF16"} & set(flags):  # weakly typed 16-bit floats: keep the normalizations and softmax in fp32
        flags.append("OBEY_PRECISION_CONSTRAINTS")
        fp32_layers = [n.name for n in graph.graph.node if n.op_type in FP32_OP_TYPES or _layer_norm_step(n.name)]
    if options.version_compatible:
        flags.append("VERSION_COMPATIBLE")
    return Plan(source=str(artifacts[source]), precision=options.precision, strongly_typed=strongly_typed,
                flags=flags, fp32_layers=fp32_layers, profile=profile(graph, options.max_batch),
                workspace_gb=options.workspace_gb,
                timing_cache=str(options.timing_cache) if options.timing_cache else None,
                hardware_compatible=options.hardware_compatible, version_compatible=options.version_compatible)


def _layer_norm_step(node_name: str) -> bool:
    """A node of a LayerNormalization that `--opset 16` wrote as primitive operators."""
    return "/" in node_name and node_name.rpartition("/")[2] in LAYER_NORM_STEPS


def profile(graph: onnx.ModelProto, max_batch: int) -> dict | None:
    """min/opt/max shapes of each input (`pixel_values`, and MAE's `noise`) for a dynamic batch (opt: the
    middle of the range, where most serving batches fall); None for a static one."""
    if graph.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value"):
        return None
    shapes = {}
    for graph_input in graph.graph.input:
        rest = [d.dim_value for d in graph_input.type.tensor_type.shape.dim[1:]]
        shapes[graph_input.name] = {"min": [1, *rest], "opt": [max(1, (max_batch + 1) // 2), *rest],
                                    "max": [max_batch, *rest]}
    return shapes


def trtexec_command(p: Plan, engine: Path) -> str:
    """The same build with NVIDIA's `trtexec`, for devices where it is built in place (Jetson)."""
    args = ["trtexec", f"--onnx={Path(p.source).name}", f"--saveEngine={engine.name}",
            f"--memPoolSize=workspace:{int(p.workspace_gb * 1024)}M"]
    if p.strongly_typed:
        args.append("--stronglyTyped")
    args += [f"--{flag.lower()}" for flag in p.flags if flag in ("FP16", "BF16", "INT8")]
    if p.fp32_layers:
        args += ["--precisionConstraints=obey", "--layerPrecisions=" + ",".join(f"{n}:fp32" for n in p.fp32_layers)]
    if p.profile:
        for key in ("min", "opt", "max"):
            args.append(f"--{key}Shapes=" + ",".join(f"{name}:" + "x".join(map(str, shapes[key]))
                                                     for name, shapes in p.profile.items()))
    if p.timing_cache:
        args.append(f"--timingCacheFile={p.timing_cache}")
    if p.hardware_compatible:
        args.append("--hardwareCompatibilityLevel=ampere+")
    if p.version_compatible:
        args.append("--versionCompatible")
    return shlex.join(args)


def sidecar(p: Plan, engine: Path, *, tensorrt_version: str, gpu: str, compute_capability: str,
            metadata: dict[str, str]) -> dict:
    """What the runtime checks before it loads an engine (runtime/tensorrt.py reads it)."""
    build = {"built_by": "python -m export", "precision": p.precision, "strongly_typed": p.strongly_typed,
             "profile": p.profile, "hardware_compatible": p.hardware_compatible,
             "version_compatible": p.version_compatible, "plan": asdict(p)}
    return make_sidecar(engine, Path(p.source), metadata, tensorrt_version=tensorrt_version, gpu=gpu,
                        compute_capability=compute_capability, build=build)


def tensorrt_version() -> str | None:
    try:
        import tensorrt
    except ImportError:
        return None
    return tensorrt.__version__


def build(p: Plan, engine: Path) -> dict:  # pragma: no cover - needs TensorRT and a GPU
    """Build `engine` with TensorRT and write it, its sidecar and the updated timing cache; returns the sidecar."""
    import tensorrt as trt
    from cuda.bindings import runtime as cudart

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if p.strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    if int(trt.__version__.split(".")[0]) < 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(p.source):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"{p.source}: TensorRT's ONNX parser refused it ({errors})")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(p.workspace_gb * 2**30))
    for flag in p.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    fp32 = set(p.fp32_layers)
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.name in fp32 or any(layer.name.startswith(f"{name}_") for name in fp32):
            layer.precision = trt.float32
            for output in range(layer.num_outputs):
                layer.set_output_type(output, trt.float32)
    if p.profile:
        shapes = builder.create_optimization_profile()
        for name, limits in p.profile.items():
            shapes.set_shape(name, limits["min"], limits["opt"], limits["max"])
        config.add_optimization_profile(shapes)
    if p.hardware_compatible:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    cache = config.create_timing_cache(read_timing_cache(p))
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"{p.source}: TensorRT could not build an engine (see its log above)")
    gpu, capability = this_gpu(cudart)
    return save_build(p, engine, bytes(serialized), bytes(config.get_timing_cache().serialize()),
                      tensorrt_version=trt.__version__, gpu=gpu, compute_capability=capability)


def read_timing_cache(p: Plan) -> bytes:
    """The timing cache to start from: the file's, or none yet."""
    if not p.timing_cache or not Path(p.timing_cache).exists():
        return b""
    try:
        return files.read_bytes(p.timing_cache, TIMING_CACHE_BYTES)
    except FileError as error:
        raise ExportError(str(error), "engine.timing_cache") from None


def save_build(p: Plan, engine: Path, serialized: bytes, timing_cache: bytes, *, tensorrt_version: str, gpu: str,
               compute_capability: str) -> dict:
    """Write what a build made, each file atomically: the engine, its sidecar, and the timing cache (a file the
    user keeps between builds, so a failed write must leave the old one whole). Returns the sidecar."""
    try:
        files.write_bytes(engine, serialized)
        if p.timing_cache:
            files.write_bytes(p.timing_cache, timing_cache)
        metadata = {m.key: m.value for m in load_graph(p.source, weights=False).metadata_props}
        data = sidecar(p, engine, tensorrt_version=tensorrt_version, gpu=gpu, compute_capability=compute_capability,
                       metadata=metadata)
        write_sidecar(engine, data)
    except FileError as error:
        raise ExportError(str(error)) from None
    return data
