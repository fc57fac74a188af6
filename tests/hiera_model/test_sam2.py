"""SAM 2's image encoder: parity with transformers' Sam2Model on a checkpoint it saved itself, the graph's
rank, the published sizes as data, and every refusal in one line."""

import json
import shutil

import pytest
import safetensors.torch
import torch
import transformers
from torch.nn import functional as F

import hiera_model
from hiera_model import HieraModelError, Sam2Config, VerificationError, lock
from hiera_model.sam2 import pool_order, window_layout

from ..conftest import FIXTURES, ROOT
from ..sam2_reference import OTHER_SIZE, OUTPUTS, SIZE, reference_embeddings, sam2_checkpoint  # noqa: F401

TOLERANCE = 1e-4  # max abs diff; outputs here reach about 12
TIMM_FOLDER = FIXTURES / "reference" / "sam2_timm_hub"  # timm 1.0.31's sam2_hiera, saved with save_for_hf


def max_diffs(ours: dict, reference: dict) -> dict[str, float]:
    assert {name: tuple(t.shape) for name, t in ours.items()} == {n: tuple(t.shape) for n, t in reference.items()}
    return {name: (ours[name] - reference[name]).abs().max().item() for name in OUTPUTS}


@pytest.mark.parametrize("size", [SIZE, OTHER_SIZE])
@torch.no_grad()
def test_outputs_equal_transformers_get_image_embeddings(sam2_checkpoint, size):  # noqa: F811
    directory, reference = sam2_checkpoint
    encoder = hiera_model.load(directory, task="image-encoder", input_size=(size, size))
    assert encoder.provenance["sha256"] and encoder.config.input_size == (size, size)
    pixel_values = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    diffs = max_diffs(encoder(pixel_values), reference_embeddings(reference, pixel_values))
    assert max(diffs.values()) <= TOLERANCE, diffs


@torch.no_grad()
def test_sam2_1_tiny_at_1024_equals_transformers(tmp_path):
    """The one full-size check (fp32, batch 1): transformers' default Sam2Config is SAM 2.1 tiny's; its windows
    of 14 pad stage 3's 64 x 64 grid to 70 x 70. transformers draws the position tables and the no-memory
    embedding as zeros: they are redrawn so that their order counts."""
    torch.manual_seed(0)
    reference = transformers.Sam2Model(transformers.Sam2Config()).eval()
    for name, parameter in reference.named_parameters():
        if "pos_embed" in name or "no_memory" in name:
            parameter.normal_(0, 0.5)
    reference.save_pretrained(tmp_path)
    encoder = hiera_model.load(tmp_path, task="image-encoder")
    assert encoder.config == hiera_model.SAM2_VARIANTS["sam2.1_hiera_tiny"].config
    pixel_values = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0))
    expected = reference_embeddings(reference, pixel_values)
    diffs = max_diffs(encoder(pixel_values), expected)
    assert max(diffs.values()) <= TOLERANCE, diffs
    assert expected["image_embeddings"].shape == (1, 256, 64, 64)


def test_window_orders_are_a_padded_partition():
    # A 5 x 6 grid in 4 x 4 windows: 2 x 2 windows, 2 + 3 rows and 2 columns of padding (index 30).
    into, out = window_layout((5, 6), (4, 4), 1)
    assert len(into) == 64 and (into == 30).sum() == 64 - 30
    assert sorted(into[into < 30].tolist()) == list(range(30))
    assert (into[out] == list(range(30))).all()  # out takes each grid token back from its window
    assert into[:4].tolist() == [0, 1, 2, 3] and into[4:8].tolist() == [6, 7, 8, 9]
    # Pooling 2 x 2 inside 4 x 4 windows of a 4 x 4 grid: offsets first, then the pooled positions.
    into, out = window_layout((4, 4), (4, 4), 2)
    assert into[:4].tolist() == [0, 2, 8, 10] and into[4:8].tolist() == [1, 3, 9, 11]
    assert out.tolist() == [0, 1, 2, 3]
    assert pool_order((2, 4), 2).tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


@torch.no_grad()
def test_graph_has_rank_4_at_most_and_only_a_dynamic_batch():
    config = Sam2Config(embed_dim=16, depths=(1, 2, 3, 1), window_sizes=(4, 4, 6, 2), global_blocks=(2, 4),
                        input_size=(128, 128), fpn_dim=32)
    model = hiera_model.create(config, "image-encoder")
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (torch.zeros(2, 3, 128, 128),), dynamic_shapes={"pixel_values": {0: batch}})
    ranks = [len(node.meta["val"].shape) for node in program.graph.nodes
             if isinstance(node.meta.get("val"), torch.Tensor)]
    assert max(ranks) == 4
    pixel_values = torch.randn(3, 3, 128, 128)
    exported, eager = program.module()(pixel_values), model(pixel_values)
    for name in OUTPUTS:
        torch.testing.assert_close(exported[name], eager[name], rtol=0, atol=1e-5)


