"""Issue 26's rule for comparing masks (`export.mask_decoder.compare_masks`), on masks made by hand: which masks
count, and which of SAM 2's decisions are taken at their threshold (left out and counted) or otherwise (an error)."""

import numpy as np
import pytest

from export.mask_decoder import (compare_masks, decided_at_threshold, decisions, judge, mask_row_failures,
                                 prompt_errors, stability_range)

STABILITY = (0.05, 0.98)  # SAM 2's delta and threshold


def square(side: int, inside: int, value: float = 5.0) -> np.ndarray:
    """[side, side] logits: `value` on the top-left `inside` x `inside` square, -`value` elsewhere."""
    logits = np.full((side, side), -value, np.float32)
    logits[:inside, :inside] = value
    return logits


def test_stability_range_by_hand():
    # 100 pixels: 90 far inside (5.0), 9 at 0.08 (above +delta, within 0.1 of it), 1 at 0.0 (between -delta and +delta)
    single = np.full(100, 5.0, np.float32)
    single[90:99], single[99] = 0.08, 0.0
    single = single.reshape(1, 10, 10)
    exact_low, exact_high = stability_range(single, 0.05, 0.0)
    assert exact_low == exact_high == pytest.approx(99 / 100)  # SAM 2's own score: above +0.05 over above -0.05
    low, high = stability_range(single, 0.05, 0.1)
    assert low == pytest.approx(90 / 100) and high == pytest.approx(1.0)  # 0.08 may fall below +0.05; 0.0 may rise
    low, high = stability_range(single, 0.05, 1e-3)
    assert low == high == pytest.approx(99 / 100)  # nothing within 1e-3 of +-0.05


def test_decisions_read_which_mask_answers():
    masks = np.stack([square(8, 4), square(8, 3), square(8, 5), square(8, 6)])[None].repeat(3, axis=0)
    masks[1, 0] = masks[1, 2]  # the fallback copied multimask mask 2
    masks[2, 0] = masks[2, 3]
    assert decisions(masks).tolist() == [0, 2, 3]


def test_a_decision_at_its_threshold_and_one_that_is_not():
    near = np.full((1, 10, 10), 5.0, np.float32)
    near[0, 0, :3] = 0.08  # stability 1.0 now; as low as 0.97 with logits moved by 0.1: it straddles 0.98
    far = np.full((1, 10, 10), 5.0, np.float32)  # stability 1.0, nothing near +-delta: no rounding changes it
    gap_small, gap_big = np.array([0.001]), np.array([0.2])
    one, zero, two = np.array([1]), np.array([0]), np.array([2])
    assert decided_at_threshold(zero, one, near, gap_big, STABILITY, 0.1, 1e-4).tolist() == [True]
    assert decided_at_threshold(zero, one, near, gap_big, STABILITY, 1e-3, 1e-4).tolist() == [False]
    assert decided_at_threshold(zero, one, far, gap_small, STABILITY, 0.1, 1e-4).tolist() == [False]
    assert decided_at_threshold(zero, zero, near, gap_small, STABILITY, 0.1, 1e-4).tolist() == [False]  # the same
    # best of three: a tie where the two scores may each move by half the gap
    assert decided_at_threshold(one, two, far, gap_small, STABILITY, 1e-3, 5e-4).tolist() == [True]
    assert decided_at_threshold(one, two, far, gap_small, STABILITY, 1e-3, 4e-4).tolist() == [False]
    # one tolerance per prompt
    both = np.concatenate([near, near])
    assert decided_at_threshold(np.array([0, 0]), np.array([1, 1]), both, np.array([0.2, 0.2]), STABILITY,
                                np.array([0.1, 1e-3]), np.array([1e-4, 1e-4])).tolist() == [True, False]


