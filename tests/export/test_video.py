"""Video Hiera (`hiera_*_16x224`): export against FAIR's video model (golden fixtures), the graph's unroll and
rank, and the runtime's clips (multi-frame files, frame directories, lists of frames)."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import safetensors.torch
import torch
from PIL import Image

import hiera_model
from export import ExportError, Options, read_artifact, run
from export.onnx_export import to_onnx
from runtime import Classifier, FeatureExtractor
from runtime.preprocess import Preprocessing, sample_frames

from ..conftest import FIXTURES, ROOT, failed_rows
from .test_graph import ranks_and_shapes
from .test_parity import FP32_TOLERANCE

REFERENCE = FIXTURES / "reference"
FRAMES = 10  # in the test clips; the fixture model takes 4, every 4th, from the middle


@pytest.fixture(scope="module")
def expected():
    return safetensors.torch.load_file(REFERENCE / "expected_video.safetensors")


@pytest.fixture(scope="module")
def video_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("video")
    files = {}
    for task in ("classify", "backbone"):
        report = run(Options(weights=str(REFERENCE / "video_fair_hub"), task=task, batch=None, out_dir=out,
                             precisions=("fp32",)))
        assert report["passed"], failed_rows(report)
        files[task] = out / report["artifacts"]["fp32"]["file"]
    return files


def test_logits_and_maps_match_fair(video_export, expected):
    pixel_values = expected["pixel_values"].numpy()  # [2, 3, 4, 64, 64]
    logits = Classifier.load(video_export["classify"], provider="cpu").run(pixel_values)["logits"]
    assert np.abs(logits - expected["logits"].numpy()).max() <= FP32_TOLERANCE
    maps = FeatureExtractor.load(video_export["backbone"], provider="cpu").run(pixel_values)
    for i, name in enumerate(maps):  # FAIR's [batch, frames, height, width, dim]; ours channels first
        reference = expected[f"stage{i}"].movedim(-1, 1).numpy()
        assert maps[name].shape == reference.shape
        assert np.abs(maps[name] - reference).max() <= FP32_TOLERANCE, name


def test_graph_unrolls_with_one_gather_at_rank_5():
    """FAIR's video unroll reshapes to rank 8 and 9; ours is one constant gather and no tensor above rank 5 (the
    clip and the 3-D patch embedding's output)."""
    graph = to_onnx(hiera_model.load(REFERENCE / "video_fair_hub"), 17, batch=1)
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count("Gather") == 1 and ops.count("Conv") == 1  # the unroll; the 3-D patch embedding
    assert max(len(shape) for shape in ranks_and_shapes(graph)) <= 5
    assert [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 4, 64, 64]


def test_published_video_variant_shapes():
    model = hiera_model.create("base_16x224")
    assert model.config.num_classes == 400 and model.config.tokens_spatial_shape == (8, 56, 56)
    assert model.pos_embed_spatial.shape == (1, 56 * 56, 96) and model.pos_embed_temporal.shape == (1, 8, 96)
    meta = Preprocessing.for_clips(model.config.input_size).to_dict()
    assert meta["frames"] == 16 and meta["frame_stride"] == 4 and meta["crop_size"] == [224, 224]


def test_frame_sampling():
    """16 frames at stride 4 span 64: the middle 64 of 300 are 118..181, every 4.2th (63 / 15) rounded down."""
    assert sample_frames(300, 16, 4) == [118, 122, 126, 130, 134, 139, 143, 147, 151, 155, 160, 164, 168, 172, 176, 181]
    assert sample_frames(64, 16, 4) == [0, 4, 8, 12, 16, 21, 25, 29, 33, 37, 42, 46, 50, 54, 58, 63]
    assert sample_frames(10, 4, 4) == [0, 5, 9, 9]  # a short video repeats its last frame, as SlowFast does


def clip_frames() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (72, 96, 3), dtype=np.uint8)) for _ in range(FRAMES)]


