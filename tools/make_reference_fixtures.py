"""Write the golden fixtures for FAIR `hiera` and timm parity (tests/fixtures/reference/).

Those packages need torchvision, which here works only with the large torch 2.14.1 + torchvision
0.29.1 CUDA pair, so they stay out of the project's install. Run this once in a separate environment:

    python3 -m venv /tmp/refenv
    /tmp/refenv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm==1.0.31 hiera-transformer==0.1.4 safetensors
    /tmp/refenv/bin/pip install hydra-core iopath
    /tmp/refenv/bin/pip download --no-deps sam2==1.1.0 -d /tmp/sam2-src     # its sdist: sam2-1.1.0.tar.gz
    tar xzf /tmp/sam2-src/sam2-1.1.0.tar.gz -C /tmp/sam2-src
    PYTHONPATH=/tmp/sam2-src/sam2-1.1.0 /tmp/refenv/bin/python -m tools.make_reference_fixtures tests/fixtures/reference

(FAIR's `sam2` is used from its source: `pip install sam2` builds its optional CUDA extension, with torch in an
isolated build environment; the modeling code and the image predictor are plain Python.)

It builds one small seeded Hiera with FAIR's code, copies the same weights into timm's model through
timm's own checkpoint filter, saves each with the library's own save function, and records both
libraries' outputs on seeded inputs. It does the same for a small FAIR MAE model (`mae_*`: its outputs
for a mask drawn from recorded noise, as transformers draws it) and a small FAIR video model (`video_*`),
and for SAM 2 (`sam2_*`): a small SAM 2 built from FAIR's own classes, its features as FAIR's
`SAM2ImagePredictor.set_image` keeps them, and timm's `sam2_hiera` backbone with the same trunk weights.
The tests load the saved files with `hiera_model.load` and compare with these outputs.
"""

import json
import math
import shutil
import sys
from pathlib import Path

import hiera
import safetensors.torch
import timm
import torch
from timm.models import save_for_hf
from timm.models.hiera import checkpoint_filter_fn

# Small, but with every feature of the published models: four stages, three query poolings,
# mask-unit attention in two stages (and the lag into the third), a non-square input.
FAIR_ARGS = dict(embed_dim=16, num_heads=1, stages=(1, 2, 2, 1), input_size=(96, 128), num_classes=10)
# MAE with two query poolings like the published MAE models, and a small decoder.
MAE_ARGS = dict(embed_dim=16, num_heads=1, stages=(1, 2, 2, 1), input_size=(64, 96), q_pool=2, decoder_embed_dim=32,
                decoder_depth=2, decoder_num_heads=2)
MAE_RATIO = 0.6
# Video like `hiera_base_16x224` (3-D patches, pooling and mask units in space only, separate position
# embeddings), at 4 frames of 64 x 64.
VIDEO_ARGS = dict(embed_dim=16, num_heads=1, stages=(1, 2, 2, 1), num_classes=10, input_size=(4, 64, 64),
                  q_stride=(1, 2, 2), mask_unit_size=(1, 8, 8), patch_kernel=(3, 7, 7), patch_stride=(2, 4, 4),
                  patch_padding=(1, 3, 3), sep_pos_embed=True)
# SAM 2 (FAIR's sam2.modeling.backbones.hieradet.Hiera arguments): windows in every stage, padded windows
# (stage 3's window 4 on its 6 x 6 grid, the pooled window 2 on stage 4's 3 x 3 grid), two global-attention
# blocks, the 4 x 4 window position table tiled 6 x 6 times over the 7 x 7 background table resized to the
# 24 x 24 token grid, three query poolings; 6 wide so that the two checkpoints stay small.
SAM2_TRUNK_ARGS = dict(embed_dim=6, num_heads=1, stages=(1, 2, 2, 1), window_spec=(4, 4, 4, 2),
                       global_att_blocks=(2, 4), window_pos_embed_bkg_spatial_size=(7, 7))
SAM2_NECK_ARGS = dict(d_model=32, fpn_top_down_levels=[2, 3], fpn_interp_model="nearest")  # as FAIR's yaml files
SAM2_IMAGE_SIZE = 96
SEED = 0


