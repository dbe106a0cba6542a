"""Multi-process training: two processes under torchrun (gloo on the CPU) give the losses,
evaluation scores and weights of one process with the same global batch; and the pieces of
cagnet/utils/distributed.py on their own.

The two-process test needs local TCP sockets; it is skipped where they cannot be opened, or when
CAGNET_SKIP_DISTRIBUTED=1 is set.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from cagnet.datasets.segmentation import IterationBatchSampler
from cagnet.errors import ConfigError
from cagnet.utils.distributed import (LOCAL, BatchSync, environment_ranks, local_batch_size,
                                      rank_seed, shard_loader)

from conftest import tiny_config_overrides, write_tiny_voc
from deterministic_cli import run as run_deterministic

WORKER = Path(__file__).resolve().parent / "deterministic_cli.py"
# Losses of the two runs agree to float rounding (summation order differs); weights follow
# the same trajectory: their difference is at most 1% of the last checkpoint interval's update.
LOSS_RELATIVE_TOLERANCE = 1e-4
WEIGHT_TOLERANCE_OF_UPDATE = 1e-2


def test_environment_ranks_come_from_torchrun_variables():
    assert environment_ranks({}) == (0, 0, 1)
    assert environment_ranks({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"}) == (3, 1, 4)
    with pytest.raises(ConfigError, match="RANK"):
        environment_ranks({"RANK": "x"})
    with pytest.raises(ConfigError, match="not a valid process layout"):
        environment_ranks({"RANK": "4", "WORLD_SIZE": "4"})


def test_the_global_batch_must_divide_among_processes():
    assert local_batch_size(8, 2) == 4
    with pytest.raises(ConfigError, match="train.batch_size: 6 is the global batch"):
        local_batch_size(6, 4)


def test_rank_samplers_partition_the_single_process_batches():
    """IterationBatchSampler(rank, world_size) is this loop's DistributedSampler: the ranks'
    batches, concatenated in rank order, are the single-process global batch."""
    single = IterationBatchSampler(7, 4, seed=3)
    ranks = [IterationBatchSampler(7, 2, seed=3, rank=rank, world_size=2) for rank in (0, 1)]
    for iteration in range(5):
        assert ranks[0].batch_for(iteration) + ranks[1].batch_for(iteration) == \
            single.batch_for(iteration)


def test_evaluation_shards_cover_the_test_set_once():
    loader = DataLoader(list(range(11)), batch_size=2)
    for max_items, expected in ((0, list(range(11))), (5, list(range(5)))):
        items = [int(value) for rank in range(3)
                 for batch in shard_loader(loader, rank, 3, max_items) for value in batch]
        assert sorted(items) == expected
    assert shard_loader(loader, 0, 1) is loader


def test_a_single_process_needs_no_collectives():
    tensor = torch.randn(4, 3, requires_grad=True)
    assert LOCAL.gather(tensor) is tensor and LOCAL.local_part(tensor) is tensor
    assert LOCAL.mean_share(tensor.sum(), 4) is not None and LOCAL.all_true(True, tensor.device)
    assert rank_seed(12345, 0) == 12345 and rank_seed(12345, 1) != rank_seed(12345, 2)


def _collectives(rank: int, port: int, out_dir: str) -> None:
    """Worker of the two-process collectives test (gloo): writes what it observed as JSON."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    sync = BatchSync(rank, 2)
    local = torch.full((2, 3), float(rank + 1), requires_grad=True)
    gathered = sync.gather(local)
    (gathered * torch.arange(12.0).view(4, 3)).sum().backward()
    share = sync.mean_share(torch.tensor([1.0, 4.0][rank], requires_grad=True), [1, 3][rank])
    only_rank0, nowhere, both = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    if rank == 0:
        only_rank0.grad = torch.tensor([1.0, 2.0])
    both.grad = torch.full((2,), rank + 1.0)
    sync.reduce_gradients([only_rank0, nowhere, both])
    result = {"gathered": gathered.tolist(), "local_grad": local.grad.tolist(),
              "share_value": float(share), "only_rank0": only_rank0.grad.tolist(),
              "nowhere": nowhere.grad is None, "both": both.grad.tolist(),
              "all_true": sync.all_true(rank == 0, torch.device("cpu")),
              "local_part": sync.local_part(torch.arange(4)).tolist()}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


@pytest.mark.skipif(os.environ.get("CAGNET_SKIP_DISTRIBUTED") == "1",
                    reason="CAGNET_SKIP_DISTRIBUTED=1")
def test_two_process_collectives_gather_share_and_sum(tmp_path: Path):
    port = _free_port()
    if port is None:
        pytest.skip("cannot open a local TCP socket for the gloo process group")
    torch.multiprocessing.spawn(_collectives, args=(port, str(tmp_path)), nprocs=2)
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for rank, result in enumerate(results):
        assert result["gathered"] == [[1.0] * 3] * 2 + [[2.0] * 3] * 2  # rank order
        # d/d(local) of the global loss: this rank's rows of the weights, no double counting
        assert result["local_grad"] == torch.arange(12.0).view(4, 3)[2 * rank:2 * rank + 2] \
            .tolist()
        assert result["share_value"] == pytest.approx((1.0 + 3 * 4.0) / 4)  # the global mean
        assert result["only_rank0"] == [1.0, 2.0] and result["nowhere"]
        assert result["both"] == [3.0, 3.0] and result["all_true"] is False
        assert result["local_part"] == [2 * rank, 2 * rank + 1]


