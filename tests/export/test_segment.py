"""SAM 2's mask decoder exported (`--task mask-decoder`) beside its image encoder from the checkpoint transformers
saved itself, and `python -m runtime segment` / `runtime.load_segmenter` on a photograph against transformers'
`Sam2Model` with `Sam2Processor`'s prompt scaling and post-processing (bilinear to the original size, > 0).

Random weights: the masks mean nothing, but they cover between 5% and 95% of the photograph, which is what makes an
IoU comparison count (issue 26's rule); pixels whose reference logit lies within the logit tolerance of 0 are left
out, and counted."""

import json
import math

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_image
from torch.nn import functional as F
from transformers import Sam2Processor

import runtime
from export import Options, read_artifact, run
from export import mask_decoder
from export.optimize import max_rank
from export.verification import verify
from hiera_model.sam2_decoder import INPUT_NAMES, OUTPUT_NAMES
from export.parity import photographs
from runtime import cli, probe
from runtime.preprocess import Preprocessing, load_image

from ..conftest import decoder_of_another_encoder, failed_rows, tampered
from ..sam2_reference import SIZE, reference_embeddings, sam2_checkpoint  # noqa: F401

LOGIT_TOLERANCE = 1e-3  # fp32 logits (issue 26); a reference pixel this close to 0 is left out of the IoU, counted


@pytest.fixture(scope="module")
def exported(sam2_checkpoint, tmp_path_factory):  # noqa: F811
    """(folder, encoder artifact, decoder artifact, decoder report, photo.png): one export of each, shared."""
    directory, _ = sam2_checkpoint
    out = tmp_path_factory.mktemp("segment-export")
    encoder = run(Options(weights=str(directory), task="image-encoder", batch=None, out_dir=out, precisions=("fp32",)))
    report = mask_decoder.run(Options(weights=str(directory), task="mask-decoder", out_dir=out,
                                      precisions=("fp32", "fp16")))
    photo = out.parent / "photo.png"
    Image.fromarray(load_sample_image("china.jpg")).save(photo)  # 640 x 427
    return out, out / encoder["artifacts"]["fp32"]["file"], out / report["artifacts"]["fp32"]["file"], report, photo


def test_decoder_artifacts_pass_with_mask_iou_rows(exported, sam2_checkpoint):  # noqa: F811
    out, encoder, decoder, report, _ = exported
    assert report["passed"], failed_rows(report)
    assert set(report["artifacts"]) == {"fp32", "fp16"} and report["graphs"]["exported"]["max_rank"] == 4
    for precision, entry in report["artifacts"].items():
        masks = entry["parity"]["masks"]
        assert masks["min_mask_iou"] >= mask_decoder.MASK_IOU_BOUNDS[precision], (precision, masks)
        assert masks["pixels_left_out"] <= 0.01 * masks["pixels"], (precision, masks)
        assert max_rank(onnx.load(out / entry["file"])) == 4, precision
    assert report["artifacts"]["fp32"]["parity"]["masks"]["max_abs"] <= 1e-4
    graph = onnx.load(decoder)
    assert [i.name for i in graph.graph.input] == INPUT_NAMES and [o.name for o in graph.graph.output] == OUTPUT_NAMES
    meta, encoder_meta = read_artifact(decoder), read_artifact(encoder)
    assert meta["task"] == "mask-decoder" and meta["encoder"] == {
        "variant": encoder_meta["variant"], "weights": encoder_meta["weights"],
        "input_size": encoder_meta["input_size"]}
    report_file = out / f"{decoder.name.split('.')[0]}.report.json"
    assert verify([report_file]).ok
    # with the checkpoint: both artifacts run again on the validation prompts against PyTorch, as the export did
    result = verify([report_file], weights=str(sam2_checkpoint[0]))
    assert result.ok, [f"{check.name} {check.subject}: {check.detail}" for check in result.failures]
    assert sorted(check.subject for check in result.checks if check.name == "parity") == sorted(
        str(out / entry["file"]) for entry in report["artifacts"].values())


