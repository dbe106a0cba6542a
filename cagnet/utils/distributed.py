"""Multi-process training with torchrun: process group, rank-0 gating and the collectives of
one training step.

`torchrun --nproc_per_node=N -m cagnet train ...` sets `RANK`, `LOCAL_RANK` and `WORLD_SIZE`;
`initialize` reads them, joins the process group (NCCL on CUDA, gloo on the CPU) and gives every
process the device of its local rank. Without those variables everything here is a no-op and
the single-process path runs unchanged.

Why no `DistributedDataParallel`: a CaGNet step backs three totals into three disjoint parameter
sets with `backward(inputs=...)` and steps three optimisers (plus step-2 iterations that touch
only the classifier). DDP's reducer fires on every backward of the wrapped module and expects
each parameter to receive exactly one gradient per forward, so it would need
`find_unused_parameters` and would still all-reduce a partially filled bucket after the first of
the three backward calls. Instead `BatchSync.reduce_gradients` all-reduces each optimiser's
gradients in one flattened call right before that optimiser steps: the alternating G / D /
backbone logic stays exactly the single-process logic.

How the multi-process step equals the single-process step with the same global batch:
`train.batch_size` is the global batch; rank r loads samples r*B/N .. (r+1)*B/N - 1 of it
(`IterationBatchSampler(rank, world_size)` plays the role of torch's DistributedSampler for this
iteration-based loop). Every loss term is a mean over the valid pixels of the whole batch (and
the MMD pairs up pixels of different images), so a mean of per-rank means would be biased
whenever ranks hold different numbers of valid pixels, and the MMD could not be split at all.
`BatchSync.gather` therefore concatenates the tensors the losses read (logits, features,
labels) from every rank in rank order, differentiably, so each rank computes exactly the global
loss of the single-process run. Its backward returns the gradient of that loss with respect to
the rank's own slice, so each rank's parameter gradients are its samples' share of the global
gradient and the shares are SUMMED across ranks (not averaged). What still differs from one
process: the per-sample random draws (latent noise, dropout masks) come from per-rank seeds.
"""

from __future__ import annotations

import atexit
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
    """Join the process group when launched by torchrun (world size > 1).

    Args:
        device: the configured device (`resolve_device(train.device)`); under torchrun a CUDA
            device becomes `cuda:LOCAL_RANK`.
    """
    rank, local_rank, world_size = environment_ranks()
    if world_size == 1:
        return DistributedContext(0, 0, 1, device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ConfigError(f"train.device: multi-process training runs on cuda or cpu, got "
                          f"{device.type!r}")
    if not dist.is_initialized():
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
    """All-reduce (sum) `tensor` in place and return it; a no-op in a single process. Exact for
    integer tensors such as a confusion matrix."""
    if is_active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_module(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (the start must be identical)."""
    if not is_active():
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def local_batch_size(global_batch: int, world_size: int, key: str = "train.batch_size") -> int:
    """The per-process share of a global batch; it must divide evenly."""
    if global_batch % world_size:
        raise ConfigError(f"{key}: {global_batch} is the global batch and must be divisible by "
                          f"the number of processes ({world_size}); use a multiple of "
                          f"{world_size}")
    return global_batch // world_size


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank `rank`'s per-sample draws (latent noise, dropout) from an iteration's
    seed: rank 0 keeps `seed` (a single process is unchanged), other ranks get distinct streams.
    Iteration seeds are multiples of the prime 7919 apart (`iteration_seed`) and 104729 is
    prime, so no two (iteration, rank) pairs share a seed for fewer than 7919 ranks."""
    return (seed + 104_729 * rank) % (2 ** 63 - 1)


def shard_loader(loader: DataLoader, rank: int, world_size: int,
                 max_items: int = 0) -> DataLoader:
    """The strided subset (items rank, rank + N, ...) of an evaluation loader's dataset, within
    its first `max_items` items when set; the confusion matrices then sum to the full one."""
    if world_size == 1:
        return loader
    count = len(loader.dataset)
    if max_items:
        count = min(count, max_items)
    return DataLoader(loader.dataset, batch_size=loader.batch_size,
                      sampler=list(range(rank, count, world_size)),
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn)


class _GatherAlongBatch(torch.autograd.Function):
    """All-gather along dim 0 in rank order. Every rank computes the same loss from the
    gathered tensor, so the gradient with respect to this rank's input is exactly its slice of
    the incoming gradient (no communication in the backward pass)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
        ctx.rank, ctx.length = rank, tensor.shape[0]
        send = tensor.contiguous()
        wire_dtype = send.dtype
        if dist.get_backend() == "gloo" and send.dtype in (torch.bfloat16, torch.float16):
            wire_dtype = torch.float32  # gloo has no half-precision reductions on every build
        parts = [torch.empty(send.shape, dtype=wire_dtype, device=send.device)
                 for _ in range(world_size)]
        dist.all_gather(parts, send.to(wire_dtype))
        return torch.cat(parts).to(send.dtype)

    @staticmethod
    def backward(ctx, gradient: torch.Tensor):
        return gradient.narrow(0, ctx.rank * ctx.length, ctx.length), None, None


class BatchSync:
    """The collectives of one training step, for `rank` of `world_size` processes. With
    `world_size == 1` (`LOCAL`) every method is the identity and costs nothing."""

    def __init__(self, rank: int = 0, world_size: int = 1) -> None:
        self.rank = rank
        self.world_size = world_size

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """(b, ...) on each rank -> (N * b, ...) in rank order, differentiable."""
        if not self.active:
            return tensor
        return _GatherAlongBatch.apply(tensor, self.rank, self.world_size)

    def local_part(self, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's slice along dim 0 of a global-batch tensor drawn identically on all
        ranks (the inverse of `gather`)."""
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
        """A term computed on this rank's `count` items only (a local mean), turned into this
        rank's share of the global mean: its gradient is the share's, its value the global
        mean (identical on every rank). Used for the gradient penalty, whose critic runs on
        parameters directly and so cannot go through `gather`."""
        if not self.active:
            return local_mean
        device = local_mean.device
        counts = torch.tensor([float(count)], dtype=torch.float64, device=device)
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
        total = float(counts.item())
        share = local_mean * (count / total) if total > 0 else local_mean * 0
        value = share.detach().float().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return share + (value - share.detach())

    def reduce_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Sum each parameter's gradient across ranks: one flattened all-reduce per dtype.

        A parameter whose gradient is None on every rank stays None (so optimisers skip it as
        they would in one process); if some rank has one, the others contribute zeros.
        """
        if not self.active:
            return
        parameters = [parameter for parameter in parameters if parameter.requires_grad]
        by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
        for parameter in parameters:
            by_dtype.setdefault(parameter.dtype, []).append(parameter)
        for dtype, group in by_dtype.items():
            _reduce_group(group, dtype)


def _reduce_group(group: list[torch.nn.Parameter], dtype: torch.dtype) -> None:
    device = group[0].device
    present = torch.tensor([parameter.grad is not None for parameter in group], dtype=dtype,
                           device=device)
    pieces = [present] + [(parameter.grad if parameter.grad is not None
                           else torch.zeros_like(parameter)).reshape(-1) for parameter in group]
    flat = torch.cat(pieces)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = len(group)
    for index, parameter in enumerate(group):
        size = parameter.numel()
        summed = flat[offset:offset + size].view(parameter.shape)
        offset += size
        if parameter.grad is not None:
            parameter.grad.copy_(summed)
        elif flat[index] > 0:
            parameter.grad = summed.clone()


LOCAL = BatchSync()
