"""Evaluate a model on the configured test split and write its report with a protocol card."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader

from cagnet.builders import Benchmark, build_datasets
from cagnet.config import Config
from cagnet.datasets.segmentation import collate_samples
from cagnet.engine.evaluator import describe_protocol, evaluate
from cagnet.metrics import zero_shot_scores
from cagnet.report import write_report
from cagnet.utils.runtime import autocast_factory


def protocol_card(config: Config, benchmark: Benchmark) -> dict:
    """What a reader needs to compare this number with another one."""
    split = benchmark.split
    sources = benchmark.embedding_metadata.get("sources", [])
    return {
        "setting": "generalized zero-shot, inductive (unseen classes never labelled in training;"
                   " every seen and unseen class is a candidate at test time)",
        "background": "ignored in training and evaluation (not a class)"
        if split.class_names[0] not in split.model_class_names else "a seen class",
        "unseen_training_pixels": "mapped to the ignore label 255: they reach no loss",
        "evaluation": describe_protocol(config.eval.protocol, config.eval.warp_size),
        "protocol": config.eval.protocol,
        "dataset_root": str(config.data.root),
        "test_list": str(config.data.val_list),
        "embeddings": str(benchmark.embedding_path),
        "embedding_sources": [{"kind": s.get("kind"), "sha256": s.get("sha256")}
                              for s in sources if isinstance(s, dict)],
        "seen_classes": [split.class_names[i] for i in split.seen_ids],
        "unseen_classes": [split.class_names[i] for i in split.unseen_ids],
    }


def build_eval_loader(config: Config, benchmark: Benchmark) -> DataLoader:
    dataset = build_datasets(config.data, benchmark.split, config.train.seed, train=False,
                             eval_warp=config.eval.warp_size)
    return DataLoader(dataset, batch_size=config.eval.batch_size, shuffle=False,
                      num_workers=config.data.num_workers, collate_fn=collate_samples)


def evaluate_and_report(model: torch.nn.Module, config: Config, benchmark: Benchmark,
                        device: torch.device, out_dir: Path | None, title: str,
                        loader: DataLoader | None = None) -> dict:
    """Evaluate `model`; write `metrics.json` and `report.md` into `out_dir` when given."""
    loader = loader or build_eval_loader(config, benchmark)
    split = benchmark.split
    confusion = evaluate(model, loader, len(split.model_ids), config.eval.protocol,
                         config.eval.warp_size, device,
                         autocast_factory(device, config.train.amp), config.eval.max_images)
    seen = list(range(split.num_seen))
    unseen = list(range(split.num_seen, split.num_seen + split.num_unseen))
    scores = zero_shot_scores(confusion.cpu(), seen, unseen)
    if out_dir is not None:
        write_report(out_dir, scores, split.model_class_names, split.num_seen,
                     protocol_card(config, benchmark), title)
    return scores
