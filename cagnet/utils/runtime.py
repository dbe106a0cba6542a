"""Runtime: device, seeds, autocast and GradScaler, memory format, compile, logging, `RunLog`."""

import contextlib
import json
import logging
import random
from pathlib import Path
from typing import Callable, ContextManager

import numpy as np
import torch

from cagnet.errors import ConfigError

LOGGER = logging.getLogger("cagnet")


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: unknown device {name!r}; expected auto, cpu, cuda, "
                          "cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} requested but CUDA is not available")
    return device


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed Python, NumPy and torch (every device) for process `rank`."""
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2 ** 32)
    torch.manual_seed(seed + rank)


def set_deterministic(enabled: bool) -> None:
    """Opt-in deterministic kernels (bit-exact resume needs them); else cuDNN autotunes convs."""
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not enabled


def apply_run_settings(threads: int, seed: int, deterministic: bool) -> None:
    """What every training run sets first: CPU threads (0: torch's default), seeds, determinism."""
    if threads:
        torch.set_num_threads(threads)
    seed_everything(seed)
    set_deterministic(deterministic)


def autocast_factory(device: torch.device, amp: str) -> Callable[[], ContextManager]:
    """One autocast path: `none` gives a null context; `bf16` / `fp16` autocast on `device`."""
    if amp == "none":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def build_grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """The run's GradScaler: enabled for fp16 only (bf16 needs no loss scaling)."""
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")


def memory_format(channels_last: bool) -> torch.memory_format:
    """The memory format of images and conv weights (`train.channels_last`)."""
    return torch.channels_last if channels_last else torch.contiguous_format


def prepare_model(model: torch.nn.Module, channels_last: bool = False,
                  compile_backbone: bool = False) -> torch.nn.Module:
    """`model` in place: NHWC weights, compiled backbone (state-dict keys unchanged)."""
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile_backbone:
        if not hasattr(torch, "compile"):
            raise ConfigError("train.compile: this PyTorch has no torch.compile; set it to false")
        model.backbone.compile()
    return model


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    # gensim logs every step of loading a vector file at INFO; keep the user's log readable.
    logging.getLogger("gensim").setLevel(logging.DEBUG if verbose else logging.WARNING)


class RunLog:
    """One JSON line per log / evaluation interval in `log.jsonl`, plus TensorBoard scalars
    (`train/loss_kl`, `val/hiou`, ...). Only the main process writes."""

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled, self.path, self.writer = enabled, run_dir / "log.jsonl", None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard is a declared dependency; degrade gracefully
                LOGGER.warning("tensorboard is not installed: scalars go to log.jsonl only")

    def write(self, kind: str, iteration: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as stream:
            stream.write(json.dumps({"kind": kind, "iteration": iteration, **values}) + "\n")
        if self.writer is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(f"{kind}/{name}", value, iteration)

    def add_image(self, tag: str, image_chw: np.ndarray, iteration: int) -> None:
        if self.enabled and self.writer is not None:
            self.writer.add_image(tag, image_chw, iteration)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