def test_each_prompts_tolerance_is_its_own_error_on_the_multimask_masks():
    reference = {"masks": np.zeros((2, 4, 3, 3), np.float32), "iou_scores": np.zeros((2, 4), np.float32)}
    got = {"masks": reference["masks"].copy(), "iou_scores": reference["iou_scores"].copy()}
    got["masks"][0, 0] = 9.0  # mask 0 (the decision's answer) is not measured
    got["masks"][0, 3, 1, 1] = 0.25
    got["iou_scores"][0, 2] = -0.01
    got["iou_scores"][1, 0] = 0.5
    logits, scores = prompt_errors(reference, got)
    assert logits.tolist() == pytest.approx([0.25, 1e-3]) and scores.tolist() == pytest.approx([0.01, 1e-4])  # >= fp32
    got["masks"][1, 2, 0, 0] = np.nan
    assert prompt_errors(reference, got)[0][1] == np.inf  # no bound on a prompt whose logits are not numbers


def answers(masks: list[np.ndarray], scores=(0.9, 0.5, 0.6, 0.7)) -> dict[str, np.ndarray]:
    return {"masks": np.stack(masks)[None].astype(np.float32), "iou_scores": np.array([scores], np.float32)}


def test_which_masks_count():
    big, small, full = square(20, 10), square(20, 2), square(20, 20)  # 25%, 1% and 100% of the mask
    reference = answers([big, big * 0.5, small, full])
    moved = answers([square(20, 9), big * 0.5, square(20, 1), square(20, 19)])
    row = compare_masks(reference, moved, None)
    assert row["masks"] == 4 and row["masks_counted"] == 2, row  # the 1% and the 100% masks do not count
    assert row["min_mask_iou"] == pytest.approx(81 / 100), row  # the 9 x 9 square in the 10 x 10 one
    assert compare_masks(answers([small] * 4), answers([square(20, 1)] * 4), None)["min_mask_iou"] is None


def at_threshold_case(moved: float):
    """PyTorch keeps a single mask with 3 pixels at 0.08 (stability 1.0, as low as 0.97 if logits move by 0.1); the
    artifact falls back to multimask mask 1 (IoU 100/196 with the single mask) and moves its mask 3 by `moved`."""
    single = square(20, 10)
    single[0, :3] = 0.08
    other = square(20, 14)
    reference = answers([single, other, square(20, 12), square(20, 13)])
    last = square(20, 13)
    last[-1, -1] += moved  # far from the threshold: no IoU changes
    return reference, answers([other, other, square(20, 12), last])


def test_an_answer_from_a_decision_at_its_threshold_is_left_out_and_counted():
    reference, fell_back = at_threshold_case(moved=0.1)  # as fp16 moves logits
    row = compare_masks(reference, fell_back, STABILITY)
    assert row["decisions_at_threshold"] == 1 and row["masks_counted"] == 3 and row["min_mask_iou"] == 1.0, row
    # an artifact that moves no logit by more than 1e-3 cannot move those pixels across +delta: an error there
    reference, fell_back = at_threshold_case(moved=0.0)
    row = compare_masks(reference, fell_back, STABILITY)
    assert row["decisions_at_threshold"] == 0 and row["min_mask_iou"] == pytest.approx(100 / 196), row
    # a decision that no logit moved by 0.1 takes either way counts
    reference = answers([square(20, 10), *fell_back["masks"][0, 1:]])
    _, fell_back = at_threshold_case(moved=0.1)
    row = compare_masks(reference, fell_back, STABILITY)
    assert row["decisions_at_threshold"] == 0 and row["min_mask_iou"] == pytest.approx(100 / 196), row