def _free_port() -> int | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            return probe.getsockname()[1]
    except OSError:
        return None


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def _assert_same_numbers(single: dict, multi: dict, where: str) -> None:
    for key, value in single.items():
        if key == "seconds_per_iteration" or not isinstance(value, float):
            continue
        assert math.isclose(value, multi[key], rel_tol=LOSS_RELATIVE_TOLERANCE, abs_tol=1e-7), \
            f"{where}: {key} {value} (one process) vs {multi[key]} (two processes)"


def _assert_same_run(single: Path, multi: Path) -> None:
    single_log, multi_log = _records(single), _records(multi)
    # Only rank 0 logs: one record per interval, not two.
    assert [(r["kind"], r["iteration"]) for r in single_log] == \
        [(r["kind"], r["iteration"]) for r in multi_log]
    for one, two in zip(single_log, multi_log):
        _assert_same_numbers(one, two, f"{multi.name} {one['kind']} {one['iteration']}")
    _assert_same_numbers(json.loads((single / "metrics.json").read_text()),
                         json.loads((multi / "metrics.json").read_text()), "metrics.json")
    load = lambda run, name: torch.load(run / "checkpoints" / name, weights_only=True)["model"]
    reference, previous, weights = load(single, "last.pt"), load(single, "previous.pt"), \
        load(multi, "last.pt")
    for key, value in reference.items():
        if not value.is_floating_point():
            continue
        update = (value - previous[key]).norm()
        difference = (value - weights[key]).norm()
        assert difference <= WEIGHT_TOLERANCE_OF_UPDATE * update + 1e-6 * value.norm(), \
            f"{multi.name}: {key} differs by {difference:.3g}, the last update was {update:.3g}"


@pytest.mark.skipif(os.environ.get("CAGNET_SKIP_DISTRIBUTED") == "1",
                    reason="CAGNET_SKIP_DISTRIBUTED=1")
def test_torchrun_with_two_processes_matches_one_process(tmp_path: Path):
    port = _free_port()
    if port is None:
        pytest.skip("cannot open a local TCP socket for the gloo process group")
    root = write_tiny_voc(tmp_path / "voc")
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("name: tiny\n")
    overrides = tiny_config_overrides(root) + [
        "train.batch_size=4", "train.iterations=3", "train.log_interval=1",
        "train.eval_interval=2", "data.validation_holdout=1", "model.generator_dropout=[0,0]",
        "model.discriminator_dropout=0"]
    settings = [argument for item in overrides for argument in ("--set", item)]
    start = tmp_path / "single_step1" / "checkpoints" / "last.pt"

    def step1(out: str) -> list[str]:
        return ["train", "--config", str(recipe), "--output-dir", str(tmp_path / out)] + settings

    def finetune(out: str) -> list[str]:  # both finetunes start from the same checkpoint
        return ["finetune", "--config", str(recipe), "--output-dir", str(tmp_path / out),
                "--from", str(start)] + settings + [
            "--set", "train.stage=finetune", "--set", "train.mixed_period=1",
            "--set", "train.iterations=4"]

    assert run_deterministic(step1("single_step1") + ["--then"] + finetune("single_finetune")) \
        == 0
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1",
               "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={port}",
               str(WORKER)] + step1("multi_step1") + ["--then"] + finetune("multi_finetune")
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    _assert_same_run(tmp_path / "single_step1", tmp_path / "multi_step1")
    _assert_same_run(tmp_path / "single_finetune", tmp_path / "multi_finetune")
    assert any("step2_cls_fake" in record for record in _records(tmp_path / "multi_finetune"))


LEAVE_GROUP_SCRIPT = """
import os, sys
import torch
import torch.distributed as dist
from cagnet.utils import distributed

distributed.initialize(torch.device("cpu"))
torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)  # imports torch._dynamo lazily
distributed.sum_across_processes(torch.ones(3))
distributed.cleanup()
import torch.distributed.nn.functional as collectives
held = [name for name in ("all_reduce", "broadcast", "all_gather")
        if any(isinstance(value, dist.ProcessGroup)
               for value in getattr(collectives, name).__defaults__ or ())]
native_threads = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else -1
print(f"rank {os.environ['RANK']} held={held} threads={native_threads}", flush=True)
sys.exit(1 if held else 0)
"""


@pytest.mark.skipif(os.environ.get("CAGNET_SKIP_DISTRIBUTED") == "1",
                    reason="CAGNET_SKIP_DISTRIBUTED=1")
def test_leaving_the_process_group_frees_it(tmp_path: Path):
    """Nothing keeps the gloo group alive after `cleanup` (torch functions bound to it as
    default arguments did): its worker threads must end before interpreter shutdown, else one
    can abort the process at exit (SIGABRT) after a run that succeeded."""
    port = _free_port()
    if port is None:
        pytest.skip("cannot open a local TCP socket for the gloo process group")
    script = tmp_path / "leave_group.py"
    script.write_text(LEAVE_GROUP_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1",
               "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={port}",
               str(script)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for line in result.stdout.splitlines():
        if line.startswith("rank "):  # one thread left: the main one (gloo's are gone)
            threads = int(line.rsplit("threads=", 1)[1])
            assert threads in (-1, 1), line
