"""Speed and memory of one recipe on synthetic tensors: no dataset needed.

Measures, with exactly the code the trainer and the evaluator run (bench/measurements.py):

- `step1`: one step-1 iteration (three-scale backbone forward + backward, all three updates);
- `finetune_step1`: a step-1 iteration of the finetune phase (backbone frozen, run under no_grad);
- `step2`: one step-2 iteration (generated features train the classifier; no backbone);
- `eval`: one evaluation batch (`eval.batch_size` images warped to `eval.warp_size`,
  single-scale, logits upsampled to the label size, confusion matrix).

Each measurement is the median over `--iterations` timed repetitions after `--warmup` untimed
ones, written as one JSON line (device, recipe, amp, batch, crop, torch version, threads, peak
memory, FLOPs, ...) to `--out`. Peak memory is `torch.cuda.max_memory_allocated` on CUDA and the
peak resident set size (`resource.getrusage`) on the CPU; on the CPU each measurement runs in a
fresh process (unless `--in-process`), so that memory an earlier measurement left in the
allocator does not count. The FLOPs of one repetition come from
`torch.utils.flop_counter.FlopCounterMode` (convolutions and matmuls, forward + backward); with
`--peak-tflops` the achieved fraction of that peak is reported.

    OMP_NUM_THREADS=2 python bench/benchmark.py --config bench/cpu_reference.yaml \
        --device cpu --iterations 3 --warmup 1 --out bench/results.jsonl
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from cagnet.config import load_config
from cagnet.errors import CagnetError
from cagnet.utils.io import atomic_write_text
from cagnet.utils.runtime import set_deterministic
from measurements import (MEASUREMENTS, Bench, count_flops, peak_memory_mib, reset_peak_memory,
                          time_repetitions)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="recipe YAML (bench/*.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="config override (repeatable)")
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iterations", type=int, default=5, help="timed repetitions")
    parser.add_argument("--warmup", type=int, default=1, help="untimed repetitions first")
    parser.add_argument("--measure", default=",".join(MEASUREMENTS),
                        help=f"comma-separated subset of {', '.join(MEASUREMENTS)}")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default: train.threads, else torch's default)")
    parser.add_argument("--peak-tflops", type=float, default=0.0,
                        help="the device's peak TFLOP/s for this precision (e.g. 989 for H100 "
                             "SXM dense bf16); adds the achieved fraction")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    parser.add_argument("--in-process", action="store_true",
                        help="on the CPU, run every measurement in this process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="", help="append one JSON line per measurement here")
    arguments = parser.parse_args(argv)
    unknown = set(arguments.measure.split(",")) - set(MEASUREMENTS)
    if unknown or arguments.iterations < 1 or arguments.warmup < 0:
        parser.error(f"--measure takes {', '.join(MEASUREMENTS)} (got {sorted(unknown)}); "
                     "--iterations >= 1, --warmup >= 0")
    return arguments


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def measure(bench: Bench, name: str, arguments: argparse.Namespace, common: dict) -> dict:
    """Time, peak memory and FLOPs of one measurement, as one JSON-ready record."""
    function, images = bench.measurement(name)
    method = reset_peak_memory(bench.device)
    seconds = time_repetitions(function, arguments.iterations, arguments.warmup, bench.device)
    memory = peak_memory_mib(bench.device)
    median = statistics.median(seconds)
    record = {"measurement": name, **common, "seconds_median": median,
              "seconds_min": min(seconds), "seconds": seconds,
              "peak_memory_mib": round(memory, 1), "peak_memory_method": method}
    if images:
        record["images_per_second"] = images / median
    if not arguments.no_flops:
        flops = count_flops(function)
        record["flops"] = flops
        record["achieved_tflops"] = flops / median / 1e12
        if arguments.peak_tflops:
            record["peak_tflops"] = arguments.peak_tflops
            record["fraction_of_peak"] = record["achieved_tflops"] / arguments.peak_tflops
    return record


def append_records(path: str, records: list[dict]) -> None:
    """Append JSON lines to `path` (the whole file is rewritten atomically)."""
    target = Path(path)
    existing = target.read_text(encoding="utf-8") if target.is_file() else ""
    if existing and not existing.endswith("\n"):
        existing += "\n"
    lines = "".join(json.dumps(record) + "\n" for record in records)
    atomic_write_text(target, existing + lines)


def summary_line(record: dict) -> str:
    speed = f", {record['images_per_second']:.3g} img/s" if "images_per_second" in record else ""
    flops = f", {record['achieved_tflops'] * 1e3:.3g} GFLOP/s" if "flops" in record else ""
    return (f"{record['measurement']:15s} median {record['seconds_median']:.4g} s{speed}, peak "
            f"{record['peak_memory_mib']:.0f} MiB{flops}")


def run_isolated(argv: list[str], names: list[str]) -> int:
    """Each measurement in a fresh process (CPU peak RSS cannot be reset to zero)."""
    for name in names:
        command = [sys.executable, str(Path(__file__).resolve()), *argv, "--measure", name,
                   "--in-process"]
        status = subprocess.run(command).returncode
        if status:
            return status
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    arguments = parse_arguments(argv)
    names = arguments.measure.split(",")
    if arguments.device == "cpu" and not arguments.in_process and len(names) > 1:
        return run_isolated(argv, names)
    try:
        config = load_config(arguments.config, arguments.overrides)
    except CagnetError as error:
        print(f"benchmark: error: {error}", file=sys.stderr)
        return 2
    if arguments.device == "cuda" and not torch.cuda.is_available():
        print("benchmark: error: --device cuda, but CUDA is not available", file=sys.stderr)
        return 2
    threads = arguments.threads or config.train.threads
    if threads:
        torch.set_num_threads(threads)
    set_deterministic(config.train.deterministic)  # as the trainer: cuDNN autotuning unless set
    device = torch.device(arguments.device)
    bench = Bench(config, device, arguments.seed)
    common = {
        "device": arguments.device, "device_name": device_description(device),
        "config": config.name, "recipe": str(arguments.config), "overrides": arguments.overrides,
        "amp": config.train.amp, "channels_last": config.train.channels_last,
        "compile": config.train.compile, "batch": config.train.batch_size,
        "crop": config.data.crop_size, "grid": list(bench.grid),
        "train_scales": config.model.train_scales, "eval_batch": config.eval.batch_size,
        "eval_warp": config.eval.warp_size, "eval_protocol": config.eval.protocol,
        "classes": bench.model.num_classes, "embeddings": bench.embedding_source,
        "iterations": arguments.iterations, "warmup": arguments.warmup,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    for name in names:
        record = measure(bench, name, arguments, common)
        print(summary_line(record), flush=True)
        if arguments.out:
            append_records(arguments.out, [record])
    return 0


if __name__ == "__main__":
    sys.exit(main())
