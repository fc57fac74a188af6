"""Every verdict's failing side: the bounds are pinned, an output just past a bound fails, and NaN, Inf,
a missing or misshapen output can never pass, whatever the output (logits, features, maps, MAE)."""

import json

import numpy as np
import pytest

from export.parity import THRESHOLDS, compare, failures

PINNED = {"fp32": {"max_abs": 1e-4}, "fp16": {"cosine": 0.999}, "int8": {"cosine": 0.99}, "qdq": {"cosine": 0.99},
          "openvino": {"max_abs": 1e-4}, "litert": {"max_abs": 1e-4}, "litert-fp16": {"cosine": 0.999},
          "litert-int8": {"cosine": 0.99}, "executorch": {"max_abs": 1e-4}, "executorch-int8": {"cosine": 0.99},
          "coreml": {"max_abs": 1e-4}, "coreml-fp16": {"cosine": 0.999}}
# One reference per output kind: a classifier, a feature extractor, a backbone, an MAE model.
KINDS = {
    "logits": {"logits": (4, 10)},
    "features": {"last_hidden_state": (4, 6, 8), "pooler_output": (4, 8)},
    "maps": {"stage1": (4, 8, 4, 4), "stage2": (4, 16, 2, 2)},
    "mae": {"logits": (4, 12, 48), "bool_masked_pos": (4, 12), "ids_restore": (4, 6)},
}


def reference(kind: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for name, shape in KINDS[kind].items():
        if name == "bool_masked_pos":
            out[name] = rng.random(shape) < 0.5
        elif name == "ids_restore":
            out[name] = np.argsort(rng.random(shape), axis=1)
        else:
            out[name] = rng.standard_normal(shape).astype(np.float32)
    return out


def test_the_bounds_are_pinned():
    assert THRESHOLDS == PINNED


@pytest.mark.parametrize("kind", KINDS)
def test_identical_outputs_pass_every_precision(kind):
    ref = reference(kind)
    for precision in PINNED:
        assert failures(precision, compare(ref, {k: v.copy() for k, v in ref.items()})) == []


@pytest.mark.parametrize("kind", KINDS)
def test_fp32_just_past_its_bound_fails_and_just_within_passes(kind):
    ref = reference(kind)
    name = next(n for n, v in ref.items() if v.dtype == np.float32)
    for offset, fails in ((1.05e-4, True), (0.95e-4, False)):
        got = {k: v.copy() for k, v in ref.items()}
        got[name] = (got[name].astype(np.float64) + offset).astype(np.float64)
        found = failures("fp32", compare(ref, got))
        assert bool(found) == fails, (offset, found)
        if fails:
            assert found == [f"{name} max abs diff {compare(ref, got)[name]['max_abs']:.3g} > 0.0001"]


@pytest.mark.parametrize("precision", ["fp16", "int8", "qdq", "executorch-int8", "coreml-fp16"])
def test_cosine_just_below_its_bound_fails_and_just_above_passes(precision):
    bound = PINNED[precision]["cosine"]
    ref = {"logits": np.array([[1.0, 0.0]], np.float32)}
    for cosine, fails in ((bound - 1e-5, True), (bound + 1e-5, False)):
        angle = np.arccos(cosine)
        got = {"logits": np.array([[np.cos(angle), np.sin(angle)]], np.float64)}
        assert bool(failures(precision, compare(ref, got))) == fails, cosine


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("kind", KINDS)
def test_a_non_finite_output_fails_every_precision_and_says_which(kind, bad):
    ref = reference(kind)
    for name in [n for n, v in ref.items() if v.dtype == np.float32]:
        got = {k: v.copy() for k, v in ref.items()}
        got[name].flat[0] = bad
        got[name].flat[-1] = bad
        for precision in PINNED:
            found = failures(precision, compare(ref, got))
            assert found == [f"{name} has 2 non-finite values (NaN or Inf)"], found
        json.dumps(compare(ref, got), allow_nan=False)  # the report stays JSON


@pytest.mark.parametrize("kind", KINDS)
def test_a_non_finite_reference_fails_even_when_the_artifact_agrees(kind):
    ref = reference(kind)
    name = next(n for n, v in ref.items() if v.dtype == np.float32)
    ref[name][:] = np.nan  # PyTorch itself gave NaN (NaN weights, std 0 in the preprocessing, ...)
    got = {k: v.copy() for k, v in ref.items()}
    for precision in PINNED:
        found = failures(precision, compare(ref, got))
        assert len(found) == 2 and found[0].startswith(f"PyTorch's {name} has {ref[name].size} non-finite values")
    json.dumps(compare(ref, got), allow_nan=False)


def test_missing_misshapen_and_unequal_outputs_fail():
    ref = reference("mae")
    got = {k: v.copy() for k, v in ref.items()}
    del got["logits"]
    got["ids_restore"] = got["ids_restore"][:, ::-1].copy()
    got["bool_masked_pos"] = got["bool_masked_pos"][:2]
    assert failures("fp32", compare(ref, got)) == ["logits is missing", "bool_masked_pos has shape [2, 12], expected "
                                                   "[4, 12]", "ids_restore differs"]
    assert failures("fp32", {}) == ["no output was compared"]
    assert failures("fp16", {"logits": {"max_abs": 0.0, "cosine": None}}) == ["logits cosine not computed < 0.999"]
    assert failures("fp32", {"logits": {"max_abs": float("nan")}}) == ["logits max abs diff nan > 0.0001"]


@pytest.mark.parametrize("precision", ["fp16", "int8", "qdq"])
def test_one_wrong_sample_in_a_batch_fails_however_right_the_others_are(precision):
    """The cosine is per sample: nine samples equal to the reference and one orthogonal to it have a smallest
    cosine of 0 (over the batch flattened it would be 0.9 or more, hiding the wrong one)."""
    ref = {"logits": np.zeros((10, 4), np.float32)}
    ref["logits"][:, 0] = 100.0  # every sample's weight on class 0, so that the flattened cosine is high
    ref["logits"][-1] = [0.0, 1.0, 0.0, 0.0]  # a small last sample, ...
    got = {"logits": ref["logits"].copy()}
    got["logits"][-1] = [0.0, 0.0, 1.0, 0.0]  # ... and the artifact's is orthogonal to it
    parity = compare(ref, got)
    assert parity["logits"]["cosine"] == 0.0
    assert failures(precision, parity) == [f"logits cosine 0 < {PINNED[precision]['cosine']}"]


def test_top1_and_top5_agreement_are_shares_of_samples():
    """Four samples of 7 classes, by hand: sample 0 agrees in everything; sample 1 has its first two classes
    swapped (top-1 differs, the top-5 set is the same); sample 2 swaps its 5th and 6th classes (top-1 agrees, the
    set differs); sample 3 swaps both. Top-1: 2 of 4; top-5: 2 of 4."""
    ranking = np.array([6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0], np.float32)  # class 0 first ... class 6 last
    ref = {"logits": np.stack([ranking] * 4)}
    got = {"logits": ref["logits"].copy()}
    got["logits"][1, [0, 1]] = got["logits"][1, [1, 0]]
    got["logits"][2, [4, 5]] = got["logits"][2, [5, 4]]
    got["logits"][3, [0, 1, 4, 5]] = got["logits"][3, [1, 0, 5, 4]]
    parity = compare(ref, got)["logits"]
    assert (parity["top1_agreement"], parity["top5_agreement"]) == (0.5, 0.5)
    same = compare(ref, {"logits": ref["logits"] + 1.0})["logits"]  # a shift keeps every ranking
    assert (same["top1_agreement"], same["top5_agreement"]) == (1.0, 1.0)