@torch.no_grad()
def test_segment_command_matches_transformers(exported, sam2_checkpoint, tmp_path, capsys):  # noqa: F811
    _, encoder, decoder, _, photo = exported
    _, reference = sam2_checkpoint
    out = tmp_path / "masks"
    assert cli.main(["segment", str(photo), "--model", str(encoder), "--decoder", str(decoder), "--point", "200,150",
                     "--out", str(out), "--json", "--overlay", "--provider", "cpu"]) == 0
    document = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    mask = np.asarray(Image.open(out / document["masks"][0]["file"])) > 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["photo.overlay.png",
                                                                               "photo.prompt0.mask0.png"]
    # transformers: the same pixels (Sam2ImageProcessor needs torchvision, not installed here: the runtime's
    # preprocessing, which the encoder's tests hold to torch's resize), Sam2Processor's prompt scaling, the model's
    # single-mask answer, post_process_masks' resize (F.interpolate, bilinear, align_corners False) and threshold 0
    image = load_image(photo)
    pixel_values = torch.from_numpy(Preprocessing.for_sam2((SIZE, SIZE))(image))[None]
    points = Sam2Processor._normalize_coordinates(None, SIZE, torch.tensor([[[[200.0, 150.0]]]]), (427, 640))
    expected = reference(pixel_values=pixel_values, input_points=points,
                         input_labels=torch.ones(1, 1, 1, dtype=torch.int),
                         multimask_output=False)
    logits = F.interpolate(expected.pred_masks[0], (427, 640), mode="bilinear", align_corners=False)[0, 0].numpy()
    counted = np.abs(logits) > LOGIT_TOLERANCE
    coverage = (logits > 0).mean()
    assert 0.05 <= coverage <= 0.95, f"the reference mask covers {coverage:.1%}: this case does not count"
    assert (~counted).mean() <= 0.01, f"{(~counted).sum()} pixels within {LOGIT_TOLERANCE} of the threshold"
    ours, theirs = mask[counted], logits[counted] > 0
    iou = (ours & theirs).sum() / (ours | theirs).sum()
    assert iou >= 0.99, f"mask IoU {iou:.5f} (coverage {coverage:.1%}, {(~counted).sum()} pixels left out)"
    assert abs(document["masks"][0]["score"] - expected.iou_scores[0, 0, 0].item()) <= 1e-4
    rle = document["masks"][0]["rle"]
    assert rle["size"] == [427, 640] and sum(rle["counts"]) == 427 * 640 and document["masks"][0]["area"] == mask.sum()


