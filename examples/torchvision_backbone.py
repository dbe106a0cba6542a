"""CaGNet on a torchvision ResNet-50 trunk (dilated, output stride 8) instead of DeepLab-v2.

The ResNet's convolutional part (stem, layer1..layer4; no avgpool / fc) maps (B, 3, H, W) to
(B, 2048, H/8, W/8) with `replace_stride_with_dilation=[False, True, True]`; `build_model(...,
trunk=..., trunk_channels=2048)` puts the ASPP (2048 -> E) on top and everything after it is
unchanged. ImageNet weights are read from a LOCAL file (nothing is ever downloaded), e.g. the
torchvision release `resnet50-0676ba61.pth` copied onto the machine; without `--weights` the
trunk starts from random weights. The trunk receives the project's Caffe-style input, which
`TorchvisionInput` converts to what torchvision weights expect.

The step-1 / mixed schedule runs with the engine's own steps (`feature_generation_step`,
`classifier_step`) and the model is evaluated and used for prediction in Python, because the
recipe's `model` section describes only the DeepLab-v2 backbone (the checkpoint written here
is reloaded by rebuilding the same trunk, as `load` below does). On the shapes benchmark:

    cagnet demo   # once: writes runs/demo/shapes (data, embeddings)
    python examples/torchvision_backbone.py --weights ~/weights/resnet50-0676ba61.pth \\
        --config experiments/shapes.yaml --set data.root=runs/demo/shapes \\
        --step1-iterations 600 --finetune-iterations 400 --output-dir runs/resnet50
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch
import torchvision
from torch.utils.data import DataLoader

from cagnet.builders import build_benchmark, build_datasets, build_model, resolve_device
from cagnet.config import config_from_dict, config_to_dict, load_config
from cagnet.datasets.segmentation import IterationBatchSampler, collate_samples
from cagnet.engine.checkpoint import load_checkpoint, save_checkpoint
from cagnet.engine.optim import build_optimizers, set_learning_rates
from cagnet.engine.schedules import is_step2_iteration, iteration_seed
from cagnet.engine.steps import classifier_step, feature_generation_step
from cagnet.engine.validation import evaluate_and_report
from cagnet.errors import CheckpointError
from cagnet.inference.model import InferenceModel
from cagnet.models.trunks import torchvision_resnet_trunk
from cagnet.inference.predict import predict_paths
from cagnet.utils.runtime import autocast_factory


def resnet50_trunk(weights: str | None, mean_bgr) -> torch.nn.Module:
    """Dilated ResNet-50 (output stride 8) with ImageNet weights from a local file."""
    resnet = torchvision.models.resnet50(weights=None,
                                         replace_stride_with_dilation=[False, True, True])
    if weights:
        state = torch.load(Path(weights).expanduser(), map_location="cpu", weights_only=True)
        state = {key: value for key, value in state.items() if not key.startswith("fc.")}
        missing, unexpected = resnet.load_state_dict(state, strict=False)
        if unexpected or [key for key in missing if not key.startswith("fc.")]:
            raise CheckpointError(f"{weights} is not a torchvision ResNet-50 state dict "
                                  f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return torchvision_resnet_trunk(resnet, mean_bgr)


def train_stage(model, config, benchmark, stage: str, iterations: int, device) -> None:
    """`iterations` of step 1 (stage "step1") or of the mixed schedule ("finetune")."""
    config = dataclasses.replace(config, train=dataclasses.replace(
        config.train, stage=stage, iterations=iterations))
    optimizers = build_optimizers(model, config.optim, train_backbone=stage == "step1")
    dataset = build_datasets(config.data, benchmark.split, config.train.seed, train=True)
    sampler = IterationBatchSampler(len(dataset), config.train.batch_size, config.train.seed)
    batches = iter(DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_samples,
                              num_workers=config.data.num_workers))
    grid = model.feature_size(config.data.crop_size, config.data.crop_size)
    autocast = autocast_factory(device, "none")
    for iteration in range(iterations):
        seed = iteration_seed(config.train.seed, iteration)
        torch.manual_seed(seed)
        set_learning_rates(optimizers, iteration, iterations, config.optim)
        model.train()
        if is_step2_iteration(iteration, stage, config.train.mixed_period):
            terms = classifier_step(model, config.train.batch_size, grid, optimizers,
                                    config.loss, config.train.gen_unseen_rate,
                                    torch.Generator().manual_seed(seed), device, autocast)
        else:
            batch = next(batches)
            terms = feature_generation_step(model, batch["image"].to(device),
                                            batch["label"].to(device), optimizers, config.loss,
                                            stage == "step1", autocast)
        if (iteration + 1) % config.train.log_interval == 0:
            print(f"{stage} {iteration + 1}/{iterations}: "
                  + ", ".join(f"{k} {v:.3g}" for k, v in terms.items()))


def load(path: str | Path, device: torch.device) -> InferenceModel:
    """Rebuild the model of a checkpoint written by this script (the same trunk architecture;
    every weight, the trunk's included, comes from the checkpoint) for `cagnet.inference.predict`."""
    state = load_checkpoint(path)
    config = config_from_dict(state["config"])
    embeddings = state["model"]["class_embeddings"].numpy()
    model = build_model(config.model, embeddings, state["num_seen"],
                        trunk=resnet50_trunk(None, config.data.mean_bgr), trunk_channels=2048)
    model.load_state_dict(state["model"])
    return InferenceModel(model.to(device).eval(), config, list(state["class_names"]),
                          int(state["num_seen"]), [], device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="local torchvision ResNet-50 weights (.pth)")
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--step1-iterations", type=int, default=600)
    parser.add_argument("--finetune-iterations", type=int, default=400)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--predict", metavar="IMAGE_OR_DIR", help="then segment these images "
                        "into OUTPUT_DIR/predictions (reloading the checkpoint)")
    arguments = parser.parse_args()

    config = load_config(arguments.config, arguments.overrides)
    device = resolve_device(config.train.device)
    benchmark = build_benchmark(config)
    torch.manual_seed(config.train.seed)
    model = build_model(config.model, benchmark.class_embeddings, benchmark.split.num_seen,
                        trunk=resnet50_trunk(arguments.weights, config.data.mean_bgr),
                        trunk_channels=2048).to(device)
    train_stage(model, config, benchmark, "step1", arguments.step1_iterations, device)
    train_stage(model, config, benchmark, "finetune", arguments.finetune_iterations, device)
    out = Path(arguments.output_dir)
    checkpoint = save_checkpoint(
        out / "resnet50_cagnet.pt", model=model,
        iteration=arguments.step1_iterations + arguments.finetune_iterations,
        config=config_to_dict(config), class_names=benchmark.split.model_class_names,
        num_seen=benchmark.split.num_seen,
        extra={"trunk": "torchvision resnet50, dilation [False, True, True]"})
    scores = evaluate_and_report(model, config, benchmark, device, out,
                                 f"{config.name}: CaGNet on a torchvision ResNet-50 trunk")
    print(f"hIoU {scores['hiou']:.4f}, seen mIoU {scores['miou_seen']:.4f}, unseen mIoU "
          f"{scores['miou_unseen']:.4f}; report in {out}")
    if arguments.predict:
        predict_paths(load(checkpoint, device), arguments.predict, out / "predictions",
                      panel=True, source=str(checkpoint))


if __name__ == "__main__":
    main()
