"""How a run executes: process (torchrun rank, device), precision and memory format."""

from dataclasses import dataclass
from typing import Callable, ContextManager

import torch
from torch.utils.data import DataLoader

from cagnet.config import TrainConfig
from cagnet.datasets.segmentation import IterationBatchSampler
from cagnet.engine.steps import StepContext
from cagnet.utils import distributed
from cagnet.utils.distributed import BatchSync, DistributedContext
from cagnet.utils.runtime import autocast_factory, build_grad_scaler, memory_format, prepare_model


@dataclass
class Execution:
    """The execution settings of one process of a run."""

    context: DistributedContext
    autocast: Callable[[], ContextManager]
    scaler: torch.amp.GradScaler
    sync: BatchSync
    memory_format: torch.memory_format
    local_batch_size: int
    channels_last: bool = False
    compile_backbone: bool = False

    @property
    def device(self) -> torch.device:
        return self.context.device

    @property
    def is_main_process(self) -> bool:
        return self.context.is_main_process

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move `model` to the device, apply channels_last / compile, broadcast rank 0's weights."""
        model.to(self.device)
        prepare_model(model, self.channels_last, self.compile_backbone)
        distributed.broadcast_module(model)
        return model

    @classmethod
    def single(cls, device: torch.device, batch_size: int = 1, amp: str = "none") -> "Execution":
        """One process on `device` (the methods that do not support torchrun)."""
        return cls(DistributedContext(device=device), autocast_factory(device, amp),
                   build_grad_scaler(device, amp), BatchSync(), torch.contiguous_format, batch_size)

    @property
    def step_context(self) -> StepContext:
        return StepContext(self.device, self.autocast, self.scaler, self.sync)

    def images_to_device(self, images: torch.Tensor) -> torch.Tensor:
        """(b, 3, H, W) images on the device, in the run's memory format."""
        return images.to(self.device, non_blocking=True, memory_format=self.memory_format)

    def seed(self, iteration_seed: int) -> int:
        """The seed of this rank's draws in an iteration."""
        return distributed.rank_seed(iteration_seed, self.context.rank)

    def batch_sampler(self, dataset_size: int, seed: int,
                      start_iteration: int) -> IterationBatchSampler:
        """This rank's consecutive slice of each global batch, from batch `start_iteration` on."""
        return IterationBatchSampler(dataset_size, self.local_batch_size, seed, start_iteration,
                                     self.context.rank, self.context.world_size)

    def evaluation_loader(self, loader: DataLoader, max_images: int = 0) -> DataLoader:
        """This rank's strided share of the test set (the whole loader in one process)."""
        return distributed.shard_loader(loader, self.context.rank, self.context.world_size,
                                        max_images)

    def any_rank(self, flag: bool) -> bool:
        return not self.sync.all_true(not flag, self.device)

    def state_dict(self) -> dict:
        """What a checkpoint must keep for an exact resume: the fp16 loss scale."""
        return {"grad_scaler": self.scaler.state_dict()} if self.scaler.is_enabled() else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler.is_enabled() and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])


def build_execution(train: TrainConfig, device: torch.device,
                    join_process_group: bool = True) -> Execution:
    """This process's execution (in torchrun's process group when launched by it)."""
    context = distributed.initialize(device) if join_process_group \
        else DistributedContext(device=device)
    local_batch = distributed.local_batch_size(train.batch_size, context.world_size)
    return Execution(context, autocast_factory(context.device, train.amp),
                     build_grad_scaler(context.device, train.amp),
                     BatchSync(context.rank, context.world_size),
                     memory_format(train.channels_last), local_batch, train.channels_last,
                     train.compile)
