"""Colours, label PNGs, overlays, legends, the TensorBoard panel and the evaluation charts."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from cagnet.report.charts import (confusion_csv, confusion_figure, iou_figure, row_normalise,
                           write_evaluation_figures)
from cagnet.errors import CagnetError
from cagnet.report.pictures import (class_colours, label_png_bytes, legend_entries, legend_image,
                              overlay, segmentation_panel)


def test_class_colours_are_the_voc_map_shifted_by_one():
    colours = class_colours(4)
    # VOC colour map: 1 = (128, 0, 0), 2 = (0, 128, 0), 3 = (128, 128, 0), 4 = (0, 0, 128)
    assert colours.tolist() == [[128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]]
    assert np.array_equal(class_colours(254)[:4], colours)
    with pytest.raises(CagnetError):
        class_colours(255)


def test_colour_words_in_class_names_choose_the_colour():
    names = ["background", "plain red", "striped red", "plain yellow", "dotted_green", "sofa"]
    colours = class_colours(len(names), names).astype(int)
    assert colours[0].tolist() == [128, 0, 0] and colours[5].tolist() == [0, 128, 128]  # VOC
    for index in (1, 2):  # red dominates, and the two reds are different shades
        assert colours[index][0] > 2 * max(colours[index][1:])
    assert colours[1].tolist() != colours[2].tolist()
    red, green, blue = colours[3]
    assert min(red, green) > 2 * blue  # yellow
    assert colours[4][1] > 2 * max(colours[4][0], colours[4][2])  # green


def test_label_png_holds_class_plus_one_with_the_class_colours():
    prediction = np.array([[0, 1], [2, 255]])
    png = label_png_bytes(prediction, class_colours(3), no_class=255)
    with Image.open(io.BytesIO(png)) as image:
        assert image.mode == "P"
        assert np.array(image).tolist() == [[1, 2], [3, 0]]
        assert image.getpalette()[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]
    with pytest.raises(ValueError):
        label_png_bytes(np.array([[3]]), class_colours(3))


def test_overlay_blends_half_and_outlines_regions():
    image = np.full((40, 40, 3), 200, dtype=np.uint8)
    prediction = np.zeros((40, 40), dtype=np.int64)
    prediction[10:30, 10:30] = 1
    out = overlay(image, prediction, class_colours(2), alpha=0.5, contour_thickness=1)
    # interior of class 1 (VOC colour 2 = RGB (0, 128, 0)): half image, half colour, in BGR
    assert out[20, 20].tolist() == [100, 164, 100]
    assert out[10, 20].tolist() == [0, 128, 0]  # on the region's outline: the class colour
    assert out.shape == image.shape and out.dtype == np.uint8


def test_legend_lists_present_classes_by_share():
    prediction = np.array([[0, 0, 0, 2]])
    entries = legend_entries(prediction, ["a", "b", "c"], ["seen", "seen", "unseen"],
                             class_colours(3))
    assert [(e.name, e.tag, e.share) for e in entries] == [("a", "seen", 0.75),
                                                           ("c", "unseen", 0.25)]
    picture = legend_image(entries, height=200)
    assert picture.shape[0] == 200 and picture.shape[2] == 3


def test_tensorboard_panel_is_rgb_chw_with_class_colours():
    image = np.zeros((6, 5, 3), dtype=np.uint8)
    label = np.full((6, 5), 255)
    label[0, 0] = 1
    panel = segmentation_panel(image, label, np.zeros((6, 5), dtype=np.int64), class_colours(2))
    assert panel.shape == (3, 6, 3 * 5 + 8) and panel.dtype == np.uint8
    assert panel[:, 0, 5 + 4].tolist() == [0, 128, 0]  # ground truth class 1, RGB
    assert panel[:, 1, 5 + 4].tolist() == [0, 0, 0]  # void
    assert panel[:, 0, 2 * 5 + 8].tolist() == [128, 0, 0]  # predicted class 0


def test_confusion_csv_round_trips_and_rows_normalise():
    confusion = np.array([[5, 1, 0], [0, 0, 0], [2, 2, 4]])
    names = ["cat, striped", "dog", "cow"]
    rows = list(csv.reader(io.StringIO(confusion_csv(confusion, names))))
    assert rows[0][1:] == names
    assert [row[0] for row in rows[1:]] == names
    assert np.array([[int(v) for v in row[1:]] for row in rows[1:]]).tolist() == \
        confusion.tolist()
    fractions = row_normalise(confusion)
    assert fractions[0].tolist() == [5 / 6, 1 / 6, 0.0] and np.isnan(fractions[1]).all()


@pytest.mark.parametrize("num_classes", [1, 5, 182])
def test_charts_draw_any_number_of_classes(num_classes: int, tmp_path):
    rng = np.random.default_rng(0)
    confusion = rng.integers(0, 50, (num_classes, num_classes))
    confusion[0] = 0  # a class that never occurs: a grey row, "n/a" bar
    names = [f"class {index}" for index in range(num_classes)]
    num_seen = max(1, num_classes - 3)
    heat = confusion_figure(confusion, names, num_seen)
    assert heat.ndim == 3 and heat.shape[0] > num_classes
    ious = [math.nan] + [0.5] * (num_classes - 1)
    scores = {"iou": ious, "hiou": 0.5, "miou_seen": 0.5, "miou_unseen": math.nan}
    bars = iou_figure(scores, names, num_seen)
    assert bars.shape[0] > 22 * num_classes
    paths = write_evaluation_figures(tmp_path, confusion, scores, names, num_seen)
    assert [path.name for path in paths] == ["confusion.csv", "confusion.png", "iou.png"]
    if num_classes == 182:
        assert all(path.stat().st_size < 2_000_000 for path in paths)


def test_evaluation_panel_runs_the_model_on_the_first_test_images(tiny_voc):
    from cagnet.datasets.build import build_benchmark
    from cagnet.models.build import build_cagnet
    from cagnet.config import load_config
    from cagnet.datasets.build import build_eval_loader
    from cagnet.engine.evaluate import evaluation_panel

    from conftest import tiny_config_overrides

    config = load_config(None, tiny_config_overrides(tiny_voc))
    benchmark = build_benchmark(config)
    model = build_cagnet(config.model, benchmark.class_embeddings, benchmark.split.num_seen)
    model.train()
    loader = build_eval_loader(config, benchmark.split)
    panel = evaluation_panel(model, loader, config.data.mean_bgr, torch.device("cpu"),
                             benchmark.split.model_class_names, max_images=2)
    warp = config.eval.warp_size
    assert panel.shape == (3, 2 * warp, 3 * warp + 8) and panel.dtype == np.uint8
    assert model.training  # mode restored
