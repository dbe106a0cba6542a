"""Image-level pretraining of the backbone trunk (`cagnet pretrain`) into a `model.init` file."""

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cagnet.config import Config, config_to_dict, save_config
from cagnet.datasets.build import resolve_path, with_absolute_paths
from cagnet.datasets.corpus import augment, read_corpus
from cagnet.engine import loop
from cagnet.engine.schedules import warmup_cosine_lr
from cagnet.errors import ConfigError
from cagnet.utils.io import atomic_torch_save, atomic_write_json, relocatable
from cagnet.utils.runtime import RunLog, apply_run_settings, resolve_device

LOGGER = logging.getLogger("cagnet")
FORMAT = "cagnet-backbone-init-v1"
INIT_FILE = "backbone_init.pt"


def swap_batchnorm(module: nn.Module, to_trainable: bool) -> nn.Module:
    """Replace every `FrozenBatchNorm2d` by a trainable `nn.BatchNorm2d` (or back)."""
    from cagnet.models import FrozenBatchNorm2d
    source_type = FrozenBatchNorm2d if to_trainable else nn.BatchNorm2d
    for name, child in module.named_children():
        if isinstance(child, source_type):
            replacement = (nn.BatchNorm2d(child.num_features, eps=child.eps) if to_trainable
                           else FrozenBatchNorm2d(child.num_features, eps=child.eps))
            with torch.no_grad():
                for key in ("weight", "bias", "running_mean", "running_var"):
                    getattr(replacement, key).copy_(getattr(child, key))
            replacement.weight.requires_grad_(to_trainable)
            replacement.bias.requires_grad_(to_trainable)
            setattr(module, name, replacement.to(child.weight.device))
        else:
            swap_batchnorm(child, to_trainable)
    return module