@torch.no_grad()
@pytest.mark.parametrize("provider", ["cpu", "auto"])  # auto: the decoder (standard operators) on OpenVINO
def test_api_many_prompts_one_encoder_run(exported, sam2_checkpoint, provider):  # noqa: F811
    _, encoder, decoder, _, photo = exported
    _, reference = sam2_checkpoint
    segmenter = runtime.load_segmenter(encoder, decoder, provider=provider, threads=2)
    engine = type(segmenter.decoder.session).__name__
    assert engine == ("OnnxSession" if provider == "cpu" else "OpenVinoSession"), engine
    calls = []
    run_encoder = segmenter.encoder.session.run
    segmenter.encoder.session.run = lambda *a, **k: calls.append(1) or run_encoder(*a, **k)
    segmenter.set_image(photo)
    boxes = [(50, 40, 400, 300), (300, 100, 620, 420)]
    answers = [segmenter.predict(points=[(200, 150)]), segmenter.predict(points=[(200, 150), (500, 300, 0)]),
               segmenter.predict(points=[(320, 200)], boxes=boxes, multimask=True)]
    assert len(calls) == 1 and segmenter.encoder_runs == 1
    assert answers[2].masks.shape == (2, 3, 427, 640) and answers[2].logits.shape == (2, 3, SIZE // 4, SIZE // 4)
    # the box prompts against transformers: low-resolution logits and predicted IoU
    pixel_values = torch.from_numpy(Preprocessing.for_sam2((SIZE, SIZE))(load_image(photo)))[None]
    scale = lambda c, box=False: Sam2Processor._normalize_coordinates(None, SIZE, torch.tensor(c, dtype=torch.float32),  # noqa: E731
                                                                     (427, 640), is_bounding_box=box)
    expected = reference(pixel_values=pixel_values, input_points=scale([[[320.0, 200.0]]] * 2)[None],
                         input_labels=torch.ones(1, 2, 1, dtype=torch.int), input_boxes=scale(boxes, True)[None],
                         multimask_output=True)
    assert np.abs(answers[2].logits - expected.pred_masks[0].numpy()).max() <= LOGIT_TOLERANCE
    assert np.abs(answers[2].scores - expected.iou_scores[0].numpy()).max() <= 1e-4
    # a previous answer's logits as the mask prompt, as SAM 2 refines a mask
    refined = segmenter.predict(points=[(200, 150)], mask_input=answers[0].logits[0, 0])
    expected = reference(pixel_values=pixel_values, input_points=scale([[[200.0, 150.0]]])[None],
                         input_labels=torch.ones(1, 1, 1, dtype=torch.int), multimask_output=False,
                         input_masks=torch.from_numpy(answers[0].logits[:, :1]))
    assert np.abs(refined.logits - expected.pred_masks[0].numpy()).max() <= LOGIT_TOLERANCE
    assert np.abs(refined.scores - expected.iou_scores[0].numpy()).max() <= 1e-4
    assert np.abs(refined.logits - answers[0].logits).max() > 10 * LOGIT_TOLERANCE  # the mask prompt is used
    assert len(calls) == 1


def exit_code(args) -> int:
    """The command's exit status, in this process (argument errors leave through SystemExit)."""
    try:
        return cli.main(["segment", *map(str, args)])
    except SystemExit as stop:
        return stop.code


def test_bad_input_is_one_line_and_writes_nothing(exported, tmp_path, capsys):
    out, encoder, decoder, _, photo = exported
    other = decoder_of_another_encoder(decoder, tmp_path)
    target = tmp_path / "masks"
    too_many = [a for _ in range(65) for a in ("--box", "0,0,10,10")]
    cases = [(["--point", "700,150"], "point 700,150: x 700 is outside the image (0 to 640)"),
             (["--point", "10,-1"], "y -1 is outside the image"),
             (["--box", "300,10,200,200"], "x1 < x0 or y1 < y0"),
             (["--point", "10,10,5"], "label 5.0 is not one SAM 2 defines"),
             ([], "empty prompt"),
             (["--point", "1,2,3,4"], "must be X,Y or X,Y,LABEL"),
             (["--box", "nan,1,2,3"], "must be X0,Y0,X1,Y1"),
             (too_many, "65 prompts of 2 points: at most 64 prompts")]
    for args, expected in cases:
        code = exit_code([photo, "--model", encoder, "--decoder", decoder, *args, "--out", target])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and expected in err[0], (args[:2], code, err)
        assert not target.exists(), args[:2]
    code = exit_code([photo, "--model", encoder, "--decoder", other, "--point", "1,1", "--out", target])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "belongs to another encoder: its weights" in err and not target.exists(), err


def test_tampered_encoder_entry_is_one_line(exported, tmp_path):
    _, _, decoder, _, _ = exported
    model = onnx.load(decoder)
    for value, expected in ((None, "hiera.encoder: missing"),
                            ({"variant": "v", "weights": {"source": "s", "verified": "yes"}, "input_size": [128, 128]},
                             "hiera.encoder: verified 'yes' is not true or false (variant, weights, input_size)")):
        kept = [p for p in model.metadata_props if p.key != "hiera.encoder"]
        del model.metadata_props[:]
        model.metadata_props.extend(kept)
        if value is not None:
            model.metadata_props.add(key="hiera.encoder", value=json.dumps(value))
        path = tmp_path / "tampered.onnx"
        onnx.save(model, path)
        with pytest.raises(runtime.HieraRuntimeError) as error:
            runtime.load(path)
        assert str(error.value).startswith(f"{path}: ") and expected in str(error.value), str(error.value)


def test_fp16_keeps_softmax_norms_and_stability_areas_in_fp32(exported):
    """The fp16 graph's keep-list (export.convert.FP32_OPS) as the decoder needs it: attention's softmax, the layer
    norms and the stability areas' means (65536 ones would overflow fp16) compute in float32."""
    from export.convert import FP32_OPS

    out, _, _, report, _ = exported
    graph = onnx.shape_inference.infer_shapes(onnx.load(out / report["artifacts"]["fp16"]["file"]))
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.graph.value_info, *graph.graph.input)}
    kept = [node for node in graph.graph.node if node.op_type in FP32_OPS]
    assert {node.op_type for node in kept} >= {"Softmax", "LayerNormalization", "ReduceMean"}
    wrong = [f"{node.op_type} {node.name}" for node in kept if types.get(node.input[0]) != onnx.TensorProto.FLOAT]
    assert not wrong, wrong
    assert any(types.get(v) == onnx.TensorProto.FLOAT16 for node in graph.graph.node if node.op_type == "MatMul"
               for v in node.input)


# The decoder's probe (runtime.probe, format 2): generated inputs, PyTorch's and onnxruntime's outputs on them

def stored_probe(path) -> dict:
    return json.loads({p.key: p.value for p in onnx.load(path).metadata_props}["hiera.probe"])


