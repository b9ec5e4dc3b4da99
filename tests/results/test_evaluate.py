"""The 2021 metric (instance mAP at IoU 0.6) on hand-built cases, and against scikit-learn."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from hpa_batch.cells.segment.quality import iou_matrix
from hpa_batch.results.evaluate import instance_map, interpolated_ap
from hpa_batch.results.truth import match_cells


def two_cells():
    truth = np.zeros((10, 20), int)
    truth[:, :10], truth[:, 10:] = 1, 2
    return truth


def setup(pred_mask, probs, labels):
    truth = two_cells()
    p_ids = np.unique(pred_mask[pred_mask > 0])
    t_ids = np.unique(truth[truth > 0])
    ious = {"img": (p_ids, t_ids, iou_matrix(truth, pred_mask))}
    pred = pd.DataFrame({"image_id": "img", "cell_id": p_ids, **{f"prob_{k}": probs[:, k] for k in range(2)}})
    gt = pd.DataFrame({"image_id": "img", "truth_cell_id": [1, 2], "labels": labels})
    return pred, gt, ious


def test_perfect_prediction_scores_one():
    pred, gt, ious = setup(two_cells(), np.array([[0.9, 0.1], [0.2, 0.8]]), [[0], [1]])
    m, per = instance_map(pred, gt, ious, 2)
    assert m == 1.0 and per == {0: 1.0, 1: 1.0}


def test_confident_false_positive_halves_ap():
    # both true cells are class 0? no: cell 1 is class 0, cell 2 class 1; cell 2 also scores high on class 0
    pred, gt, ious = setup(two_cells(), np.array([[0.8, 0.1], [0.9, 0.7]]), [[0], [1]])
    m, per = instance_map(pred, gt, ious, 2)
    assert per[0] == pytest.approx(0.5) and per[1] == 1.0 and m == pytest.approx(0.75)


def test_iou_below_threshold_is_a_miss():
    shifted = two_cells()
    shifted[:, 5:10] = 0  # predicted cell 1 covers half of true cell 1: IoU 0.5 < 0.6
    pred, gt, ious = setup(shifted, np.array([[0.9, 0.1], [0.1, 0.9]]), [[0], [1]])
    _, per = instance_map(pred, gt, ious, 2)
    assert per[0] == 0.0 and per[1] == 1.0
    _, per_low = instance_map(pred, gt, ious, 2, iou_threshold=0.5)
    assert per_low[0] == 1.0


def test_interpolated_ap_matches_sklearn_when_precision_is_monotone():
    rng = np.random.default_rng(0)
    y = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 0])
    s = np.linspace(1, 0.1, 10)  # ranked so precision never rises
    assert interpolated_ap(s, y.astype(bool), int(y.sum())) == pytest.approx(average_precision_score(y, s))
    y2 = rng.integers(0, 2, 50)
    s2 = rng.random(50)
    assert interpolated_ap(s2, y2.astype(bool), int(y2.sum())) >= average_precision_score(y2, s2) - 1e-12


def test_match_cells_pairs_overlapping_cells():
    truth = two_cells()
    pred = np.where(truth == 1, 7, np.where(truth == 2, 3, 0))
    m = match_cells(pred, truth)
    assert dict(zip(m.cell_id, m.truth_cell_id)) == {7: 1, 3: 2} and (m.iou == 1).all()


def test_predicted_strings_may_combine_negative_with_other_classes():
    from hpa_batch.core.labels import CATALOGS
    from hpa_batch.results.evaluate import evaluate_run, predicted_ids

    cat = CATALOGS["hpa2021"]
    assert predicted_ids("0|17|18", cat) == [0, 17, 18] and predicted_ids("", cat) == []
    images = pd.DataFrame(
        {
            "image_id": ["a", "b"],
            "rejected": [False, False],
            "cell_line": ["X", "X"],
            "image_labels": [[0], [18]],
            "predicted": ["0|18", ""],
            **{f"image_prob_{k}": [0.6 if k in (0, 18) else 0.1, 0.2] for k in range(19)},
        }
    )
    result = evaluate_run(pd.DataFrame(), images, None, None, cat)
    assert result["images"] == 2 and 0 <= result["image_macro_f1"] <= 1


def test_prediction_guard_flags_an_over_predicted_class():
    import pandas as pd

    from hpa_batch.core.labels import CATALOGS
    from hpa_batch.results.evaluate import prediction_guard

    cat = CATALOGS["hpa2021"]
    cells = pd.DataFrame(
        {"predicted": ["12"] * 9 + ["0|12"], "truth_cell_id": [1] * 10, "truth_labels": [[12]] * 2 + [[0]] * 8}
    )
    guard = prediction_guard(cells, cat, 0.6)
    assert guard["over_predicted"] == ["Centrosome"] and guard["class_share"]["Centrosome"] == 1.0
    assert not guard["single_prediction"]
    cells["truth_labels"] = [[12]] * 10  # the truth says every cell has it: not flagged
    assert prediction_guard(cells, cat, 0.6)["over_predicted"] == []
    same = pd.DataFrame({"predicted": ["0"] * 5})
    assert prediction_guard(same, cat, 0.6)["single_prediction"]


def test_cell_macro_f1_of_label_sets_counts_only_classes_in_the_truth():
    from hpa_batch.results.evaluate import _set_macro_f1

    truth = [{0}, {0}, {16}, {0, 16}]
    assert _set_macro_f1(truth, [set(t) for t in truth], 19) == 1.0
    # class 0: tp 2, |truth| 3, |pred| 2 -> 0.8; class 16: tp 2, |truth| 2, |pred| 3 -> 0.8;
    # the wrongly predicted class 5 is absent from the truth and not averaged (its FPs are in 0/16's)
    pred = [{0}, {16}, {16}, {0, 16, 5}]
    assert _set_macro_f1(truth, pred, 19) == pytest.approx(0.8)
    assert _set_macro_f1([set()], [set()], 19) is None