def test_published_sizes_are_data_rows():
    assert set(hiera_model.SAM2_VARIANTS) == {f"{release}_hiera_{size}" for release in ("sam2", "sam2.1")
                                             for size in ("tiny", "small", "base_plus", "large")}
    variant = hiera_model.SAM2_VARIANTS["sam2.1_hiera_base_plus"]
    assert variant.license == "Apache-2.0" and variant.transformers_id == "facebook/sam2.1-hiera-base-plus"
    assert variant.config.output_shapes == {"image_embeddings": (256, 64, 64), "high_res_feats_0": (32, 256, 256),
                                            "high_res_feats_1": (64, 128, 128)}
    with torch.device("meta"):  # every published size builds (shapes only)
        for variant in hiera_model.SAM2_VARIANTS.values():
            hiera_model.sam2.Sam2ImageEncoder(variant.config)


@pytest.mark.parametrize("change, rule", [
    (dict(window_sizes=(12, 4, 14, 7)), "must be divisible by the first stage's window size 12"),
    (dict(window_sizes=(8, 4, 15, 7)), "window size 15 of stage 2 must be divisible by the query stride 2"),
    (dict(global_blocks=(5, 12)), "global-attention block 12 is past the depth: the blocks are 0..11"),
    (dict(global_blocks=(3,)), "global-attention block 3 is the first block of stage 2"),
    (dict(input_size=(1000, 1024)), "each side must be a multiple of 32"),
    (dict(window_sizes=(16, 4, 14, 7), input_size=(1056, 1056)),
     "grid 264 x 264 must be divisible by the first stage's window size 16"),
    (dict(num_heads=(1, 2, 5, 8)), "stage 2's width 384 must be divisible by its 5 heads"),
    (dict(patch_stride=8), "patch_stride 8 must be 4, as in every SAM 2 model"),
])
def test_bad_configs_are_one_line_naming_the_rule(change, rule):
    with pytest.raises(HieraModelError) as error:
        Sam2Config(**change)
    assert rule in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("section, key, value, rule", [
    ("backbone_config", "global_attention_blocks", [2, 40], "global-attention block 40 is past the depth: the "
                                                            "blocks are 0..6"),
    ("backbone_config", "hidden_size", True, "vision_config.backbone_config.hidden_size True must be a whole number "
                                             "from 1 to 4096"),
    ("backbone_config", "window_size_per_stage", [4, 4, 6, "2"], "vision_config.backbone_config."
                                                                 "window_size_per_stage [4, 4, 6, '2'] must be a list"),
    (None, "fpn_hidden_size", 1e9, "vision_config.fpn_hidden_size 1000000000.0 must be a whole number"),
])
def test_a_tampered_config_file_is_one_line_before_the_weights_are_read(sam2_checkpoint, tmp_path,  # noqa: F811
                                                                        section, key, value, rule):
    directory, _ = sam2_checkpoint
    shutil.copy(directory / "config.json", tmp_path / "config.json")
    config = json.loads((tmp_path / "config.json").read_text())
    (config["vision_config"][section] if section else config["vision_config"])[key] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 16)  # never read: the config is refused first
    with pytest.raises(HieraModelError) as error:
        hiera_model.load(tmp_path, task="image-encoder")
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'config.json'}: invalid SAM 2 config: ") and rule in message, message
    assert "\n" not in message


def test_sam2_and_hiera_checkpoints_say_which_model_they_are(sam2_checkpoint, tmp_path):  # noqa: F811
    directory, _ = sam2_checkpoint
    with pytest.raises(HieraModelError, match="a SAM 2 checkpoint .* not Hiera; load it with task='image-encoder'"):
        hiera_model.load(directory, task="classify")
    with pytest.raises(HieraModelError, match="task 'features' is timm's pooled vector, .* not transformers' SAM 2 "
                                              "checkpoint; load this one with task='image-encoder'"):
        hiera_model.load(directory, task="features")  # Hiera's task name, which SAM 2 has for timm's folders
    shutil.copy(directory / "model.safetensors", tmp_path / "sam2.safetensors")  # no config: the keys tell
    with pytest.raises(HieraModelError, match="a SAM 2 checkpoint .* not Hiera"):
        hiera_model.load(tmp_path / "sam2.safetensors")
    hiera = tmp_path / "hiera"
    transformers.HieraModel(transformers.HieraConfig(embed_dim=8, depths=[1, 1], num_heads=[1, 2], image_size=[32, 32],
                                                     num_query_pool=1, masked_unit_attention=[True, False]))\
        .save_pretrained(hiera)
    with pytest.raises(HieraModelError, match="a hiera checkpoint, not SAM 2"):
        hiera_model.load(hiera, task="image-encoder")
    with pytest.raises(HieraModelError, match="task 'image-encoder' is SAM 2's image encoder"):
        hiera_model.create("tiny", "image-encoder")
    with pytest.raises(HieraModelError, match="a SAM 2 image encoder has task 'image-encoder', not 'classify'"):
        hiera_model.create("sam2.1_hiera_tiny", "classify")


