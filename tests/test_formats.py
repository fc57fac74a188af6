"""Every table of precisions is the registry's (runtime/formats.py): a table written out by hand somewhere, or a
registry record that a table leaves out, fails here, naming the table."""

# ruff: noqa: SIM300 (the table under test on the left, the registry it must equal on the right)
import importlib

import pytest

import runtime.artifact
from export import artifact, convert, hub, options, parity, pipeline
from export import openvino as export_openvino
from runtime.formats import COMPUTED, DEFAULT_PRECISIONS, FORMATS, PRECISIONS


def test_the_registry_is_consistent():
    assert PRECISIONS == tuple(FORMATS) and set(DEFAULT_PRECISIONS) <= set(PRECISIONS)
    suffixes = [kind.suffix for kind in FORMATS.values()]
    assert len(set(suffixes)) == len(suffixes), f"two kinds share a file suffix: {suffixes}"
    hub_files = [kind.hub_file for kind in FORMATS.values() if kind.hub_file]
    assert len(set(hub_files)) == len(hub_files), f"two kinds share a Hub file: {hub_files}"
    for name, kind in FORMATS.items():
        assert kind.source in ("optimized", "traced", "pytorch"), name
        if kind.source == "pytorch":  # an edge kind: a module of export/ converts it from the torch model
            module = importlib.import_module(f"export.{kind.converter}")
            assert callable(module.convert) and module.PACKAGE and module.EXTRA, f"{name}: export/{kind.converter}.py"
        else:
            assert kind.converter is None or callable(getattr(convert, kind.converter, None)), \
                f"{name}: export/convert.py has no {kind.converter}"
        assert kind.computes in ("fp32", "fp16", "int8", "qdq"), name
        (figure, bound), = kind.bound.items()
        assert figure in ("max_abs", "cosine") and 0 < bound <= 1, name
        assert artifact.FAMILY_SUFFIX.fullmatch(kind.suffix), f"{name}: {kind.suffix} is not a family file name"


@pytest.mark.parametrize("table, derived", [
    ("export.options.PRECISIONS", lambda: options.PRECISIONS == PRECISIONS),
    ("export.options.DEFAULT_PRECISIONS", lambda: options.DEFAULT_PRECISIONS == DEFAULT_PRECISIONS),
    ("export.pipeline.CONVERSIONS", lambda: pipeline.CONVERSIONS == {
        name: (kind.source, getattr(convert, kind.converter) if kind.converter else None)
        for name, kind in FORMATS.items() if kind.source != "pytorch"}),
    ("export.parity.THRESHOLDS", lambda: parity.THRESHOLDS == {name: kind.bound for name, kind in FORMATS.items()}),
    ("export.artifact.artifact_name", lambda: all(artifact.artifact_name("hiera_x_classify", name) ==
                                                  "hiera_x_classify" + kind.suffix for name, kind in FORMATS.items())),
    ("export.artifact.computes", lambda: all(artifact.computes(name) == kind.computes
                                             for name, kind in FORMATS.items())),
    ("export.hub.ONNX_FILES", lambda: hub.ONNX_FILES == {name: kind.hub_file for name, kind in FORMATS.items()
                                                         if kind.hub_file}),
    ("export.hub.RUNS_IN", lambda: hub.RUNS_IN == {name: kind.runs_in for name, kind in FORMATS.items()}),
    ("runtime.artifact.PRECISIONS", lambda: runtime.artifact.PRECISIONS == COMPUTED),
    ("export.openvino.BOUNDS", lambda: set(export_openvino.BOUNDS.values()) <= set(FORMATS)),
])
def test_every_table_is_derived_from_the_registry(table, derived):
    assert derived(), f"{table} is not what runtime/formats.py's FORMATS says"


def test_the_bounds_are_the_documented_ones():
    """docs/architecture.md "What a verdict means": pinned, so that no bound loosens unnoticed."""
    assert {name: kind.bound for name, kind in FORMATS.items()} == {
        "fp32": {"max_abs": 1e-4}, "fp16": {"cosine": 0.999}, "int8": {"cosine": 0.99}, "qdq": {"cosine": 0.99},
        "openvino": {"max_abs": 1e-4}, "litert": {"max_abs": 1e-4}, "litert-fp16": {"cosine": 0.999},
        "litert-int8": {"cosine": 0.99}, "executorch": {"max_abs": 1e-4}, "executorch-int8": {"cosine": 0.99},
        "coreml": {"max_abs": 1e-4}, "coreml-fp16": {"cosine": 0.999}}