def main(out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    torch.manual_seed(SEED)
    fair = hiera.Hiera(**FAIR_ARGS)
    # FAIR scales the fresh head by 1e-3; draw it like the other layers so that logits are not tiny.
    torch.nn.init.trunc_normal_(fair.head.projection.weight, std=0.02)
    fair.eval()

    timm_args = dict(embed_dim=16, num_heads=1, stages=(1, 2, 2, 1), img_size=(96, 128), num_classes=10)
    tm = timm.create_model("hiera_tiny_224", pretrained=False, **timm_args)
    tm.load_state_dict(checkpoint_filter_fn(fair.state_dict(), tm))
    tm.eval()

    # The checkpoints, each written by its library's own code.
    torch.save({"model_state": fair.state_dict()}, out / "hiera_fair_small.pth")  # FAIR's .pth layout
    fair.save_pretrained(out / "fair_hub")  # FAIR's PyTorchModelHubMixin: config.json + model.safetensors
    save_for_hf(tm, out / "timm_hub", model_args=timm_args, safe_serialization=True)

    inputs = torch.randn(3, 3, *FAIR_ARGS["input_size"], generator=torch.Generator().manual_seed(SEED))
    with torch.no_grad():
        fair_probs, fair_stages = fair(inputs, return_intermediates=True)  # eval: the head applies softmax
        fair_logits = fair.train()(inputs)  # train mode skips that softmax (no dropout, no drop path here)
        fair.eval()
        timm_logits = tm(inputs)
        timm_stages = tm.forward_intermediates(inputs, intermediates_only=True)  # NCHW
    expected = {"pixel_values": inputs, "fair_logits": fair_logits, "fair_probs": fair_probs,
                "timm_logits": timm_logits}
    expected.update({f"fair_stage{i}": s for i, s in enumerate(fair_stages)})
    expected.update({f"timm_stage{i}": s for i, s in enumerate(timm_stages)})
    safetensors.torch.save_file({k: v.contiguous() for k, v in expected.items()}, out / "expected.safetensors")
    safetensors.torch.save_file(mae(out), out / "expected_mae.safetensors")
    safetensors.torch.save_file(video(out), out / "expected_video.safetensors")
    safetensors.torch.save_file(sam2(out), out / "expected_sam2.safetensors")
    about = {
        "made_by": "tools/make_reference_fixtures.py",
        "fair_args": FAIR_ARGS, "timm_args": timm_args, "mae_args": MAE_ARGS, "mae_ratio": MAE_RATIO,
        "video_args": VIDEO_ARGS, "seed": SEED,
        "sam2_trunk_args": SAM2_TRUNK_ARGS, "sam2_neck_args": SAM2_NECK_ARGS, "sam2_image_size": SAM2_IMAGE_SIZE,
        "sam2_dropped": "sam_mask_decoder.transformer.* and sam_mask_decoder.iou_prediction_head.* (not written, to "
                        "keep the file small: FAIR's checkpoints hold them; the loader drops every sam_mask_decoder "
                        "tensor but conv_s0 and conv_s1)",
        "versions": {"torch": torch.__version__, "timm": timm.__version__, "hiera-transformer": "0.1.4",
                     "sam2": "1.1.0"},
    }
    (out / "about.json").write_text(json.dumps(about, indent=1) + "\n")


def mae(out: Path) -> dict[str, torch.Tensor]:
    """FAIR's MAE model saved as FAIR's .pth; its outputs for a mask drawn from recorded noise."""
    torch.manual_seed(SEED)
    model = hiera.MaskedAutoencoderHiera(**MAE_ARGS).eval()
    with torch.no_grad():  # FAIR zeroes the biases and draws the decoder like MAE; perturb all so nothing is trivial
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    torch.save({"model_state": model.state_dict()}, out / "mae_fair_small.pth")
    generator = torch.Generator().manual_seed(SEED)
    inputs = torch.randn(3, 3, *MAE_ARGS["input_size"], generator=generator)
    units = math.prod(model.mask_spatial_shape)
    noise = torch.rand(3, units, generator=generator)
    # FAIR's get_random_mask, with the noise given instead of drawn: the lowest noise stays visible.
    keep = int(units * (1 - MAE_RATIO))
    mask = torch.zeros(3, units)
    mask[:, :keep] = 1
    mask = torch.gather(mask, 1, noise.argsort(1).argsort(1)).bool()
    with torch.no_grad():
        loss, pred, label, visible = model(inputs, mask=mask)
    return {"pixel_values": inputs, "noise": noise, "mask": visible, "loss": loss, "pred": pred, "label": label}


def video(out: Path) -> dict[str, torch.Tensor]:
    """FAIR's video model saved as FAIR's .pth and with its save_pretrained; its logits and stage maps."""
    torch.manual_seed(SEED)
    model = hiera.Hiera(**VIDEO_ARGS)
    torch.nn.init.trunc_normal_(model.head.projection.weight, std=0.02)
    model.eval()
    torch.save({"model_state": model.state_dict()}, out / "video_fair_small.pth")
    model.save_pretrained(out / "video_fair_hub")
    inputs = torch.randn(2, 3, *VIDEO_ARGS["input_size"], generator=torch.Generator().manual_seed(SEED))
    with torch.no_grad():
        _, stages = model(inputs, return_intermediates=True)
        logits = model.train()(inputs)  # without the eval-mode softmax
    expected = {"pixel_values": inputs, "logits": logits}
    expected.update({f"stage{i}": s.contiguous() for i, s in enumerate(stages)})
    return expected


def sam2(out: Path) -> dict[str, torch.Tensor]:
    """A small SAM 2 built from FAIR's classes as its yaml files build them (Hiera trunk, FpnNeck, ImageEncoder
    with scalp 1, SAM2Base with the high-resolution features and the no-memory embedding added), saved as FAIR's
    training saves it ({"model": state dict}); the features `SAM2ImagePredictor.set_image` keeps for a seeded
    image; and timm's `sam2_hiera` backbone with the same trunk weights (timm's own filter from FAIR's layout),
    saved with `save_for_hf`, and its four stage maps."""
    import numpy as np
    from sam2.modeling.backbones.hieradet import Hiera as FairHieraDet
    from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
    from sam2.modeling.position_encoding import PositionEmbeddingSine
    from sam2.modeling.sam2_base import SAM2Base
    from sam2.sam2_image_predictor import SAM2ImagePredictor
    from timm.models.hieradet_sam2 import checkpoint_filter_fn as sam2_filter

    torch.manual_seed(SEED)
    trunk = FairHieraDet(**SAM2_TRUNK_ARGS)
    neck = FpnNeck(PositionEmbeddingSine(num_pos_feats=SAM2_NECK_ARGS["d_model"]),
                   backbone_channel_list=trunk.channel_list, **SAM2_NECK_ARGS)
    # The memory modules are not used for an image's features; SAM2Base only stores them.
    model = SAM2Base(ImageEncoder(trunk, neck, scalp=1), torch.nn.Identity(), torch.nn.Identity(),
                     image_size=SAM2_IMAGE_SIZE, use_high_res_features_in_sam=True, directly_add_no_mem_embed=True)
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():  # FAIR draws the tables and the no-memory embedding small: redraw all so each part counts
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    model.eval()
    state = {k: v for k, v in model.state_dict().items()
             if not k.startswith(("sam_mask_decoder.transformer.", "sam_mask_decoder.iou_prediction_head."))}
    torch.save({"model": state}, out / "sam2_fair_small.pt")

    predictor = SAM2ImagePredictor(model)
    grid = SAM2_IMAGE_SIZE // 4
    predictor._bb_feat_sizes = [(grid, grid), (grid // 2, grid // 2), (grid // 4, grid // 4)]  # 1024's otherwise
    image = np.random.default_rng(SEED).integers(0, 256, (80, 112, 3), dtype=np.uint8)
    predictor.set_image(image)
    pixel_values = predictor._transforms(image)[None]  # the input set_image gave the model
    with torch.no_grad():
        trunk_maps = model.image_encoder.trunk(pixel_values)

    tm = timm.create_model("sam2_hiera_tiny", pretrained=False, num_classes=0, embed_dim=6, num_heads=1,
                           stages=(1, 2, 2, 1), window_spec=(4, 4, 4, 2), global_att_blocks=(2, 4),
                           global_pos_size=(7, 7))
    missing, unexpected = tm.load_state_dict(sam2_filter(state, tm, prefix="image_encoder.trunk."), strict=False)
    assert not unexpected and all(k.startswith("head.") for k in missing), (missing, unexpected)
    tm.eval()
    save_for_hf(tm, out / "sam2_timm_hub", data_config={"input_size": (3, SAM2_IMAGE_SIZE, SAM2_IMAGE_SIZE)},
                safe_serialization=True)
    with torch.no_grad():
        timm_maps = tm.forward_intermediates(pixel_values, intermediates_only=True)  # NCHW
    expected = {"pixel_values": pixel_values, "image_embed": predictor._features["image_embed"]}
    expected.update({f"high_res_feats_{i}": t for i, t in enumerate(predictor._features["high_res_feats"])})
    expected.update({f"fair_stage{i + 1}": t for i, t in enumerate(trunk_maps)})
    expected.update({f"timm_stage{i + 1}": t for i, t in enumerate(timm_maps)})
    return {k: v.contiguous() for k, v in expected.items()}


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/reference"))