def kinetics_recipe(frame: Image.Image) -> np.ndarray:
    """A 72 x 96 test frame as SlowFast and MAE-ST evaluate Kinetics (FAIR publishes no recipe for Hiera), by hand:
    the shortest edge bilinear to 64 (the long one 96 * 64 / 72 = 85.3, rounded down as transformers does), the
    centre 64 x 64 (columns 10 to 73), the Kinetics mean 0.45 and std 0.225; [3, 64, 64]."""
    resized = np.asarray(frame.resize((85, 64), Image.Resampling.BILINEAR), np.float32)[:, 10:74]
    return ((resized / 255 - 0.45) / 0.225).transpose(2, 0, 1)


@torch.no_grad()
def test_clips_as_files_directories_and_frame_lists(video_export, tmp_path):
    frames = clip_frames()
    directory = tmp_path / "frames"
    directory.mkdir()
    for i, frame in enumerate(frames):
        frame.save(directory / f"{i:03d}.png")
    animated = tmp_path / "clip.png"  # an animated PNG: lossless, unlike GIF's palette
    frames[0].save(animated, save_all=True, append_images=frames[1:])
    model = Classifier.load(video_export["classify"], provider="cpu")
    preprocessing = model.info.preprocessing
    assert (preprocessing.frames, preprocessing.frame_stride) == (4, 4)
    chosen = sample_frames(FRAMES, 4, 4)
    pixel_values = np.stack([kinetics_recipe(frames[i]) for i in chosen], axis=1)[None]  # what the runtime must feed
    differs = float(np.abs(preprocessing.clip([frames[i] for i in chosen]) - pixel_values[0]).max())
    assert differs <= 1e-5, f"the runtime's clip differs from the recipe by up to {differs:.3g}"
    reference = hiera_model.load(REFERENCE / "video_fair_hub")(torch.from_numpy(pixel_values)).softmax(-1)[0]
    for clip in (frames, directory, animated, str(animated)):
        predictions = model.predict(clip, top_k=3)
        assert len(predictions) == 3
        for p in predictions:
            assert abs(p.score - reference[p.index].item()) <= 1e-5
    assert [len(p) for p in model.predict([frames, directory], top_k=2)] == [2, 2]  # a list of clips

    still = tmp_path / "still.png"
    frames[0].save(still)
    done = subprocess.run([sys.executable, "-m", "runtime", "predict", str(animated), str(directory), str(still),
                           "--model", str(video_export["classify"]), "--json", "--top-k", "1"],
                          cwd=ROOT, capture_output=True, text=True)
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 1 and [r["image"] for r in results] == [str(animated), str(directory), str(still)]
    assert results[0]["top_k"] == results[1]["top_k"]  # the same frames, as a file and as a directory
    assert results[2]["error"].startswith(f"{still}: a single image, not a clip")


def test_artifact_metadata_says_video(video_export):
    meta = read_artifact(video_export["classify"])
    assert meta["input_size"] == [4, 64, 64] and meta["preprocessing"]["frames"] == 4
    assert [d.dim_param or d.dim_value for d in onnx.load(video_export["classify"]).graph.input[0].type
            .tensor_type.shape.dim] == ["batch", 3, 4, 64, 64]


def test_qdq_calibrates_on_clips(tmp_path):
    """A video model's qdq scales come from clips (a multi-frame file, a folder of frames), sampled as the runtime
    samples them; a folder of single images is one line naming the first that is not a clip."""
    frames = clip_frames()
    clips = tmp_path / "clips"
    (clips / "frames").mkdir(parents=True)
    for i, frame in enumerate(frames):
        frame.save(clips / "frames" / f"{i:03d}.png")
    frames[0].save(clips / "clip.png", save_all=True, append_images=frames[1:])
    report = run(Options(weights=str(REFERENCE / "video_fair_hub"), batch=None, out_dir=tmp_path / "out",
                         precisions=("qdq",), calibration=clips))
    assert report["passed"], failed_rows(report)

    stills = tmp_path / "stills"
    stills.mkdir()
    frames[0].save(stills / "a.png")
    with pytest.raises(ExportError, match=r"calibration: .*a\.png: a single image, not a clip"):
        run(Options(weights=str(REFERENCE / "video_fair_hub"), batch=None, out_dir=tmp_path / "out2",
                    precisions=("qdq",), calibration=stills))
    assert not (tmp_path / "out2").exists() or not any((tmp_path / "out2").iterdir())
