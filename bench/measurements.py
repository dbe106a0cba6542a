"""The measurements of bench/benchmark.py: the model of a recipe on synthetic tensors, and the
timing, peak-memory and FLOP helpers.

Every measurement runs exactly the code the trainer, the evaluator and `cagnet predict` run
(`feature_generation_step`, `classifier_step`, `evaluate`, `predict_paths`) on random inputs of
the recipe's shapes (prediction: on a folder of photos), so no dataset is needed.
"""

from __future__ import annotations

import copy
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from cagnet.datasets.build import build_benchmark, build_split
from cagnet.models.build import build_cagnet
from cagnet.config import Config
from cagnet.engine.checkpoint import LoadedModel
from cagnet.engine.evaluate import evaluate
from cagnet.engine.optim import build_optimizers, set_learning_rates
from cagnet.engine.steps import LabelDraw, StepContext, classifier_step, feature_generation_step
from cagnet.errors import CagnetError
from cagnet.inference.predict import predict_paths
from cagnet.models.fold import inference_model
from cagnet.utils.runtime import (autocast_factory, build_grad_scaler, memory_format,
                                  prepare_model)

MEASUREMENTS = ("matmul", "step1", "finetune_step1", "step2", "eval", "predict")
DEFAULT_MEASUREMENTS = ("step1", "finetune_step1", "step2", "eval")
FINETUNE_MEASUREMENTS = ("finetune_step1", "step2")  # run on the finetune recipe
IGNORE_INDEX = 255
VOC_SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "voc-samples"


def run_predict(loaded: LoadedModel, folder: Path, out_dir: Path, batch_size: int) -> dict:
    """What `cagnet predict FOLDER --out OUT --batch-size N` runs after loading the checkpoint
    (cagnet/commands/predict.py); adapt this one call when that module's signature changes."""
    return predict_paths(loaded, folder, out_dir, show_progress=False, batch_size=batch_size)


def matmul_function(size: int, device: torch.device) -> tuple[Callable[[], object], int]:
    """One (size x size) @ (size x size) fp32 matmul and its FLOPs: the yardstick."""
    generator = torch.Generator().manual_seed(0)
    left, right = (torch.randn(size, size, generator=generator).to(device) for _ in range(2))
    out = torch.empty_like(left)
    return (lambda: torch.mm(left, right, out=out)), 2 * size ** 3


def predict_inputs(folder: Path, count: int, size: int, seed: int, target: Path) -> str:
    """Fill `target` with `count` images (0 = all): the first photos `*_image.png` of `folder`
    (`../shared/data/voc-samples`: 513 x 513 Pascal VOC photos) when there are any, else
    synthetic (size x size) images. Returns where they came from."""
    from PIL import Image

    photos = sorted(folder.glob("*_image.png")) if folder.is_dir() else []
    if photos:
        photos = photos[:count] if count else photos
        for photo in photos:
            shutil.copy(photo, target / photo.name)
        return f"{len(photos)} photos from {folder}"
    rng = np.random.default_rng(seed)
    for index in range(count or 4):  # smooth blobs, so the PNG outputs compress as usual
        coarse = rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
        image.save(target / f"{index}_image.png")
    return f"{count or 4} synthetic {size} x {size} images ({folder} not found)"


def class_setup(config: Config, seed: int) -> tuple[np.ndarray, int, str]:
    """(K, E) class embeddings, the number of seen classes, and where they came from: the
    recipe's own files when they exist, else random unit rows (speed does not depend on their
    values) for the recipe's split, else Pascal-VOC's 15 + 5 classes of 600-d."""
    try:
        benchmark = build_benchmark(config)
        return benchmark.class_embeddings, benchmark.split.num_seen, "recipe embedding file"
    except CagnetError:
        pass
    num_seen, num_unseen, source = 15, 5, "random 600-d rows, VOC 15 + 5 classes"
    try:
        split = build_split(config)
        num_seen, num_unseen = split.num_seen, split.num_unseen
        source = f"random 600-d rows for the recipe's split ({num_seen} + {num_unseen})"
    except CagnetError:
        pass
    rows = np.random.default_rng(seed).standard_normal((num_seen + num_unseen, 600))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows.astype(np.float32), num_seen, source


def synthetic_batch(batch: int, size: int, num_seen: int, generator: torch.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, H, W) mean-subtracted-like images and (B, H, W) labels shaped like VOC's: an
    ignored (255) background with two rectangles of random seen classes per image."""
    images = torch.randn(batch, 3, size, size, generator=generator) * 60.0
    labels = torch.full((batch, size, size), IGNORE_INDEX, dtype=torch.long)
    for index in range(batch):
        for _ in range(2):
            top, left = torch.randint(0, size // 2, (2,), generator=generator).tolist()
            height, width = torch.randint(size // 4, size // 2 + 1, (2,),
                                          generator=generator).tolist()
            class_id = int(torch.randint(0, num_seen, (1,), generator=generator))
            labels[index, top:top + height, left:left + width] = class_id
    return images, labels


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> str:
    """Start a new peak; returns how the peak will be measured."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return "torch.cuda.max_memory_allocated"
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak RSS (Linux >= 4.0)
        return "peak RSS of this measurement (getrusage after /proc/self/clear_refs)"
    except OSError:
        return "peak RSS of the whole process so far (getrusage; no reset available)"


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2 ** 20


