"""SAM 2's Hub folder (`--task segmenter --layout hub`, `python -m export hub`) in transformers.js' SAM 2 layout, run
by the real transformers.js (Node, remote models off): its `Sam2Model` and `Sam2Processor` against
`runtime.load_segmenter` on the same artifacts. The small checkpoint of tests/sam2_reference.py (random weights,
128 x 128), one export shared by the module.

Where transformers.js preprocesses as we do (an image at the model's input size: its resize is then the identity),
its whole pipeline gives our logits within 1e-4 and our masks. On a photograph its resize (sharp) differs from
Pillow's, so there its pixels are replaced by ours to compare the models, and how far its own pixels move the masks
is recorded (docs/hub.md)."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

import runtime
from export import hub
from export.mask_decoder import MASK_LOGIT_TOLERANCE, mask_iou
from export.__main__ import main as export_main
from export.verification import verify
from runtime.segment import upsample_logits

from ..conftest import failed_rows
from ..sam2_reference import FAMILY_HUB_FILES as FILES
from ..sam2_reference import FAMILY_PRECISIONS as PRECISIONS
from ..sam2_reference import SIZE, sam2_checkpoint, segmenter_family  # noqa: F401
from .clients import load, run_node, save

# transformers.js dtypes and the artifacts (encoder, decoder) each one loads: q8 has no decoder file, so per file
DTYPES = {"fp32": ("fp32", ("", "")), "fp16": ("fp16", (".fp16", ".fp16")),
          "q8": ({"vision_encoder": "q8", "prompt_encoder_mask_decoder": "fp32"}, (".int8", ""))}
# Logits and IoU scores, max abs: one file in onnxruntime-node 1.30 and in onnxruntime 1.32. fp16 kernels round
# otherwise between the two (measured 3.9e-3 on logits: one fp16 step at magnitudes 4 to 8)
SAME_FILE = {"fp32": 1e-4, "fp16": 1e-2, "q8": 1e-4}
# Masks at the image's size, where the preprocessing matches, by issue 26's rule: pixels whose logit (ours, resized
# as transformers does) lies within MASK_LOGIT_TOLERANCE of 0 left out, at most 1% of them
MASK_IOU = 0.99


@pytest.fixture(scope="module")
def family(segmenter_family):  # noqa: F811  (the fixture imported above)
    """(folder, report, stem): the encoder and decoder of the small checkpoint as one export with --layout hub."""
    return segmenter_family


@pytest.fixture(scope="module")
def prompts_of():
    """(transformers.js prompts, our predict calls) for an image of `width` x `height`: a point, two points, a box,
    a point with a box, two point prompts at once (one call there, two here)."""
    def make(width, height):
        point, other, box = (0.4 * width, 0.45 * height), (0.75 * width, 0.7 * height), \
            (0.1 * width, 0.15 * height, 0.7 * width, 0.8 * height)
        theirs = [{"input_points": [[list(point)]], "input_labels": [[1]]},
                  {"input_points": [[list(point), list(other)]], "input_labels": [[1, 0]]},
                  {"input_boxes": [[list(box)]]},
                  {"input_points": [[list(other)]], "input_labels": [[1]], "input_boxes": [[list(box)]]},
                  {"input_points": [[list(point)], [list(other)]], "input_labels": [[1], [1]]}]
        ours = [[dict(points=[point])], [dict(points=[point, (*other, 0)])], [dict(boxes=[box])],
                [dict(points=[other], boxes=[box])], [dict(points=[point]), dict(points=[other])]]
        return theirs, ours
    return make


def predictions(segmenter_, calls: list[dict]):
    """Our multimask logits and scores for one transformers.js prompt (its prompts along axis 0), and the logits
    resized to the image as the runtime resizes them before thresholding."""
    answers = [segmenter_.predict(**call, multimask=True) for call in calls]
    logits = np.concatenate([a.logits for a in answers])
    return logits, np.concatenate([a.scores for a in answers]), upsample_logits(logits, segmenter_.image.shape[:2])


def masks_iou(theirs: np.ndarray, reference: np.ndarray) -> float:
    """The smallest IoU of transformers.js' masks (bool) with ours, by issue 26's rule (`mask_iou`): pixels whose
    logit lies within the tolerance of 0 left out, and at most 1% of them."""
    iou, left_out = mask_iou(reference, np.where(theirs, 1.0, -1.0), MASK_LOGIT_TOLERANCE)
    assert left_out <= 0.01 * reference.size, (left_out, reference.size)
    return iou


def test_layout_hub_folder_names_configs_and_verify(family, tmp_path):
    out, report, stem = family
    assert report["passed"], failed_rows(report)
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert written >= FILES and not any(name.startswith(("model", "onnx/model")) for name in written), written
    encoder = onnx.load(out / "onnx/vision_encoder.onnx")
    assert [i.name for i in encoder.graph.input] == ["pixel_values"]
    assert [o.name for o in encoder.graph.output] == ["image_embeddings.0", "image_embeddings.1", "image_embeddings.2"]
    decoder = onnx.load(out / "onnx/prompt_encoder_mask_decoder.onnx")
    assert {i.name for i in decoder.graph.input} == {"image_embeddings.0", "image_embeddings.1", "image_embeddings.2",
                                                     "input_points", "input_labels", "input_boxes"}
    assert [o.name for o in decoder.graph.output] == ["pred_masks", "iou_scores"]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "sam2" and config["vision_config"]["num_feature_levels"] == 3
    assert config["transformers.js_config"]["device_config"]["wasm"]["dtype"] == {
        "vision_encoder": "q8", "prompt_encoder_mask_decoder": "fp32"}
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": SIZE, "width": SIZE} and processor["processor_class"] == "Sam2Processor"
    assert verify([out / f"{stem}.report.json"]).ok  # the Hub's files are described by the report, sha256 and all
    for precision in PRECISIONS:  # the probe under the renamed outputs: the runtime proves the copy on this CPU
        name = hub.sam2_file("encoder", precision)
        model = runtime.load(out / name, provider="cpu")
        assert model.info.probe is not None, name
        assert set(model.session.output_names) == set(hub.SAM2_ENCODER_OUTPUTS.values()), name
    for precision in ("fp32", "fp16"):  # the decoder copy's probe (in our decoder's interface) is dropped, not broken
        name = hub.sam2_file("decoder", precision)
        assert runtime.load(out / name, provider="cpu").info.probe is None, name
    # python -m export hub on the same export writes the same files
    code = export_main(["hub", str(out / f"{stem}.onnx"), "--out", str(tmp_path / "again"), "--bench-runs", "0"])
    assert code == 0
    for name in FILES - {"README.md", "config.json"}:  # config.json: without --checkpoint, the fields js reads
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes(), name
    assert json.loads((tmp_path / "again" / "config.json").read_text())["vision_config"]["num_feature_levels"] == 3


def test_the_decoders_interface_is_our_decoder(family):
    """transformers.js' prompt tensors into the Hub decoder give our decoder's masks 1..3 on the same prompts written
    our way: points, then each box's corners labelled 2 and 3; one box for all prompts, one per prompt, none."""
    out, _, stem = family
    ours = ort.InferenceSession(out / f"{stem}.decoder.onnx", providers=["CPUExecutionProvider"])
    theirs = ort.InferenceSession(out / "onnx/prompt_encoder_mask_decoder.onnx", providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    maps = {name: rng.standard_normal([d.dim_value for d in value.type.tensor_type.shape.dim], dtype=np.float32)
            for name, value in {i.name: i for i in onnx.load(out / f"{stem}.decoder.onnx").graph.input}.items()
            if name in hub.SAM2_ENCODER_OUTPUTS}
    a, b, c = (30.0, 40.0), (90.0, 100.0), (10.0, 20.0, 80.0, 110.0)
    cases = [  # (input_points [P, N, 2], input_labels [P, N], input_boxes [B, 4]) -> (our coords, our labels)
        ([[a]], [[1]], [], [[a]], [[1]]),
        ([[a, b]], [[1, 0]], [], [[a, b]], [[1, 0]]),
        ([[a], [b]], [[1], [1]], [], [[a], [b]], [[1], [1]]),
        ([[a]], [[1]], [c], [[a, c[:2], c[2:]]], [[1, 2, 3]]),
        ([[a], [b]], [[1], [0]], [c], [[a, c[:2], c[2:]], [b, c[:2], c[2:]]], [[1, 2, 3], [0, 2, 3]]),
        (None, None, [c, (5.0, 5.0, 60.0, 70.0)], [[c[:2], c[2:]], [(5.0, 5.0), (60.0, 70.0)]], [[2, 3], [2, 3]]),
    ]
    for points, labels, boxes, coords, our_labels in cases:
        prompts = len(coords)
        if points is None:  # boxes alone, as transformers.js feeds them
            points, labels = np.zeros((1, 1, 0, 2), np.float32), np.zeros((1, len(boxes), 0), np.int64)
        else:
            points, labels = np.array(points, np.float32)[None], np.array(labels, np.int64)[None]
        got = dict(zip(["pred_masks", "iou_scores"], theirs.run(None, {
            **{hub.SAM2_ENCODER_OUTPUTS[name]: value for name, value in maps.items()}, "input_points": points,
            "input_labels": labels, "input_boxes": np.array(boxes, np.float32).reshape(1, -1, 4)})))
        want = dict(zip(["masks", "iou_scores"], ours.run(None, {
            **maps, "point_coords": np.array(coords, np.float32), "point_labels": np.array(our_labels, np.float32),
            "mask_input": np.zeros((prompts, 1, 32, 32), np.float32),
            "has_mask_input": np.zeros(prompts, np.float32)})))
        assert got["pred_masks"].shape == (1, prompts, 3, 32, 32), (coords, got["pred_masks"].shape)
        assert np.abs(got["pred_masks"][0] - want["masks"][:, 1:]).max() <= 1e-6, coords
        assert np.abs(got["iou_scores"][0] - want["iou_scores"][:, 1:]).max() <= 1e-6, coords


def test_transformers_js_segments_as_the_runtime(family, prompts_of, photo_files, tmp_path, record_property):
    """An image at the model's input size (a crop of the photograph, PNG): transformers.js' processor makes our
    pixels, and its Sam2Model's pred_masks and iou_scores are the runtime's on the same artifacts, for each dtype
    and prompt; the masks its post_process_masks makes are ours."""
    out, _, stem = family
    image = tmp_path / "crop.png"
    Image.open(next(p for p in photo_files if p.name == "china.jpg")).crop((200, 100, 200 + SIZE, 100 + SIZE)) \
        .save(image)
    theirs, ours = prompts_of(SIZE, SIZE)
    result = run_node("sam2_transformers_js.mjs", {"folder": str(out), "image": str(image), "prompts": theirs,
                                                   "dtypes": [dtype for dtype, _ in DTYPES.values()]}, tmp_path)
    assert (result["class"], result["processor"]) == ("Sam2Model", "Sam2Processor")
    for (name, (_, (encoder, decoder))), answers in zip(DTYPES.items(), result["runs"]):
        segmenter_ = runtime.load_segmenter(out / f"{stem}{encoder}.onnx", out / f"{stem}.decoder{decoder}.onnx",
                                            provider="cpu")
        segmenter_.set_image(image)
        pixels = segmenter_.encoder.info.preprocessing(runtime.load_image(image))[None]
        assert np.abs(load(result["pixels"]) - pixels).max() <= 1e-5
        worst = [0.0, 0.0, 1.0]
        for prompt, answer, calls in zip(theirs, answers, ours):
            logits, scores, resized = predictions(segmenter_, calls)
            worst[0] = max(worst[0], float(np.abs(load(answer["pred_masks"])[0] - logits).max()))
            worst[1] = max(worst[1], float(np.abs(load(answer["iou_scores"])[0] - scores).max()))
            worst[2] = min(worst[2], masks_iou(load(answer["masks"]), resized))
            assert 0.05 <= (resized > 0).mean() <= 0.95, (name, prompt)  # masks whose IoU says something
        record_property(f"{name}: transformers.js against the runtime", f"pred_masks max abs {worst[0]:.2e}, "
                        f"iou_scores max abs {worst[1]:.2e}, min mask IoU {worst[2]:.4f}")
        assert worst[0] <= SAME_FILE[name] and worst[1] <= SAME_FILE[name] and worst[2] >= MASK_IOU, (name, worst)


def test_on_a_photograph_only_the_resize_differs(family, prompts_of, photo_files, tmp_path, record_property):
    """The 640 x 427 photograph: given our pixels, transformers.js' models answer as ours (within 1e-4), so its
    point and box scaling to the input frame is ours. Its own pixels (sharp shrinks 5 times without widening the
    filter, Pillow widens it) and its post-processing (two bilinear resizes, through the input frame, where
    transformers and the runtime make one) move the masks; both are measured."""
    out, _, stem = family
    photo = next(p for p in photo_files if p.name == "china.jpg")
    segmenter_ = runtime.load_segmenter(out / f"{stem}.onnx", out / f"{stem}.decoder.onnx", provider="cpu")
    segmenter_.set_image(photo)
    pixels = segmenter_.encoder.info.preprocessing(runtime.load_image(photo))[None]
    height, width = segmenter_.image.shape[:2]
    theirs, ours = prompts_of(width, height)
    spec = {"folder": str(out), "image": str(photo), "prompts": theirs, "dtypes": ["fp32"]}
    given = run_node("sam2_transformers_js.mjs", {**spec, "pixel_values": save(tmp_path, "pixels", pixels)}, tmp_path)
    (tmp_path / "own").mkdir()
    own = run_node("sam2_transformers_js.mjs", spec, tmp_path / "own")
    post, own_pixels = 1.0, 1.0
    for answer, alone, calls in zip(given["runs"][0], own["runs"][0], ours):
        logits, scores, resized = predictions(segmenter_, calls)
        assert np.abs(load(answer["pred_masks"])[0] - logits).max() <= SAME_FILE["fp32"], calls
        assert np.abs(load(answer["iou_scores"])[0] - scores).max() <= SAME_FILE["fp32"], calls
        post = min(post, masks_iou(load(answer["masks"]), resized))
        own_pixels = min(own_pixels, masks_iou(load(alone["masks"]), resized))
    moved = np.abs(load(own["pixels"]) - pixels)
    record_property("photograph: transformers.js' own pipeline", f"pixels mean {moved.mean():.3f} max "
                    f"{moved.max():.2f}; min mask IoU {post:.4f} with our pixels (its post-processing), "
                    f"{own_pixels:.4f} with its own")
    assert 0 < moved.mean() < 0.5 and post >= 0.95, (moved.mean(), post)


def test_hub_refusals_are_one_line(family, sam2_checkpoint, tmp_path, capsys):  # noqa: F811
    out, _, stem = family
    directory, _ = sam2_checkpoint
    code = export_main(["--task", "segmenter", "--weights", str(directory), "--layout", "hub", "--precision", "fp16",
                        "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "needs the encoder's and the decoder's fp32" in err[0], err
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in out.glob(f"{stem}*"):
        (copy / path.name).write_bytes(path.read_bytes())
    decoder = copy / f"{stem}.decoder.onnx"
    decoder.write_bytes(decoder.read_bytes()[:-1] + bytes([decoder.read_bytes()[-1] ^ 1]))
    code = export_main(["hub", str(copy / f"{stem}.onnx"), "--out", str(tmp_path / "y"), "--bench-runs", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"{decoder.name}: sha256" in err[0], err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
