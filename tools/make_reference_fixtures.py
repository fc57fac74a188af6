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
and for SAM 2 (`sam2_*`): a small SAM 2 built from FAIR's own classes with the decoder settings of FAIR's
published configs, saved whole as FAIR saves it, its features as FAIR's `SAM2ImagePredictor.set_image` keeps
them, `SAM2ImagePredictor.predict`'s answers for point, box, point-and-box and mask prompts
(`expected_sam2_decoder.safetensors`), and timm's `sam2_hiera` backbone with the same trunk weights. It also
builds each published config with FAIR's `build_sam2` (random weights, nothing downloaded) and records its
decoder's settings and tensor shapes in about.json (`sam2_published_decoder`).
The tests load the saved files with `hiera_model.load` and compare with these outputs.

`--sam2-only` rewrites SAM 2's files and about.json alone (the other fixtures' outputs differ in their last
bits from one CPU to another, so they are not rewritten without need).
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
TIMM_ARGS = dict(embed_dim=16, num_heads=1, stages=(1, 2, 2, 1), img_size=(96, 128), num_classes=10)
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
# SAM2Base's arguments as every published yaml file (SAM 2 and 2.1) sets those that shape the prompt encoder and
# mask decoder or what the image predictor does with them, and the three build_sam2 adds (apply_postprocessing);
# `published_decoders` checks them against the eight configs. The rest of a config is the video model's.
SAM2_MODEL_ARGS = dict(use_high_res_features_in_sam=True, directly_add_no_mem_embed=True,
                       iou_prediction_use_sigmoid=True, pred_obj_scores=True, pred_obj_scores_mlp=True,
                       use_multimask_token_for_obj_ptr=True, multimask_output_in_sam=True, use_obj_ptrs_in_encoder=True,
                       fixed_no_obj_ptr=True, use_mlp_for_obj_ptr_proj=True,
                       sam_mask_decoder_extra_args=dict(dynamic_multimask_via_stability=True,
                                                        dynamic_multimask_stability_delta=0.05,
                                                        dynamic_multimask_stability_thresh=0.98))
# SAM 2.1's video tensors, which its files hold (the loaders drop them)
SAM2_1_ARGS = dict(no_obj_embed_spatial=True, proj_tpos_enc_in_obj_ptrs=True)
# SAM2Base builds its mask decoder with a 2048-wide MLP and a 256-wide IoU head whatever the width; narrower here
# (FAIR's MaskDecoder and TwoWayTransformer, its other arguments as SAM2Base passes them) so the file stays small.
SAM2_DECODER_WIDTHS = dict(mlp_dim=64, iou_head_hidden_dim=32)
SAM2_PUBLISHED = ("sam2/sam2_hiera_t", "sam2/sam2_hiera_s", "sam2/sam2_hiera_b+", "sam2/sam2_hiera_l",
                  "sam2.1/sam2.1_hiera_t", "sam2.1/sam2.1_hiera_s", "sam2.1/sam2.1_hiera_b+", "sam2.1/sam2.1_hiera_l")
# SAM2ImagePredictor.predict's calls on the seeded 80 x 112 image, in its pixels: (points with labels, box, whether
# a mask prompt is given (the low-resolution logits of the first call's first mask), multimask_output)
SAM2_PROMPTS = {
    "point": ([(40, 30, 1)], None, False, True),
    "points": ([(40, 30, 1), (90, 60, 0)], None, False, False),
    "box": ([], (10, 15, 70, 60), False, False),
    "point_box": ([(50, 40, 1)], (20, 10, 100, 70), False, True),
    "point_mask": ([(60, 50, 1)], None, True, False),
}
SEED = 0


def main(out: Path, sam2_only: bool = False) -> None:
    if sam2_only:
        features, predictions = sam2(out)
        safetensors.torch.save_file(features, out / "expected_sam2.safetensors")
        safetensors.torch.save_file(predictions, out / "expected_sam2_decoder.safetensors")
        write_about(out)
        return
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    torch.manual_seed(SEED)
    fair = hiera.Hiera(**FAIR_ARGS)
    # FAIR scales the fresh head by 1e-3; draw it like the other layers so that logits are not tiny.
    torch.nn.init.trunc_normal_(fair.head.projection.weight, std=0.02)
    fair.eval()

    tm = timm.create_model("hiera_tiny_224", pretrained=False, **TIMM_ARGS)
    tm.load_state_dict(checkpoint_filter_fn(fair.state_dict(), tm))
    tm.eval()

    # The checkpoints, each written by its library's own code.
    torch.save({"model_state": fair.state_dict()}, out / "hiera_fair_small.pth")  # FAIR's .pth layout
    fair.save_pretrained(out / "fair_hub")  # FAIR's PyTorchModelHubMixin: config.json + model.safetensors
    save_for_hf(tm, out / "timm_hub", model_args=TIMM_ARGS, safe_serialization=True)

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
    features, predictions = sam2(out)
    safetensors.torch.save_file(features, out / "expected_sam2.safetensors")
    safetensors.torch.save_file(predictions, out / "expected_sam2_decoder.safetensors")
    write_about(out)


