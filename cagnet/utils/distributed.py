"""Multi-process training with torchrun (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`; a no-op without).

No DDP: a CaGNet step backs three totals into disjoint parameter sets, so each optimiser's
gradients are all-reduced right before it steps. `train.batch_size` is global and every loss a
mean over its valid pixels, so `BatchSync.gather` concatenates what the losses read from every
rank, differentiably: each rank computes the global loss and gradient shares are SUMMED. Only
per-sample random draws (latent noise, dropout) differ from one process (per-rank seeds)."""

import atexit
import importlib
import logging
import os
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from cagnet.errors import ConfigError


@dataclass(frozen=True)
class DistributedContext:
    """Who this process is. A single process is rank 0 of a world of size 1."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main_process(self) -> bool:
        """Only the main process logs, writes TensorBoard, checkpoints and reports."""
        return self.rank == 0


def environment_ranks(environment: Mapping[str, str] | None = None) -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's variables; (0, 0, 1) without them."""
    environment = os.environ if environment is None else environment
    values = []
    for name, default in (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", 1)):
        text = environment.get(name, "")
        try:
            values.append(int(text) if text.strip() else default)
        except ValueError:
            raise ConfigError(f"environment variable {name}: expected an integer, got "
                              f"{text!r}") from None
    rank, local_rank, world_size = values
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ConfigError(f"environment: RANK={rank}, LOCAL_RANK={local_rank}, "
                          f"WORLD_SIZE={world_size} is not a valid process layout")
    return rank, local_rank, world_size


def initialize(device: torch.device) -> DistributedContext:
    """Join torchrun's process group (world size > 1); CUDA becomes `cuda:LOCAL_RANK`."""
    rank, local_rank, world_size = environment_ranks()
    if world_size == 1:
        return DistributedContext(0, 0, 1, device)
    if device.type not in ("cuda", "cpu"):
        raise ConfigError(f"train.device: multi-process training runs on cuda or cpu, got "
                          f"{device.type!r}")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # On first import, torch.distributed.nn.functional stores the default group in its
        # functions' default arguments, and torch imports it lazily (torch._dynamo, reached
        # from the first optimiser). Imported after the group exists, it keeps the group alive
        # past destroy_process_group(): gloo's worker threads then live into interpreter
        # shutdown, and one releasing a finished collective's tensors aborts the process
        # ("terminate called without an active exception", SIGABRT). Imported first, those
        # defaults stay None.
        importlib.import_module("torch.distributed.nn.functional")
        dist.init_process_group(backend, rank=rank, world_size=world_size)
        atexit.register(cleanup)  # also on error paths; leaving the group is not collective
    if rank != 0:  # progress messages once (from rank 0); warnings and errors from every rank
        logging.getLogger("cagnet").setLevel(logging.WARNING)
    return DistributedContext(rank, local_rank, world_size, device)


def cleanup() -> None:
    """Leave the process group (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if is_active():
        dist.barrier()


def sum_across_processes(tensor: torch.Tensor) -> torch.Tensor:
    """All-reduce (sum) `tensor` in place (exact for integer counts) and return it."""
    if is_active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_module(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (the start must be identical)."""
    if is_active():  # through `.data`: no autograd involved
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def local_batch_size(global_batch: int, world_size: int, key: str = "train.batch_size") -> int:
    """The per-process share of a global batch; it must divide evenly."""
    if global_batch % world_size:
        raise ConfigError(f"{key}: {global_batch} is the global batch and must be divisible by "
                          f"the number of processes ({world_size}); use a multiple of {world_size}")
    return global_batch // world_size


def rank_seed(seed: int, rank: int) -> int:
    """Rank `rank`'s seed for per-sample draws (rank 0 keeps `seed`): iteration seeds are 7919
    (prime) apart and 104729 is prime, so seeds stay distinct below 7919 ranks."""
    return (seed + 104_729 * rank) % (2 ** 63 - 1)


def shard_loader(loader: DataLoader, rank: int, world_size: int, max_items: int = 0) -> DataLoader:
    """The strided subset (items rank, rank + N, ...) of an evaluation loader's dataset, within
    its first `max_items` items when set; the confusion matrices then sum to the full one."""
    if world_size == 1:
        return loader
    count = min(len(loader.dataset), max_items) if max_items else len(loader.dataset)
    return DataLoader(loader.dataset, batch_size=loader.batch_size,
                      sampler=list(range(rank, count, world_size)),
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn)


class _GatherAlongBatch(torch.autograd.Function):
    """All-gather along dim 0 in rank order. Every rank computes the same loss from it, so the
    backward is this rank's slice of the incoming gradient (no communication)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
        ctx.rank, ctx.length = rank, tensor.shape[0]
        send = tensor.contiguous()
        if dist.get_backend() == "gloo" and send.dtype in (torch.bfloat16, torch.float16):
            send = send.float()  # gloo has no half-precision reductions on every build
        parts = [torch.empty_like(send) for _ in range(world_size)]
        dist.all_gather(parts, send)
        return torch.cat(parts).to(tensor.dtype)

    @staticmethod
    def backward(ctx, gradient: torch.Tensor):
        return gradient.narrow(0, ctx.rank * ctx.length, ctx.length), None, None


class BatchSync:
    """The collectives of one training step; the identity in one process (`LOCAL`)."""

    def __init__(self, rank: int = 0, world_size: int = 1) -> None:
        self.rank, self.world_size = rank, world_size

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """(b, ...) on each rank -> (N * b, ...) in rank order, differentiable."""
        if not self.active:
            return tensor
        return _GatherAlongBatch.apply(tensor, self.rank, self.world_size)

    def local_part(self, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's dim-0 slice of a tensor drawn alike on all ranks (inverse of `gather`)."""
        if not self.active:
            return tensor
        return tensor.chunk(self.world_size)[self.rank]

    def all_true(self, flag: bool, device: torch.device) -> bool:
        """True when `flag` is true on every rank: a skip decision must be the same on all
        ranks, else one rank would wait forever in a collective the others skip."""
        if not self.active:
            return flag
        failures = torch.tensor([0 if flag else 1], dtype=torch.int64, device=device)
        dist.all_reduce(failures, op=dist.ReduceOp.SUM)
        return int(failures.item()) == 0

    def mean_share(self, local_mean: torch.Tensor, count: int) -> torch.Tensor:
        """This rank's local mean over `count` items as its share of the global mean: gradient
        of the share, value of the global mean (the gradient penalty cannot go through `gather`)."""
        if not self.active:
            return local_mean
        counts = torch.tensor([float(count)], dtype=torch.float64, device=local_mean.device)
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
        total = float(counts.item())
        share = local_mean * (count / total) if total > 0 else local_mean * 0
        value = share.detach().float().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return share + (value - share.detach())

    def reduce_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Sum gradients across ranks, one flattened all-reduce per dtype; a gradient None on
        every rank stays None (as in one process), else missing ones count as zeros."""
        if not self.active:
            return
        by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
        for parameter in parameters:
            if parameter.requires_grad:
                by_dtype.setdefault(parameter.dtype, []).append(parameter)
        for dtype, group in by_dtype.items():
            # Leading flags: which parameters have a gradient on any rank.
            present = torch.tensor([parameter.grad is not None for parameter in group],
                                   dtype=dtype, device=group[0].device)
            flat = torch.cat([present] + [(parameter.grad if parameter.grad is not None
                                           else torch.zeros_like(parameter)).reshape(-1)
                                          for parameter in group])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = len(group)
            for index, parameter in enumerate(group):
                summed = flat[offset:offset + parameter.numel()].view(parameter.shape)
                offset += parameter.numel()
                if parameter.grad is not None:
                    parameter.grad.copy_(summed)
                elif flat[index] > 0:
                    parameter.grad = summed.clone()


LOCAL = BatchSync()
