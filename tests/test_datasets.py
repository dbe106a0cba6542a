"""Class lists, splits, label lookups, paired transforms, the dataset and the sampler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cagnet.datasets.segmentation import IterationBatchSampler, SegmentationDataset
from cagnet.datasets.splits import read_class_names, read_id_list, read_split
from cagnet.datasets.transforms import EvalTransform, TrainTransform
from cagnet.errors import DataError

from conftest import CLASS_NAMES

MEAN = (104.008, 116.669, 122.675)


def _dataset(root: Path, train: bool = True, **kwargs) -> SegmentationDataset:
    split = read_split(root / "split.yaml", read_class_names(root / "class_names.txt"))
    list_name = "train.txt" if train else "val.txt"
    ids = read_id_list(root / "ImageSets" / "Segmentation" / list_name)
    transform = TrainTransform(MEAN, 41, 33) if train else EvalTransform(MEAN, 41)
    lookup = split.train_lookup() if train else split.test_lookup()
    return SegmentationDataset(root, ids, "JPEGImages", "SegmentationClass", ".jpg", ".png",
                               lookup, split.known_ids(), transform, **kwargs)


def test_lookups_map_only_seen_classes_for_training(tiny_voc: Path):
    split = read_split(tiny_voc / "split.yaml", CLASS_NAMES)
    assert split.seen_ids == (1, 2, 3) and split.unseen_ids == (4,)
    train = split.train_lookup()
    assert train[[0, 1, 2, 3, 4, 255]].tolist() == [255, 0, 1, 2, 255, 255]
    assert (np.delete(train, [1, 2, 3]) == 255).all()
    test = split.test_lookup()
    assert test[[0, 1, 2, 3, 4, 255]].tolist() == [255, 0, 1, 2, 3, 255]
    assert split.model_class_names == ["red circle", "blue circle", "red square", "blue square"]


def test_training_samples_never_contain_unseen_labels(tiny_voc: Path):
    dataset = _dataset(tiny_voc)
    for draw in range(12):
        sample = dataset[(draw % len(dataset), draw)]
        assert sample["image"].shape == (3, 33, 33) and sample["label"].shape == (33, 33)
        assert set(sample["label"].unique().tolist()) <= {0, 1, 2, 255}


def test_test_samples_keep_label_resolution_and_unseen_ids(tiny_voc: Path):
    dataset = _dataset(tiny_voc, train=False)
    sample = dataset[0]
    assert sample["image"].shape == (3, 41, 41) and sample["label"].shape == (40, 48)
    assert 3 in sample["label"].unique().tolist()


def test_augmentation_is_a_function_of_the_draw(tiny_voc: Path):
    dataset = _dataset(tiny_voc, seed=3)
    first, again = dataset[(1, 17)], dataset[(1, 17)]
    other = dataset[(1, 18)]
    assert np.array_equal(first["image"], again["image"])
    assert not np.array_equal(first["image"], other["image"]) or \
        not np.array_equal(first["label"], other["label"])


def test_train_transform_pads_with_ignore_and_zero():
    image = np.full((10, 10, 3), 200, dtype=np.uint8)
    label = np.ones((10, 10), dtype=np.uint8)
    transform = TrainTransform(MEAN, warp_size=10, crop_size=16, scale_min=1.0, scale_max=1.0,
                               flip=False)
    out_image, out_label = transform(image, label, np.random.default_rng(0))
    assert out_image.shape == (3, 16, 16) and out_label.shape == (16, 16)
    assert (out_label == 255).sum() == 16 * 16 - 100 and (out_label == 1).sum() == 100
    assert np.allclose(out_image[:, out_label == 255], 0.0)
    assert np.allclose(out_image[0, out_label == 1], 200 - MEAN[0])


def test_sampler_splits_a_global_batch_across_ranks():
    single = IterationBatchSampler(10, 4, seed=1)
    ranks = [IterationBatchSampler(10, 2, seed=1, rank=r, world_size=2) for r in range(2)]
    for iteration in range(5):
        combined = ranks[0].batch_for(iteration) + ranks[1].batch_for(iteration)
        assert combined == single.batch_for(iteration)
    resumed = IterationBatchSampler(10, 4, seed=1, start_iteration=3)
    assert next(iter(resumed)) == single.batch_for(3)
    epoch = [index for t in range(5) for index, _ in single.batch_for(t)][:10]
    assert sorted(epoch) == list(range(10))


def test_bad_files_are_named(tiny_voc: Path):
    (tiny_voc / "JPEGImages" / "img_001.jpg").write_bytes(b"not a jpeg")
    dataset = _dataset(tiny_voc)
    index = dataset.ids.index("img_001")
    with pytest.raises(DataError, match="img_001.jpg"):
        dataset[(index, 0)]
    skipping = _dataset(tiny_voc, on_bad_sample="skip")
    sample = skipping[(index, 0)]
    assert sample["skipped"] == ["img_001"] and sample["id"] != "img_001"


def test_mask_problems_are_named(tiny_voc: Path):
    mask_path = tiny_voc / "SegmentationClass" / "img_000.png"
    Image.fromarray(np.full((40, 48), 9, dtype=np.uint8), mode="L").save(mask_path)
    with pytest.raises(DataError, match=r"img_000.png: label values \[9\]"):
        _dataset(tiny_voc)[(0, 0)]
    Image.fromarray(np.zeros((30, 48), dtype=np.uint8), mode="L").save(mask_path)
    with pytest.raises(DataError, match="differs from image size"):
        _dataset(tiny_voc)[(0, 0)]
    mask_path.unlink()
    with pytest.raises(DataError, match="label mask not found"):
        _dataset(tiny_voc)[(0, 0)]


def test_split_and_list_errors(tmp_path: Path):
    (tmp_path / "split.yaml").write_text("seen: [red circle]\nunseen: [green circle]\n")
    with pytest.raises(DataError, match="'green circle' is not in the class-name file"):
        read_split(tmp_path / "split.yaml", CLASS_NAMES)
    (tmp_path / "split.yaml").write_text("seen: [red circle]\nunseen: [red circle]\n")
    with pytest.raises(DataError, match="both seen and unseen"):
        read_split(tmp_path / "split.yaml", CLASS_NAMES)
    (tmp_path / "list.txt").write_text("ok_id\n../../etc/passwd\n")
    with pytest.raises(DataError, match="escape the dataset root"):
        read_id_list(tmp_path / "list.txt")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(DataError, match="empty"):
        read_id_list(tmp_path / "empty.txt")
    (tmp_path / "names.txt").write_text("a\n\nb\n")
    with pytest.raises(DataError, match="line 2: empty class name"):
        read_class_names(tmp_path / "names.txt")


def test_label_map_renames_raw_mask_values(tiny_voc: Path) -> None:
    """A dataset that marks void as 11: {11: 255} makes it 255 before the lookup."""
    import numpy as np
    from PIL import Image

    from cagnet.config import load_config
    from cagnet.datasets.benchmarks import read_dataset_label
    from cagnet.datasets.build import build_benchmark, build_dataset
    from cagnet.errors import DataError

    from conftest import tiny_config_overrides

    path = tiny_voc / "SegmentationClass" / "img_004.png"
    mask = np.array(Image.open(path))
    mask[mask == 255] = 11
    Image.fromarray(mask, mode="L").save(path)  # a grey PNG: values kept as written
    config = load_config(None, tiny_config_overrides(tiny_voc))
    split = build_benchmark(config).split
    with pytest.raises(DataError, match=r"label values \[11\]"):
        build_dataset(config.data, split, 0, "test")[0]
    mapped = load_config(None, tiny_config_overrides(tiny_voc) + ["data.label_map={11: 255}"])
    label = build_dataset(mapped.data, split, 0, "test")[0]["label"]
    assert (label[0] == 255).all() and set(label.unique().tolist()) <= {0, 1, 2, 3, 255}
    # Every reader of a dataset mask sees the renamed ids (few-shot candidates and shots,
    # pseudo-label scoring, the audit), and so does ZS3Net's rule for dropping images.
    test_set = build_dataset(mapped.data, split, 0, "test")
    index = test_set.ids.index("img_004")
    for renamed in (test_set.read_raw(index)[1], read_dataset_label(test_set, index)):
        assert 11 not in renamed and (renamed == 255).sum() == (mask == 11).sum()
    # Every tiny image holds the unseen class (id 4): renamed to void, none is dropped.
    unseen_as_void = load_config(None, tiny_config_overrides(tiny_voc) + [
        f"data.label_map={{11: 255, {split.unseen_ids[0]}: 255}}",
        "data.drop_images_with_unseen=true"])
    kept = build_dataset(unseen_as_void.data, split, 0, "train").ids
    assert len(kept) == len(build_dataset(mapped.data, split, 0, "train").ids)