def time_repetitions(function: Callable[[], object], iterations: int, warmup: int,
                     device: torch.device) -> list[float]:
    for _ in range(warmup):
        function()
    synchronize(device)
    seconds = []
    for _ in range(iterations):
        start = time.perf_counter()
        function()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def count_flops(function: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        function()
    return int(counter.get_total_flops())


class Bench:
    """The model, optimisers and synthetic inputs of one recipe on one device; each
    `*_function` returns a zero-argument callable running one repetition of a measurement."""

    def __init__(self, config: Config, device: torch.device, seed: int) -> None:
        self.config, self.device = config, device
        embeddings, self.num_seen, self.embedding_source = class_setup(config, seed)
        torch.manual_seed(seed)
        self.model = build_cagnet(config.model, embeddings, self.num_seen).to(device)
        prepare_model(self.model, config.train.channels_last, config.train.compile)
        self.autocast = autocast_factory(device, config.train.amp)
        self.scaler = build_grad_scaler(device, config.train.amp)
        self.context = StepContext(device, self.autocast, self.scaler)
        self.generator = torch.Generator().manual_seed(seed)
        images, labels = synthetic_batch(config.train.batch_size, config.data.crop_size,
                                         self.num_seen, self.generator)
        self.images = images.to(device, memory_format=memory_format(config.train.channels_last))
        self.labels = labels.to(device)
        self.grid = self.model.feature_size(config.data.crop_size, config.data.crop_size)

    def _optimizers(self, train_backbone: bool):
        optimizers = build_optimizers(self.model, self.config.optim, train_backbone)
        set_learning_rates(optimizers, 0, self.config.train.iterations, self.config.optim)
        return optimizers

    def step1_function(self, train_backbone: bool) -> Callable[[], dict]:
        optimizers = self._optimizers(train_backbone)

        def run() -> dict:
            self.model.train()
            return feature_generation_step(self.model, self.images, self.labels, optimizers,
                                           self.config.loss, self.context, train_backbone)
        return run

    def step2_function(self) -> Callable[[], dict]:
        optimizers = self._optimizers(False)
        train = self.config.train

        def run() -> dict:
            self.model.train()
            generator = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 31, (1,))))
            draw = LabelDraw(train.batch_size, self.grid, train.gen_unseen_rate, generator)
            return classifier_step(self.model, optimizers, self.config.loss, draw,
                                   self.context)
        return run

    def eval_function(self) -> Callable[[], torch.Tensor]:
        warp, batch = self.config.eval.warp_size, self.config.eval.batch_size
        images, labels = synthetic_batch(batch, warp, self.num_seen, self.generator)
        images = images.to(self.device,
                           memory_format=memory_format(self.config.train.channels_last))
        loader = [{"image": images, "label": list(labels)}]

        def run() -> torch.Tensor:
            return evaluate(self.model, loader, self.model.num_classes,
                            self.config.eval.protocol, warp, self.device, self.autocast,
                            reduce=None)
        return run

    def predict_function(self, folder: Path, count: int) -> tuple[Callable[[], dict], int, str]:
        """`cagnet predict` on `count` images copied from `folder` (or synthetic ones), at
        the recipe's `eval.warp_size` and `eval.batch_size`: (callable, images, their source).
        The model is folded for inference as the command does (a copy: the training
        measurements keep theirs)."""
        self._scratch = tempfile.TemporaryDirectory(prefix="cagnet-bench-")
        inputs, out_dir = Path(self._scratch.name) / "in", Path(self._scratch.name) / "out"
        inputs.mkdir()
        source = predict_inputs(folder, count, self.config.eval.warp_size, 0, inputs)
        model = inference_model(self.model, self.config.eval.channels_last, self.device,
                                inplace=False)
        names = [f"class_{index}" for index in range(model.num_classes)]
        loaded = LoadedModel(model, copy.deepcopy(self.config), names, self.num_seen, {},
                             "benchmark (random weights)")
        images = len(list(inputs.iterdir()))
        return (lambda: run_predict(loaded, inputs, out_dir, self.config.eval.batch_size)), \
            images, source

    def measurement(self, name: str) -> tuple[Callable[[], object], int]:
        """The callable of measurement `name` and the images one call processes."""
        if name == "step1":
            return self.step1_function(True), self.config.train.batch_size
        if name == "finetune_step1":
            return self.step1_function(False), self.config.train.batch_size
        if name == "step2":
            return self.step2_function(), 0
        if name == "eval":
            return self.eval_function(), self.config.eval.batch_size
        raise ValueError(f"Bench.measurement: unknown measurement {name!r}")