def test_models_lock_lists_the_published_sam2_folders_with_their_licence():
    entries = [e for e in lock.read(ROOT / "models.lock") if e.variant in hiera_model.SAM2_VARIANTS]
    folders = [e for e in entries if e.format == "transformers"]
    assert sorted(e.source for e in folders) == sorted(v.transformers_id for v in hiera_model.SAM2_VARIANTS.values())
    assert {(e.task, e.file, e.license) for e in folders} == {("image-encoder", "model.safetensors", "Apache-2.0")}
    # FAIR's .pt files, by the names FAIR publishes them under (SAM 2: 072824/, SAM 2.1: 092824/)
    fair = [e for e in entries if e.format == "fair"]
    assert sorted(e.file for e in fair) == sorted(v.fair_file for v in hiera_model.SAM2_VARIANTS.values())
    assert all(e.source == "https://dl.fbaipublicfiles.com/segment_anything_2/" + (
        "092824/" if e.file.startswith("sam2.1") else "072824/") + e.file for e in fair)
    assert {(e.task, e.license) for e in fair} == {("image-encoder", "Apache-2.0")}
    # timm's HieraDet backbones: SAM 2's at 896 (large: 1024), SAM 2.1's tagged _2pt1
    backbones = [e for e in entries if e.format == "timm"]
    assert sorted((e.variant, e.source) for e in backbones) == sorted(
        (f"{release}_hiera_{size}", f"timm/sam2_hiera_{size}.fb_r{896 if size != 'large' else 1024}{tag}")
        for release, tag in (("sam2", ""), ("sam2.1", "_2pt1")) for size in ("tiny", "small", "base_plus", "large"))
    assert {(e.task, e.file, e.license) for e in backbones} == {("backbone", "model.safetensors", "Apache-2.0")}
    assert len(entries) == len(folders) + len(fair) + len(backbones) == 24


def test_a_published_sam2_folder_without_a_recorded_hash_needs_consent(sam2_checkpoint, tmp_path,  # noqa: F811
                                                                       private_lock):
    directory = tmp_path / "sam2.1-hiera-tiny"  # the hub repository's name: models.lock's row, no sha256 yet
    shutil.copytree(sam2_checkpoint[0], directory)
    with pytest.raises(VerificationError, match="facebook/sam2.1-hiera-tiny/model.safetensors"):
        hiera_model.load(directory, task="image-encoder")
    with pytest.warns(UserWarning, match="unverified"):
        encoder = hiera_model.load(directory, task="image-encoder", allow_unverified=True)
    assert encoder.provenance["verified"] is False and encoder.provenance["sha256"] == lock.sha256(
        directory / "model.safetensors")
    lock.fill(directory / "model.safetensors")  # recorded: it loads, verified, and the licence stays
    assert hiera_model.load(directory, task="image-encoder").provenance["verified"] is True
    row = next(e for e in lock.read(private_lock) if e.source == "facebook/sam2.1-hiera-tiny")
    assert row.sha256 and row.license == "Apache-2.0"
    assert all("license" not in item for item in json.loads(private_lock.read_text())["checkpoints"]
               if item["variant"] not in hiera_model.SAM2_VARIANTS)


def test_inspect_describes_a_sam2_folder(sam2_checkpoint, capsys):  # noqa: F811
    from hiera_model.__main__ import main

    assert main(["inspect", str(sam2_checkpoint[0]), "--task", "image-encoder"]) == 0
    out = capsys.readouterr().out
    assert "SAM 2 image encoder, embed_dim 16, depths (1, 2, 3, 1)" in out and "global blocks (2, 4)" in out
    assert main(["inspect", str(sam2_checkpoint[0])]) == 2  # as Hiera: one line saying what it is
    assert "a SAM 2 checkpoint" in capsys.readouterr().err


