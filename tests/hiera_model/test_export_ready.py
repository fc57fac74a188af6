"""What the export issue builds on: the model traces with only the batch dynamic, and unrolls with one gather."""

import pytest
import torch

import hiera_model
from hiera_model import HieraConfig

CONFIG = HieraConfig(embed_dim=16, depths=(1, 2, 2, 1), input_size=(96, 128), num_classes=10)


@pytest.mark.parametrize("task", ["classify", "features"])
@torch.no_grad()
def test_torch_export_with_a_dynamic_batch(task):
    model = hiera_model.create(CONFIG, task=task)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (torch.randn(2, 3, 96, 128),),
                                  dynamic_shapes={"pixel_values": {0: batch}})
    ops = [node.target for node in program.graph.nodes if node.op == "call_function"]
    assert ops.count(torch.ops.aten.index_select.default) == 1  # the unroll: one constant gather
    assert torch.ops.aten.amax.default in ops  # query pooling
    assert torch.ops.aten.permute.default not in ops  # head split and merge: rank-4 transposes only
    assert torch.ops.aten.index.Tensor not in ops

    pixel_values = torch.randn(5, 3, 96, 128)  # another batch size than the traced one
    exported, eager = program.module()(pixel_values), model(pixel_values)
    if task == "features":
        for name in ("last_hidden_state", "pooler_output"):
            torch.testing.assert_close(exported[name], eager[name], rtol=0, atol=1e-6)
    else:
        torch.testing.assert_close(exported, eager, rtol=0, atol=1e-6)
