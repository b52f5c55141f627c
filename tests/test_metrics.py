import math

import pytest
import torch

from bench.core.metrics import ConfusionMatrix


def test_hand_computed_example():
    # Pairs (truth, pred) after dropping the ignored pixel: (0,0) (0,1) (1,1) (1,1) (2,0).
    target = torch.tensor([0, 0, 1, 1, 2, 255])
    pred = torch.tensor([0, 1, 1, 1, 0, 2])
    cm = ConfusionMatrix(num_classes=4)
    cm.update(pred, target)
    m = cm.compute()
    # IoU: class 0 = 1/3, class 1 = 2/3, class 2 = 0 (in truth, never predicted), class 3 absent.
    assert m["per_class_iou"][:3] == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert m["per_class_iou"][3] is None
    assert m["miou"] == pytest.approx(1 / 3)
    assert m["pixel_acc"] == pytest.approx(3 / 5)
    assert m["mean_class_acc"] == pytest.approx((1 / 2 + 1 + 0) / 3)


def test_class_only_predicted_counts_as_zero():
    cm = ConfusionMatrix(num_classes=3)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 0]))
    m = cm.compute()
    assert m["per_class_iou"] == [pytest.approx(0.5), 0.0, None]
    assert m["miou"] == pytest.approx(0.25)


def test_dataset_level_not_mean_of_images():
    # Image A: a big, perfectly segmented class-0 region; image B: one class-1 pixel missed.
    a_t, a_p = torch.zeros(100, dtype=torch.long), torch.zeros(100, dtype=torch.long)
    b_t, b_p = torch.tensor([1, 0]), torch.tensor([0, 0])
    cm = ConfusionMatrix(2)
    cm.update(a_p, a_t)
    cm.update(b_p, b_t)
    m = cm.compute()
    # Dataset level: class 0 IoU = 101/102, class 1 IoU = 0 -> mean 101/204.
    assert m["miou"] == pytest.approx(101 / 204)
    per_image = (1.0 + (0.5 + 0.0) / 2) / 2
    assert not math.isclose(m["miou"], per_image)


def test_labels_out_of_range_are_an_error():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="outside"):
        cm.update(torch.tensor([0]), torch.tensor([7]))


def test_empty_matrix_is_nan_not_zero():
    m = ConfusionMatrix(2).compute()
    assert math.isnan(m["miou"]) and math.isnan(m["pixel_acc"])


def test_worked_example_where_the_three_conventions_disagree():
    """Two images, four classes (class 3 appears nowhere). Dataset-level confusion:
    truth 0 -> pred 0 four times and pred 2 once; truth 1 -> pred 1 once."""
    from torchmetrics.functional.classification import multiclass_jaccard_index

    from bench.core.metrics import segmentation_metrics

    a_t, a_p = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 0, 1])
    b_t, b_p = torch.tensor([0, 0]), torch.tensor([0, 2])
    m = segmentation_metrics(torch.cat([a_p, b_p]), torch.cat([a_t, b_t]), num_classes=4)
    # IoUMetric: IoU = [4/5, 1, 0, absent]; class 3 is left out of the mean.
    assert m["per_class_iou"][:3] == pytest.approx([4 / 5, 1.0, 0.0]) and math.isnan(m["per_class_iou"][3])
    assert m["miou"] == pytest.approx((4 / 5 + 1 + 0) / 3)  # 0.6
    assert m["pixel_acc"] == pytest.approx(5 / 6) and m["mean_acc"] == pytest.approx((4 / 5 + 1) / 2)
    # torchmetrics' per-class IoU scores the absent class 0, so its mean is lower: (5/6 + 1) / 4.
    per_class = multiclass_jaccard_index(torch.cat([a_p, b_p]), torch.cat([a_t, b_t]), num_classes=4, average="none")
    assert float(per_class.mean()) == pytest.approx((4 / 5 + 1) / 4)  # 0.45
    # Averaging per image: A is perfect (1.0); B has IoU 1/2 for class 0 and 0 for class 2.
    per_image = [segmentation_metrics(p, t, num_classes=4)["miou"] for p, t in ((a_p, a_t), (b_p, b_t))]
    assert sum(per_image) / 2 == pytest.approx((1.0 + 0.25) / 2)  # 0.625
    assert len({round(m["miou"], 4), round(float(per_class.mean()), 4), round(sum(per_image) / 2, 4)}) == 3


def test_batched_confusion_matrices_equal_one_matrix_per_prediction_and_image():
    import torch

    from bench.core.metrics import ConfusionMatrix, confusion_matrices

    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (3, 5, 7), generator=g)
    target[0, 0, :3] = 255
    preds = torch.randint(0, 4, (2, 3, 5, 7), generator=g)
    mats = confusion_matrices(preds, target, 4, 255)
    for k in range(2):
        for n in range(3):
            cm = ConfusionMatrix(4, 255)
            assert torch.equal(mats[k, n], cm.update(preds[k, n], target[n]))
