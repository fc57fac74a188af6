"""A small SAM 2 that keeps every feature of the published ones, as transformers saves it.

16-wide HieraDet at 128 x 128 (a 32 x 32 token grid): windows in every stage, padded windows (stage 3's
window 6 on an 8 x 8 grid, and the pooled window 3 on stage 4's 4 x 4 grid), two global-attention
blocks, the window position embedding tiled 8 x 8 times over a 7 x 7 background table, three query
poolings, and the neck's top-down level. transformers initializes the position tables and the
no-memory embedding to zeros and the rest with std 0.02; here every weight is redrawn with std 0.2 so that
each part moves the outputs (a test that a zero table passes proves nothing about its order).
"""

import pytest
import torch
import transformers
from transformers import Sam2Config, Sam2HieraDetConfig, Sam2Model, Sam2VisionConfig

transformers.logging.set_verbosity_error()

SIZE = 128
OTHER_SIZE = 160  # a 40 x 40 grid: other paddings, and an odd 5 x 5 grid in stage 4
OUTPUTS = ("high_res_feats_0", "high_res_feats_1", "image_embeddings")  # get_image_embeddings' order


def small_config() -> Sam2Config:
    backbone = Sam2HieraDetConfig(
        hidden_size=16, num_attention_heads_per_stage=[1, 2, 4, 8], blocks_per_stage=[1, 2, 3, 1],
        embed_dim_per_stage=[16, 32, 64, 128], window_size_per_stage=[4, 4, 6, 2], global_attention_blocks=[2, 4],
        window_positional_embedding_background_size=[7, 7], image_size=[SIZE, SIZE])
    grid = SIZE // 4
    vision = Sam2VisionConfig(backbone_config=backbone, backbone_channel_list=[128, 64, 32, 16], fpn_hidden_size=32,
                              backbone_feature_sizes=[[grid, grid], [grid // 2, grid // 2], [grid // 4, grid // 4]])
    return Sam2Config(vision_config=vision, prompt_encoder_config=dict(hidden_size=32, image_size=SIZE),
                      mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2,
                                               iou_head_hidden_dim=32))


@torch.no_grad()
def reference_embeddings(model: Sam2Model, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
    """What SAM 2's predictor feeds the mask decoder: `get_image_embeddings`, by our output names. It shapes
    its outputs by the config's `backbone_feature_sizes`, so they are set for the input's size."""
    grid = pixel_values.shape[-1] // 4
    model.backbone_feature_sizes = [[grid, grid], [grid // 2, grid // 2], [grid // 4, grid // 4]]
    return dict(zip(OUTPUTS, model.get_image_embeddings(pixel_values)))


@pytest.fixture(scope="session")
def sam2_checkpoint(tmp_path_factory):
    """(directory, model): the small transformers Sam2Model, seeded, saved with `save_pretrained`."""
    torch.manual_seed(0)
    model = Sam2Model(small_config()).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    directory = tmp_path_factory.mktemp("sam2-small")
    model.save_pretrained(directory)
    return directory, model


# The encoder's precisions of the shared family export; the decoder's are fp32 and fp16
FAMILY_PRECISIONS = ("fp32", "fp16", "int8")
# What its Hub layout adds to the folder: transformers.js' SAM 2 files (docs/hub.md)
FAMILY_HUB_FILES = {"onnx/vision_encoder.onnx", "onnx/vision_encoder_fp16.onnx", "onnx/vision_encoder_quantized.onnx",
                    "onnx/prompt_encoder_mask_decoder.onnx", "onnx/prompt_encoder_mask_decoder_fp16.onnx",
                    "config.json", "preprocessor_config.json", "README.md"}


@pytest.fixture(scope="session")
def segmenter_family(sam2_checkpoint, tmp_path_factory):  # noqa: F811  (the fixture above)
    """(folder, report, stem): the small checkpoint's encoder and decoder as one export (`--task segmenter`) with
    the Hub layout beside it, made once for test_segment_family and tests/hub/test_sam2_hub."""
    from export import Options, segmenter

    out = tmp_path_factory.mktemp("segmenter-family")
    report = segmenter.run(Options(weights=str(sam2_checkpoint[0]), task="segmenter", batch=None, out_dir=out,
                                   precisions=FAMILY_PRECISIONS, layout="hub"))
    return out, report, report["artifacts"]["fp32"]["file"].removesuffix(".onnx")