def write_about(out: Path) -> None:
    about = {
        "made_by": "tools/make_reference_fixtures.py",
        "fair_args": FAIR_ARGS, "timm_args": TIMM_ARGS, "mae_args": MAE_ARGS, "mae_ratio": MAE_RATIO,
        "video_args": VIDEO_ARGS, "seed": SEED,
        "sam2_trunk_args": SAM2_TRUNK_ARGS, "sam2_neck_args": SAM2_NECK_ARGS, "sam2_image_size": SAM2_IMAGE_SIZE,
        "sam2_model_args": {**SAM2_MODEL_ARGS, **SAM2_1_ARGS}, "sam2_decoder_widths": SAM2_DECODER_WIDTHS,
        "sam2_prompts": {name: {"points": points, "box": box, "mask_input": mask, "multimask_output": multimask}
                         for name, (points, box, mask, multimask) in SAM2_PROMPTS.items()},
        "sam2_published_decoder": published_decoders(),
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


def sam2(out: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A small SAM 2 built from FAIR's classes as its yaml files build them (Hiera trunk, FpnNeck, ImageEncoder
    with scalp 1, SAM2Base with the published configs' decoder settings, `SAM2_MODEL_ARGS`, and a narrower MLP and
    IoU head), saved whole as FAIR's training saves it ({"model": state dict}); the features
    `SAM2ImagePredictor.set_image` keeps for a seeded image, and timm's `sam2_hiera` backbone with the same trunk
    weights (timm's own filter from FAIR's layout), saved with `save_for_hf`, and its four stage maps; and
    `SAM2ImagePredictor.predict`'s answers for `SAM2_PROMPTS` (hole and sprinkle filling off)."""
    import numpy as np
    from sam2.modeling.backbones.hieradet import Hiera as FairHieraDet
    from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
    from sam2.modeling.position_encoding import PositionEmbeddingSine
    from sam2.modeling.sam.mask_decoder import MaskDecoder
    from sam2.modeling.sam.transformer import TwoWayTransformer
    from sam2.modeling.sam2_base import SAM2Base
    from sam2.sam2_image_predictor import SAM2ImagePredictor
    from timm.models.hieradet_sam2 import checkpoint_filter_fn as sam2_filter

    torch.manual_seed(SEED)
    trunk = FairHieraDet(**SAM2_TRUNK_ARGS)
    neck = FpnNeck(PositionEmbeddingSine(num_pos_feats=SAM2_NECK_ARGS["d_model"]),
                   backbone_channel_list=trunk.channel_list, **SAM2_NECK_ARGS)
    # The memory modules are not used for an image's features; SAM2Base only stores them.
    model = SAM2Base(ImageEncoder(trunk, neck, scalp=1), torch.nn.Identity(), torch.nn.Identity(),
                     image_size=SAM2_IMAGE_SIZE, **SAM2_MODEL_ARGS, **SAM2_1_ARGS)
    dim = model.sam_prompt_embed_dim
    model.sam_mask_decoder = MaskDecoder(  # as SAM2Base._build_sam_heads builds it, but SAM2_DECODER_WIDTHS
        num_multimask_outputs=3, transformer=TwoWayTransformer(depth=2, embedding_dim=dim, num_heads=8,
                                                               mlp_dim=SAM2_DECODER_WIDTHS["mlp_dim"]),
        transformer_dim=dim, iou_head_depth=3, iou_head_hidden_dim=SAM2_DECODER_WIDTHS["iou_head_hidden_dim"],
        use_high_res_features=model.use_high_res_features_in_sam,
        iou_prediction_use_sigmoid=model.iou_prediction_use_sigmoid, pred_obj_scores=model.pred_obj_scores,
        pred_obj_scores_mlp=model.pred_obj_scores_mlp,
        use_multimask_token_for_obj_ptr=model.use_multimask_token_for_obj_ptr, **SAM2_MODEL_ARGS[
            "sam_mask_decoder_extra_args"])
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():  # FAIR draws the tables and the no-memory embedding small: redraw all so each part counts
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    model.eval()
    state = model.state_dict()
    torch.save({"model": state}, out / "sam2_fair_small.pt")

    predictor = SAM2ImagePredictor(model, mask_threshold=0.0, max_hole_area=0.0, max_sprinkle_area=0.0)
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

    # What the prompt encoder gave the mask decoder in each call: FAIR's token order (box corners, points, padding)
    prompt_embeddings = []
    hook = model.sam_prompt_encoder.register_forward_hook(lambda module, args, output: prompt_embeddings.append(output))
    predictions, first_logits = {}, None
    for name, (points, box, with_mask, multimask) in SAM2_PROMPTS.items():
        masks, scores, logits = predictor.predict(
            point_coords=np.array([p[:2] for p in points], np.float32) if points else None,
            point_labels=np.array([p[2] for p in points], np.int32) if points else None,
            box=None if box is None else np.array(box, np.float32),
            mask_input=first_logits[:1] if with_mask else None, multimask_output=multimask)
        first_logits = logits if first_logits is None else first_logits
        sparse, dense = prompt_embeddings.pop()
        # the masks at the image's size, bit-packed (np.packbits of the bool [masks, 80, 112]); the low-resolution
        # logits (FAIR clamps them to +-32) and their predicted IoU; the sparse prompt embeddings, and the dense one
        # where a mask is given
        predictions.update({f"{name}.masks_packed": torch.from_numpy(np.packbits(masks.astype(bool))),
                            f"{name}.low_res_logits": torch.from_numpy(logits),
                            f"{name}.iou": torch.from_numpy(scores), f"{name}.sparse": sparse[0]})
        if with_mask:
            predictions[f"{name}.dense"] = dense[0]
    hook.remove()
    return ({k: v.contiguous() for k, v in expected.items()},
            {k: v.contiguous() for k, v in predictions.items()})


def published_decoders() -> dict:
    """Each published config built with FAIR's `build_sam2` (random weights: no checkpoint is read): its prompt
    encoder's and mask decoder's settings, which must be the same for all eight, and the shapes of their tensors."""
    from sam2.build_sam import build_sam2

    found = {}
    for name in SAM2_PUBLISHED:
        model = build_sam2(f"configs/{name}.yaml", ckpt_path=None, device="cpu")
        decoder, transformer = model.sam_mask_decoder, model.sam_mask_decoder.transformer
        settings = {
            "image_size": model.image_size, "backbone_stride": model.backbone_stride,
            "hidden_dim": model.hidden_dim, "mask_in_chans": model.sam_prompt_encoder.mask_downscaling[0].out_channels
            * 4, "transformer_depth": transformer.depth, "mlp_dim": transformer.mlp_dim,
            "num_heads": transformer.num_heads,
            "attention_downsample_rate": transformer.embedding_dim // transformer.final_attn_token_to_image
            .internal_dim, "num_multimask_outputs": decoder.num_multimask_outputs,
            "iou_head_depth": decoder.iou_prediction_head.num_layers,
            "iou_head_hidden_dim": decoder.iou_prediction_head.layers[0].out_features,
            "iou_prediction_use_sigmoid": decoder.iou_prediction_head.sigmoid_output,
            "use_high_res_features": decoder.use_high_res_features, "pred_obj_scores": decoder.pred_obj_scores,
            "dynamic_multimask_via_stability": decoder.dynamic_multimask_via_stability,
            "dynamic_multimask_stability_delta": decoder.dynamic_multimask_stability_delta,
            "dynamic_multimask_stability_thresh": decoder.dynamic_multimask_stability_thresh,
            "directly_add_no_mem_embed": model.directly_add_no_mem_embed,
            "shapes": {k: list(v.shape) for k, v in model.state_dict().items()
                       if k.startswith(("sam_prompt_encoder.", "sam_mask_decoder."))}}
        for key, value in SAM2_MODEL_ARGS.items():  # the small model's arguments are the published ones
            value = value if key != "sam_mask_decoder_extra_args" else {k: getattr(decoder, k) for k in value}
            assert getattr(model, key) == value, (name, key, getattr(model, key), value)
        found[name] = settings
        del model
    first = found[SAM2_PUBLISHED[0]]
    assert all(settings == first for settings in found.values()), "the published decoders differ"
    return {"configs": list(SAM2_PUBLISHED), **first}


if __name__ == "__main__":
    arguments = [a for a in sys.argv[1:] if a != "--sam2-only"]
    main(Path(arguments[0] if arguments else "tests/fixtures/reference"), sam2_only="--sam2-only" in sys.argv[1:])
