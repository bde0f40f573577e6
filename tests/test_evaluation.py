"""Streaming evaluation: hand-computed scores, equality with a dense NumPy computation, errors, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch
from typer.testing import CliRunner

from magnet_cli.classes import default_classes
from magnet_cli.cli import app
from magnet_cli.errors import InputError, UsageError
from magnet_cli.evaluation import (
    BoundaryCounts,
    confusion,
    evaluate,
    evaluate_pair,
    frequency_weighted_iou,
    mask_name,
    mean_iou,
    pixel_accuracy,
)
from magnet_cli.io.labels import LabelWriter
from magnet_cli.settings import RunSettings

QUIET = RunSettings(progress=False)

runner = CliRunner()


def write_png(path: Path, mask: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, mask.astype(np.uint8))
    return path


def test_miou_from_a_confusion_matrix():
    target = torch.tensor([[0, 0, 1, 255]])
    predicted = torch.tensor([[0, 1, 1, 0]])
    matrix = confusion(predicted, target, 2, 255)
    assert matrix.tolist() == [[1, 1], [0, 1]]
    assert mean_iou(matrix) == pytest.approx((1 / 2 + 1 / 2) / 2)


# Truth: columns 0-1 class 0, columns 2-3 class 1. Prediction: columns 0-2 class 0, column 3 class 1.
HAND_TRUTH = np.array([[0, 0, 1, 1]] * 4, np.uint8)
HAND_PREDICTION = np.array([[0, 0, 0, 1]] * 4, np.uint8)


def test_hand_computed_region_scores(tmp_path):
    scores = evaluate_pair(
        write_png(tmp_path / "p.png", HAND_PREDICTION), write_png(tmp_path / "t.png", HAND_TRUTH), default_classes(2)
    )
    assert scores.matrix.tolist() == [[8, 0], [4, 4]]
    summary = scores.to_dict()
    assert [row["iou"] for row in summary["per_class"]] == pytest.approx([8 / 12, 4 / 8])
    assert summary["miou"] == pytest.approx(7 / 12)
    assert summary["pixel_accuracy"] == pytest.approx(12 / 16)
    assert summary["fw_iou"] == pytest.approx(0.5 * 8 / 12 + 0.5 * 4 / 8)


def test_hand_computed_boundary_f_depends_on_the_tolerance(tmp_path):
    # True edges: column 1 (class 0) and column 2 (class 1); predicted: columns 2 and 3, one pixel off.
    predicted, truth = write_png(tmp_path / "p.png", HAND_PREDICTION), write_png(tmp_path / "t.png", HAND_TRUTH)
    exact = evaluate_pair(predicted, truth, default_classes(2), tolerance=0)
    assert exact.boundary.predicted.tolist() == [4, 4] and exact.boundary.truth.tolist() == [4, 4]
    assert exact.boundary.predicted_matched.tolist() == [0, 0]
    assert exact.boundary.f_scores() == [0.0, 0.0]
    loose = evaluate_pair(predicted, truth, default_classes(2), tolerance=1)
    assert loose.boundary.f_scores() == [1.0, 1.0]


def test_ignored_truth_pixels_count_nowhere(tmp_path):
    truth = HAND_TRUTH.copy()
    truth[0] = 255
    scores = evaluate_pair(
        write_png(tmp_path / "p.png", HAND_PREDICTION), write_png(tmp_path / "t.png", truth), default_classes(2), tolerance=0
    )
    assert scores.matrix.tolist() == [[6, 0], [3, 3]]
    assert scores.boundary.predicted.tolist() == [3, 3] and scores.boundary.truth.tolist() == [3, 3]


def test_class_with_no_pixels_anywhere_is_left_out_of_the_means():
    matrix = np.array([[5, 1, 0], [2, 4, 0], [0, 0, 0]])
    assert mean_iou(matrix) == pytest.approx((5 / 8 + 4 / 7) / 2)
    assert pixel_accuracy(matrix) == pytest.approx(9 / 12)
    assert frequency_weighted_iou(matrix) == pytest.approx(6 / 12 * 5 / 8 + 6 / 12 * 4 / 7)
    assert BoundaryCounts(*(np.array([2, 0]),) * 4).f_scores() == [1.0, None]


# --- equality with a dense computation --------------------------------------------------------------
def blocky_masks(height: int, width: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Truth of random blocks; a prediction that agrees on most pixels, with ignored pixels in the truth."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, classes, (height // 7 + 1, width // 5 + 1))
    truth = np.repeat(np.repeat(coarse, 7, 0), 5, 1)[:height, :width].astype(np.uint8)
    predicted = truth.copy()
    flip = rng.random((height, width)) < 0.05
    predicted[flip] = rng.integers(0, classes, int(flip.sum()))
    predicted = np.roll(predicted, 1, axis=1)  # boundaries one pixel off
    truth[rng.random((height, width)) < 0.01] = 255
    return predicted, truth


def dense_scores(predicted: np.ndarray, truth: np.ndarray, classes: int, ignore: int, tolerance: int) -> tuple:
    valid = truth != ignore
    matrix = np.bincount(
        truth[valid].astype(np.int64) * classes + predicted[valid], minlength=classes * classes
    ).reshape(classes, classes)

    def edges(labels: np.ndarray) -> np.ndarray:
        out = np.zeros(labels.shape, bool)
        dy = (labels[1:] != labels[:-1]) & valid[1:] & valid[:-1]
        dx = (labels[:, 1:] != labels[:, :-1]) & valid[:, 1:] & valid[:, :-1]
        out[1:] |= dy
        out[:-1] |= dy
        out[:, 1:] |= dx
        out[:, :-1] |= dx
        return out & valid

    def dilate(mask: np.ndarray) -> np.ndarray:
        padded = np.pad(mask, tolerance)
        out = np.zeros_like(mask)
        for dy in range(2 * tolerance + 1):
            for dx in range(2 * tolerance + 1):
                out |= padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]]
        return out

    pred_edges, true_edges = edges(predicted), edges(truth)
    counts = []
    for c in range(classes):
        p, t = pred_edges & (predicted == c), true_edges & (truth == c)
        counts.append([p.sum(), (p & dilate(t)).sum(), t.sum(), (t & dilate(p)).sum()])
    return matrix, np.array(counts).T


@pytest.mark.parametrize(
    "height, width, tile, tolerance",
    [(37, 53, 16, 2), (300, 410, 128, 1), (257, 129, 64, 0), pytest.param(4096, 4096, 1024, 2, marks=pytest.mark.slow)],
)
def test_streaming_scores_equal_a_dense_computation(tmp_path, height, width, tile, tolerance):
    predicted, truth = blocky_masks(height, width, 4, seed=height)
    pred_path = tmp_path / "p.tif"
    tifffile.imwrite(pred_path, predicted, tile=(32, 32) if height > 64 else None)
    true_path = write_png(tmp_path / "t.png", truth)
    scores = evaluate_pair(pred_path, true_path, default_classes(4), tolerance=tolerance, tile=tile)
    matrix, counts = dense_scores(predicted, truth, 4, 255, tolerance)
    assert scores.matrix.tolist() == matrix.tolist()
    b = scores.boundary
    assert [b.predicted.tolist(), b.predicted_matched.tolist(), b.truth.tolist(), b.truth_matched.tolist()] == counts.tolist()
    assert 0 < b.predicted_matched.sum() < b.predicted.sum()  # the case is not trivial


# --- files, names and errors ------------------------------------------------------------------------
def test_segment_output_is_read_with_its_class_names(tmp_path):
    truth = np.zeros((40, 60), np.uint8)
    truth[:, 30:] = 2
    classes = default_classes(3)
    with LabelWriter(tmp_path / "scene.zarr", 40, 60, classes, chunk_size=16) as writer:
        writer.write(0, 0, np.array(truth))
    write_png(tmp_path / "truth" / "scene.png", truth)
    result = evaluate([tmp_path / "scene.zarr"], [tmp_path / "truth"], run=QUIET)
    summary = result.to_dict()
    assert summary["miou"] == 1.0 and [row["class"] for row in summary["per_class"]] == [c.name for c in classes]


def test_folders_are_matched_by_mask_name(tmp_path):
    for name in ("a", "b"):
        write_png(tmp_path / "pred" / f"{name}.png", HAND_PREDICTION)
        write_png(tmp_path / "data" / "masks" / f"{name}.png", HAND_TRUTH if name == "a" else HAND_PREDICTION)
    result = evaluate([tmp_path / "pred"], [tmp_path / "data"], classes="2", run=QUIET)
    by_name = {mask_name(p): s.miou for p, _, s in result.per_image}
    assert by_name == {"a": pytest.approx(7 / 12), "b": 1.0}
    assert result.total.matrix.sum() == 32
    assert mask_name(Path("x/scene_1.ome.zarr")) == "scene_1" and mask_name(Path("v1.2.tif")) == "v1.2"


def test_size_mismatch_names_both_files(tmp_path):
    with pytest.raises(InputError, match=r"p.png: prediction is 4 x 4 but truth .*t.png is 4 x 5"):
        evaluate_pair(write_png(tmp_path / "p.png", HAND_PREDICTION), write_png(tmp_path / "t.png", np.zeros((4, 5))), default_classes(2))


def test_ids_outside_the_classes_are_refused(tmp_path):
    predicted = write_png(tmp_path / "p.png", HAND_PREDICTION * 3)
    with pytest.raises(InputError, match=r"p.png: predicted class id\(s\) \[3\] outside 0..1"):
        evaluate_pair(predicted, write_png(tmp_path / "t.png", HAND_TRUTH), default_classes(2))
    with pytest.raises(InputError, match=r"t.png: true class id\(s\) \[7\]"):
        evaluate_pair(write_png(tmp_path / "q.png", HAND_TRUTH), write_png(tmp_path / "t.png", HAND_TRUTH * 7), default_classes(2))


def test_without_classes_the_largest_id_decides(tmp_path):
    result = evaluate([write_png(tmp_path / "p.png", HAND_PREDICTION * 4)], [write_png(tmp_path / "t.png", HAND_TRUTH)], run=QUIET)
    assert len(result.total.classes) == 5


def test_unpaired_inputs_are_usage_errors(tmp_path):
    p = write_png(tmp_path / "p.png", HAND_PREDICTION)
    with pytest.raises(UsageError, match="1 prediction"):
        evaluate([p], [p, p], run=QUIET)
    write_png(tmp_path / "pred" / "c.png", HAND_PREDICTION)
    write_png(tmp_path / "truth" / "d.png", HAND_TRUTH)
    with pytest.raises(InputError, match="no truth mask named 'c'"):
        evaluate([tmp_path / "pred"], [tmp_path / "truth"], run=QUIET)


def test_cli_prints_json_and_fails_cleanly(tmp_path):
    p, t = write_png(tmp_path / "p.png", HAND_PREDICTION), write_png(tmp_path / "t.png", HAND_TRUTH)
    ok = runner.invoke(app, ["evaluate", str(p), "--truth", str(t), "--classes", "2", "--json", "--no-progress"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["miou"] == pytest.approx(7 / 12)
    table = runner.invoke(app, ["evaluate", str(p), "--truth", str(t), "--classes", "2", "--no-progress"])
    assert table.exit_code == 0 and "58.33" in table.stdout  # mIoU 7/12 in percent
    missing = runner.invoke(app, ["evaluate", str(tmp_path / "nope.png"), "--truth", str(t)])
    assert missing.exit_code == 2 and "nope.png: no such file" in missing.output
    assert "Traceback" not in missing.output