def test_info_shows_the_sam2_table_with_its_licence(capsys):
    from hiera_model.__main__ import main

    assert main(["info", "sam2.1_hiera_tiny"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["SAM", "2", "variant"]
    assert lines[1].split() == ["sam2.1_hiera_tiny", "96", "1-2-4-8", "1-2-7-2", "8-4-14-7", "5,7,9", "27.24",
                                "Apache-2.0", "facebook/sam2.1-hiera-tiny"]


def test_random_weights_are_seeded():
    config = Sam2Config(embed_dim=8, depths=(1, 1, 2, 1), window_sizes=(4, 4, 2, 2), global_blocks=(3,),
                        input_size=(64, 64), fpn_dim=16)
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        first, again = (hiera_model.create(config, "image-encoder", seed=1)(pixel_values) for _ in range(2))
        other = hiera_model.create(config, "image-encoder", seed=2)(pixel_values)
    assert all(torch.equal(first[n], again[n]) and not torch.equal(first[n], other[n]) for n in OUTPUTS)


def timm_features_folder(directory):
    """The timm fixture's folder in `directory` with its head.norm redrawn: the fixture's is timm's init (ones and
    zeros), which a head without the norm's affine would pass too. Returns the folder and the state it holds."""
    folder = directory / "sam2_hiera_timm"
    shutil.copytree(TIMM_FOLDER, folder)
    state = safetensors.torch.load_file(folder / "model.safetensors")
    generator = torch.Generator().manual_seed(1)
    for name in ("head.norm.weight", "head.norm.bias"):
        state[name] = torch.randn(state[name].shape, generator=generator)
    safetensors.torch.save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    return folder, state


def timm_features(stage4: torch.Tensor, state: dict) -> dict[str, torch.Tensor]:
    """What timm 1.0.31's `sam2_hiera_*` model with num_classes=0 gives, from its last block's output (the last map of
    `forward_intermediates`, NCHW): `forward_features` is that map as NHWC, and `forward_head` is its
    ClNormMlpClassifierHead (pool 'avg', no hidden layer, no classifier): the mean over height and width, then
    head.norm (timm's LayerNorm, eps 1e-6)."""
    pooled = F.layer_norm(stage4.mean(dim=(2, 3)), stage4.shape[1:2], state["head.norm.weight"],
                          state["head.norm.bias"], eps=1e-6)
    return {"last_hidden_state": stage4.flatten(2).transpose(1, 2), "pooler_output": pooled}


@torch.no_grad()
def test_features_from_timm_equal_timms_pooled_vector(tmp_path):
    folder, state = timm_features_folder(tmp_path)
    expected_maps = safetensors.torch.load_file(FIXTURES / "reference" / "expected_sam2.safetensors")
    expected = timm_features(expected_maps["timm_stage4"], state)
    model = hiera_model.load(folder, task="features")
    assert model.output_names == ["last_hidden_state", "pooler_output"]
    got = model(expected_maps["pixel_values"])
    assert {k: tuple(v.shape) for k, v in got.items()} == {"last_hidden_state": (1, 9, 48), "pooler_output": (1, 48)}
    diffs = {name: (got[name] - expected[name]).abs().max().item() for name in expected}
    assert max(diffs.values()) <= 1e-5, diffs
    # the same folder as a backbone: its head's norm is read, checked and left out
    assert hiera_model.load(folder, task="backbone").output_names == ["stage1", "stage2", "stage3", "stage4"]


def test_features_need_timms_head_norm(tmp_path):
    headless = tmp_path / "headless"  # as timm saves a model after reset_classifier(0, reset_other=True)
    shutil.copytree(TIMM_FOLDER, headless)
    state = safetensors.torch.load_file(headless / "model.safetensors")
    safetensors.torch.save_file({k: v for k, v in state.items() if not k.startswith("head.")},
                                headless / "model.safetensors", metadata={"format": "pt"})
    cases = {headless: "timm's sam2_hiera folder has no head.norm (saved without its head), which task 'features' "
                       "pools through; load it with task='backbone'",
             FIXTURES / "reference" / "sam2_fair_small.pt": "task 'features' is timm's pooled vector, whose norm "
                                                             "(timm's head.norm) only timm's sam2_hiera folders hold, "
                                                             "not FAIR's SAM 2 checkpoint"}
    for path, rule in cases.items():
        with pytest.raises(HieraModelError) as error:
            hiera_model.load(path, task="features", allow_unverified=True)
        assert rule in str(error.value) and "\n" not in str(error.value), str(error.value)
    assert hiera_model.load(headless, task="backbone").output_names[-1] == "stage4"