class TrunkClassifier(nn.Module):
    """Backbone (with `include_aspp` its ASPP too, else res5) -> average pool -> linear."""

    def __init__(self, backbone: nn.Module, num_classes: int, include_aspp: bool) -> None:
        super().__init__()
        self.backbone = backbone
        self.include_aspp = include_aspp
        channels = backbone.embed_dim if include_aspp else backbone.trunk_channels
        self.head = nn.Linear(channels, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(images) if self.include_aspp \
            else self.backbone.trunk_forward(images)
        return self.head(features.mean(dim=(2, 3)))


class Pretraining(loop.Method):
    """The classifier's step on a batch drawn from the in-memory corpus."""

    name = "pretrain"

    def __init__(self, config: Config, backbone: nn.Module, device: torch.device) -> None:
        settings = self.settings = config.pretrain
        self.run_config, self.config = config, config_to_dict(config)
        self.seed = config.train.seed
        self.images, self.targets, self.label_values = read_corpus(
            resolve_path(settings.corpus, config.data.root), settings.image_size,
            config.data.mean_bgr)
        order = torch.randperm(len(self.targets),
                               generator=torch.Generator().manual_seed(self.seed))
        held_out = max(1, len(order) // 10)
        self.test_index, self.train_index = order[:held_out], order[held_out:]
        self.backbone, self.device = swap_batchnorm(backbone, to_trainable=True), device
        self.model = TrunkClassifier(backbone, len(self.label_values),
                                     settings.include_aspp).to(device)
        trunk = [p for name, p in self.model.named_parameters()
                 if p.requires_grad and not name.startswith("backbone.aspp")]
        aspp = [p for p in backbone.aspp.parameters() if p.requires_grad] \
            if settings.include_aspp else []
        # The ASPP sums four un-normalised branches: at the trunk's rate it diverges.
        groups = [{"params": trunk, "lr_mult": 1.0},
                  {"params": aspp, "lr_mult": settings.aspp_lr_mult}]
        self.optimizers = {"trunk": torch.optim.SGD(
            [group for group in groups if group["params"]], lr=settings.lr,
            momentum=settings.momentum, weight_decay=settings.weight_decay, nesterov=True)}
        self.draws = torch.Generator().manual_seed(self.seed)
        self.summary: dict = {}

    def set_learning_rates(self, iteration: int) -> dict[str, float]:
        total = self.settings.iterations
        for group in self.optimizers["trunk"].param_groups:
            group["lr"] = warmup_cosine_lr(group["lr_mult"] * self.settings.lr, iteration, total)
        return {"trunk": warmup_cosine_lr(self.settings.lr, iteration, total)}

    def step(self, iteration: int, batch: dict | None) -> dict[str, float]:
        self.model.train()
        picks = self.train_index[torch.randint(len(self.train_index), (self.settings.batch_size,),
                                               generator=self.draws)]
        inputs = augment(self.images[picks], self.draws).to(self.device)
        loss = F.cross_entropy(self.model(inputs), self.targets[picks].to(self.device))
        optimizer = self.optimizers["trunk"]
        optimizer.zero_grad(set_to_none=True)
        value = float(loss.detach())
        if not torch.isfinite(loss):
            return {"cls": value, "skipped": 1.0}
        loss.backward()
        optimizer.step()
        return {"cls": value, "skipped": 0.0}

    def extra_state(self) -> dict:
        return {"draws": self.draws.get_state()}

    def load_extra_state(self, extra: dict) -> None:
        self.draws.set_state(extra["draws"])

    def write_run_files(self, run_dir: Path) -> None:
        save_config(self.run_config, run_dir / "config.yaml")

    def evaluate(self, report_dir: Path | None, log: RunLog) -> dict:
        accuracy = self._held_out_accuracy()
        self.summary = {"held_out_accuracy": accuracy, "num_images": len(self.targets),
                        "num_classes": len(self.label_values)}
        return {"held_out_accuracy": accuracy}

    @torch.no_grad()
    def _held_out_accuracy(self, batch_size: int = 128) -> float:
        images, targets = self.images[self.test_index], self.targets[self.test_index]
        self.model.eval()
        correct = 0
        for start in range(0, len(targets), batch_size):
            logits = self.model(images[start:start + batch_size].to(self.device))
            correct += int((logits.argmax(1).cpu() == targets[start:start + batch_size]).sum())
        self.model.train()
        return correct / max(1, len(targets))

    def finish(self, run_dir: Path | None) -> None:
        """Write the trunk (frozen BatchNorm again) as `<run_dir>/backbone_init.pt`."""
        swap_batchnorm(self.backbone, to_trainable=False)
        state = {key: value.detach().cpu() for key, value in self.backbone.state_dict().items()
                 if self.settings.include_aspp or not key.startswith("aspp.")}
        if run_dir is not None:
            atomic_torch_save(run_dir / INIT_FILE, {"format": FORMAT, "backbone": state,
                                                    "summary": self.summary,
                                                    "label_values": self.label_values})
            LOGGER.info("pretrained trunk: held-out accuracy %.3f, saved %s",
                        self.summary["held_out_accuracy"], run_dir / INIT_FILE)


def pretrain(config: Config, run_dir: str | Path, *, resume: bool = False,
             overwrite: bool = False, show_progress: bool = True) -> dict:
    """`cagnet pretrain` into `run_dir`; returns the summary (held-out accuracy, counts)."""
    from cagnet.models.build import build_backbone
    if not config.pretrain.corpus:
        raise ConfigError("pretrain.corpus: no corpus folder configured")
    config = with_absolute_paths(config)
    apply_run_settings(config.train.threads, config.train.seed, config.train.deterministic)
    device = resolve_device(config.train.device)
    # the initial weights are drawn after seeding
    backbone = build_backbone(config.model, config.model.feature_dim, config.data.mean_bgr)
    method = Pretraining(config, backbone, device)
    settings = loop.LoopSettings.from_train(config.train, config.pretrain.iterations)
    loop.run(method, settings, run_dir, resume=resume, overwrite=overwrite,
             show_progress=show_progress)
    return method.summary


def pretrained_init(config: Config, run_dir: Path, show_progress: bool = True) -> Path:
    """The init file of `pretrain(config)` in `run_dir`, reused while its settings hold."""
    values = config_to_dict(config)
    signature = {"model": values["model"], "pretrain": values["pretrain"],
                 "seed": config.train.seed}
    # A corpus beside the run folder (`cagnet demo`, compare: <out>/shapes/pretrain) is recorded
    # relative to their common folder, so a moved or copied output folder keeps its init.
    folder = str(Path(run_dir).resolve().parent)
    signature = relocatable(json.loads(json.dumps(signature)), folder)
    path, signature_file = run_dir / INIT_FILE, run_dir / "settings.json"
    if path.is_file() and signature_file.is_file() \
            and json.loads(signature_file.read_text()) == signature:
        LOGGER.info("reusing the pretrained backbone %s", path)
        return path
    pretrain(config, run_dir, overwrite=True, show_progress=show_progress)
    atomic_write_json(signature_file, signature)
    return path
