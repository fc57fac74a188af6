import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers.models.hiera.modeling_hiera import unroll as transformers_unroll

import hiera_model
from hiera_model import HieraConfig
from hiera_model.unroll import reroll_order, stage_grids, unroll_order


def test_docstring_example():
    assert unroll_order((4, 4), [(2, 2)]).tolist() == [0, 2, 8, 10, 1, 3, 9, 11, 4, 6, 12, 14, 5, 7, 13, 15]
    # The model's order: each 2 x 2 mask unit contiguous.
    assert unroll_order((4, 4), [(2, 2)], windows=4).tolist() == [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]


@pytest.mark.parametrize("image_size, schedule", [
    ((224, 224), [(2, 2)] * 3),  # every published image variant
    ((64, 96), [(2, 2)] * 2),
    ((96, 128), [(2, 2)] * 3),
    ((64, 64), [(2, 4)]),
])
def test_unroll_is_transformers_unroll(image_size, schedule):
    """Applied to token numbers, the reference's view/permute chain yields our index vector."""
    size = [s // 4 for s in image_size]
    tokens = torch.arange(np.prod(size), dtype=torch.float64).reshape(1, -1, 1)
    expected = transformers_unroll(tokens, image_shape=image_size, patch_stride=(4, 4), schedule=schedule)
    assert unroll_order(size, schedule).tolist() == expected.flatten().long().tolist()


def test_reroll_inverts_unroll():
    order = unroll_order((24, 32), [(2, 2)] * 3)
    assert (order[reroll_order((24, 32), [(2, 2)] * 3)] == np.arange(24 * 32)).all()


def test_pooling_an_unrolled_grid_is_a_max_pool():
    """The property the model relies on: a max over the outermost stride group is a 2 x 2 max-pool."""
    grid = torch.randn(1, 1, 8, 12)
    unrolled = grid.flatten(2)[:, :, torch.from_numpy(unroll_order((8, 12), [(2, 2)] * 2))]
    pooled = unrolled.unflatten(2, (4, -1)).amax(2)
    rerolled = pooled[:, :, torch.from_numpy(reroll_order((4, 6), [(2, 2)]))].reshape(1, 1, 4, 6)
    assert torch.equal(rerolled, torch.nn.functional.max_pool2d(grid, 2))


def test_stage_grids_of_base():
    grids = stage_grids(hiera_model.VARIANTS["base"].config)
    assert [size for size, _ in grids] == [(56, 56), (28, 28), (14, 14), (7, 7)]
    assert [len(schedule) for _, schedule in grids] == [3, 2, 1, 0]


class MaxRank(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.rank = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.rank = max(self.rank, t.dim())
        return out


@pytest.mark.parametrize("variant", [
    "tiny",
    HieraConfig(embed_dim=16, depths=(1, 2, 2, 1), input_size=(96, 128), num_classes=10),
])
@torch.no_grad()
def test_no_tensor_above_rank_4(variant):
    """LiteRT's GPU delegate and NNAPI take rank 4 at most; the reference code reaches 10 for video. Every op here
    stays at 4 or less."""
    model = hiera_model.create(variant, task="features")
    pixel_values = torch.randn(2, 3, *model.config.input_size)
    with MaxRank() as mode:
        model.forward_features(pixel_values, return_stages=True)
        model(pixel_values)
    assert mode.rank == 4