def test_the_probes_generator_is_its_formula_and_the_same_on_every_call():
    shape, mean, std, start = (1, 3, 4, 5), [0.5, -2.0, 10.0], [1.0, 0.25, 3.0], 2 * probe.SEQUENCE_STRIDE
    values = probe.generated(shape, mean, std, start)
    assert values.dtype == np.float32 and values.tobytes() == probe.generated(shape, mean, std, start).tobytes()
    golden = (math.sqrt(5) - 1) / 2
    for c, h, w in ((0, 0, 0), (1, 2, 3), (2, 3, 4), (2, 0, 1)):  # by hand: k the flat index, u frac((start + k) g)
        u = ((start + (c * 4 + h) * 5 + w) * golden) % 1.0
        assert values[0, c, h, w] == np.float32(mean[c] + std[c] * (math.sqrt(3) * (2 * u - 1))), (c, h, w)
    big = probe.generated((1, 2, 64, 64), [1.0, -3.0], [2.0, 0.5], 0).astype(np.float64)
    assert np.abs(big.mean(axis=(0, 2, 3)) - [1.0, -3.0]).max() <= 1e-2
    assert np.abs(big.std(axis=(0, 2, 3)) / [2.0, 0.5] - 1).max() <= 1e-2
    assert np.abs(big[0, 0] - 1.0).max() <= 2.0 * math.sqrt(3) + 1e-5  # bounded: sqrt(3) std from the mean


@torch.no_grad()
def test_the_decoders_probe_holds_pytorchs_outputs_on_generated_inputs(exported, sam2_checkpoint):  # noqa: F811
    """Its statistics are those of transformers' encoder outputs on the photographs, and its reference outputs are
    transformers' Sam2Model decoder on the inputs the stored statistics and prompts generate (the three multimask
    masks and scores: our masks 1..3; the single-mask answer is a decision a device may take the other way at its
    threshold), reduced as the probe stores them."""
    out, _, _, report, _ = exported
    _, reference = sam2_checkpoint
    pixels = torch.from_numpy(np.stack([Preprocessing.for_sam2((SIZE, SIZE))(image)
                                        for image in photographs().values()]))
    embeddings = {k: v.double().numpy() for k, v in reference_embeddings(reference, pixels).items()}
    documents = {precision: stored_probe(out / entry["file"]) for precision, entry in report["artifacts"].items()}
    assert {p: d["reference"]["bound"] for p, d in documents.items()} == {"fp32": {"max_abs": 1e-4},
                                                                           "fp16": {"cosine": 0.999}}
    inputs = documents["fp32"]["inputs"]
    assert all(d["inputs"] == inputs and d["engine"]["name"].startswith("onnxruntime") for d in documents.values())
    assert inputs["kind"] == "generated embeddings" and inputs["of"] == list(photographs())
    for name, stats in inputs["embeddings"].items():
        for key, expected in (("mean", embeddings[name].mean(axis=(0, 2, 3))),
                              ("std", embeddings[name].std(axis=(0, 2, 3)))):
            assert np.abs(probe.decode(stats[key], key) - expected).max() <= 1e-4, (name, key)
    calls = probe.decoder_calls(inputs)
    labels = np.concatenate([call["point_labels"].ravel() for call in calls])
    coords = np.concatenate([call["point_coords"].reshape(-1, 2) for call in calls])
    assert set(labels) == {1, 0, 2, 3, -10} and ((coords >= 0) & (coords <= SIZE)).all()
    assert [call["has_mask_input"].tolist() for call in calls] == [[0, 0, 0, 0], [1]]
    assert np.abs(calls[1]["mask_input"]).max() > 1 and not calls[0]["mask_input"].any()
    masks, scores = [], []
    for call in calls:
        given = dict(image_embeddings=[torch.from_numpy(call[name]) for name in (*probe.EMBEDDINGS[1:],
                                                                                     "image_embeddings")],
                     input_points=torch.from_numpy(call["point_coords"])[None],
                     input_labels=torch.from_numpy(call["point_labels"]).int()[None],
                     input_masks=torch.from_numpy(call["mask_input"]) if call["has_mask_input"].any() else None)
        multiple = reference(**given, multimask_output=True)
        masks.append(multiple.pred_masks[0].numpy())
        scores.append(multiple.iou_scores[0].numpy())
    stored = {name: probe.decode(value, name) for name, value in documents["fp32"]["reference"]["outputs"].items()}
    assert np.abs(stored["masks"] - probe.reduce(np.concatenate(masks))).max() <= 1e-5
    assert np.abs(stored["iou_scores"] - np.concatenate(scores)).max() <= 1e-5


def check_command(capsys, *paths) -> tuple[int, list[str], list[str]]:
    code = cli.main(["check", *map(str, paths), "--provider", "cpu"])
    said = capsys.readouterr()
    return code, said.out.splitlines(), said.err.splitlines()