def test_an_answer_at_its_threshold_is_left_out_of_the_logits_parity_too():
    """The decoder's parity on `masks` and `iou_scores` (fp16: cosine 0.999) leaves out the same single-mask answers:
    one answer from the other decision would otherwise fail the cosine of every mask of the prompt."""
    reference, fell_back = at_threshold_case(moved=0.1)
    fell_back["iou_scores"][0, 0] = 0.5  # its score is the fallback's
    result, failed = judge(reference, fell_back, STABILITY, "fp16")
    assert failed == [] and result["masks"]["decisions_at_threshold"] == 1, (failed, result)
    reference, fell_back = at_threshold_case(moved=0.0)  # not at its threshold: every row says so
    result, failed = judge(reference, fell_back, STABILITY, "fp32")
    assert any(f.startswith("masks max abs") for f in failed) and "masks min IoU 0.5102 < 0.99" in failed, failed


@pytest.mark.parametrize("row, said", [
    ({"min_mask_iou": None, "masks_counted": False}, "masks_counted False is not a count"),
    ({"min_mask_iou": None, "masks_counted": 0.0}, "masks_counted 0.0 is not a count"),
    ({"min_mask_iou": 0.995, "masks_counted": -4}, "masks_counted -4 is not a count"),
    ({"min_mask_iou": 0.995, "masks_counted": "3"}, "masks_counted '3' is not a count"),
    ({"min_mask_iou": 0.995, "masks_counted": 0}, "min IoU 0.995 where no mask counted"),
    ({"min_mask_iou": 1.5, "masks_counted": 3}, "min IoU 1.5 is not an IoU"),
    ({"min_mask_iou": float("inf"), "masks_counted": 3}, "min IoU inf is not an IoU"),
    ({"min_mask_iou": 2}, "min IoU 2 is not an IoU")])
def test_a_report_row_edited_by_hand_fails(row, said):
    """A row read from a report holds what compare_masks writes: a count, and an IoU in [0, 1] where one counted."""
    failures = mask_row_failures(row, 0.98, "masks")
    assert len(failures) == 1 and failures[0].startswith(f"masks {said}"), (row, failures)
    # rows made before the whole rule hold no masks_counted: their IoU alone is judged, as it was
    assert mask_row_failures({"min_mask_iou": 0.985}, 0.98, "masks") == []


def test_an_artifact_that_keeps_a_single_mask_its_own_score_rejects_took_no_decision():
    """A decoder without SAM 2's fallback (or with a broken one) answers with its single mask where PyTorch fell
    back: its own stability score (by hand below) is under the threshold, so no rounding took that decision."""
    single = np.zeros((20, 20), np.float32)  # every logit between -delta and +delta: stability 0 / 400 = 0
    single[:10, :10] = 0.02
    reference = answers([square(20, 12), square(20, 6), square(20, 9), square(20, 12)], scores=(0.1, 0.2, 0.5, 0.9))
    no_fallback = answers([single, square(20, 6), square(20, 9), square(20, 12)], scores=(0.1, 0.2, 0.5, 0.9))
    row = compare_masks(reference, no_fallback, STABILITY)
    # mask 0 counts: its 10 x 10 square above 0 in PyTorch's 12 x 12 one
    assert row["decisions_at_threshold"] == 0 and row["masks_counted"] == 4, row
    assert row["min_mask_iou"] == pytest.approx(100 / 144), row
    # however far the artifact moved its other logits (here by 0.3, wider than delta)
    no_fallback["masks"][0, 3, -1, -1] += 0.3
    assert compare_masks(reference, no_fallback, STABILITY)["decisions_at_threshold"] == 0
    # the same single mask where its own score reaches the threshold (all 100 pixels far above +delta, the rest far
    # below -delta: 100 / 100) is a decision logits moved by 0.1 may take either way when PyTorch's stood at 0.97
    stable = square(20, 10)
    assert decided_at_threshold(np.array([1]), np.array([0]), stable[None], np.array([0.4]), STABILITY, 0.1,
                                1e-4).tolist() == [False]  # no pixel within 0.1 of delta
    stable[0, :3] = 0.08  # 3 pixels within 0.1 of +delta: as low as 97 / 100
    assert decided_at_threshold(np.array([1]), np.array([0]), stable[None], np.array([0.4]), STABILITY, 0.1,
                                1e-4).tolist() == [True]