def test_runtime_check_runs_the_decoders_probe_and_refuses_a_tampered_one(exported, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out, encoder, decoder, report, _ = exported
    paths = [out / entry["file"] for entry in report["artifacts"].values()]
    code, lines, err = check_command(capsys, *paths)
    assert code == 0 and len(lines) == 2 and not err, lines + err
    for path, line, figure in zip(paths, lines, ("max abs", "cosine")):
        assert line.startswith(f"{path}: ok: PyTorch fp32: {figure} ") and "(the export's run)" in line, line
    document = stored_probe(decoder)
    scores = probe.decode(document["reference"]["outputs"]["iou_scores"], "iou_scores")
    scores[1, 2] *= 1.5
    document["reference"]["outputs"]["iou_scores"] = probe.encode(scores)
    path = tampered(decoder, tmp_path, "probe", document)
    code, lines, err = check_command(capsys, path)
    assert code == 1 and len(lines) == 1 and not err, lines + err
    assert lines[0].startswith(f"{path}: FAILED: PyTorch fp32: max abs ") and "> 0.0001" in lines[0], lines[0]
    with pytest.raises(runtime.HieraRuntimeError, match="fails its probe on this device.*PyTorch fp32: max abs"):
        runtime.load_segmenter(encoder, path, provider="cpu")
    assert runtime.load_segmenter(encoder, path, provider="cpu", check=False).decoder.info.probe == document


@pytest.mark.parametrize("damage, expected", [
    (lambda d: d["inputs"]["calls"][0]["point_labels"].update(data="!" * 44), "point_labels is not base64"),
    (lambda d: d["inputs"]["embeddings"]["high_res_feats_0"].update(shape=[1, 32, 64]), "has no shape [1, C, H, W]"),
    (lambda d: d["inputs"]["embeddings"]["image_embeddings"]["std"].update(shape=[3]), "std does not hold [3]"),
    (lambda d: d["inputs"].update(kind="photographs"), "a mask decoder's inputs are 'generated embeddings'"),
    # statistics past float32 (NaN outputs: no figure to compare), and calls past the decoder's bounds (a huge
    # allocation in onnxruntime) are the probe's damage, not the device's failure
    (lambda d: d["inputs"]["embeddings"]["image_embeddings"].update(
        mean=probe.encode(np.full(probe.decode(d["inputs"]["embeddings"]["image_embeddings"]["mean"], "").shape,
                                  1e38))), "|mean| + sqrt(3) std <= 1e+06"),
    (lambda d: d["inputs"]["calls"][1].update(point_coords=probe.encode(np.zeros((1, 17, 2), np.float32)),
                                              point_labels=probe.encode(np.ones((1, 17), np.float32))), "N <= 16"),
    (lambda d: d["inputs"]["calls"][1].update(point_coords=probe.encode(np.zeros((65, 1, 2), np.float32)),
                                              point_labels=probe.encode(np.ones((65, 1), np.float32)),
                                              has_mask_input=probe.encode(np.zeros(65, np.float32))), "P <= 64"),
    (lambda d: d["inputs"]["mask_input"].update(std=True), "inputs.mask_input has no side and std"),
    # a stored output lost: the decoder's masks would go unchecked
    (lambda d: d["reference"]["outputs"].pop("masks"), "reference holds outputs iou_scores; the decoder gives")])
def test_a_damaged_decoder_probe_is_one_line(exported, tmp_path, capsys, damage, expected):
    decoder = exported[2]
    document = stored_probe(decoder)
    damage(document)
    path = tampered(decoder, tmp_path, "probe", document)
    code, lines, err = check_command(capsys, path)
    assert code == 2 and not lines and len(err) == 1, lines + err
    assert err[0].startswith(f"error: {path}: damaged probe: ") and expected in err[0], err[0]


def test_a_decoder_without_a_probe_says_why(exported, tmp_path, capsys):
    decoder = exported[2]
    for version, said in ((2, "its export wrote none"), (1, "made by an older export")):
        model = onnx.load(decoder)
        kept = [p for p in model.metadata_props if p.key != "hiera.probe"]
        del model.metadata_props[:]
        model.metadata_props.extend(kept)
        next(p for p in model.metadata_props if p.key == "hiera.format_version").value = str(version)
        onnx.save(model, tmp_path / "bare.onnx")
        code, lines, _ = check_command(capsys, tmp_path / "bare.onnx")
        assert code == 0 and lines[0].startswith(f"{tmp_path / 'bare.onnx'}: no probe (metadata format {version}, "
                                                 f"{said}): "), lines
