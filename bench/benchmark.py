"""Speed and memory of one recipe on synthetic tensors: no dataset needed.

Measures, with exactly the code the trainer, the evaluator and `cagnet predict` run
(bench/measurements.py):

- `matmul`: the yardstick, a (4096 x 4096) @ (4096 x 4096) fp32 matmul (`--matmul-size`);
- `step1`: one step-1 iteration (three-scale backbone forward + backward, all three updates);
- `finetune_step1`: a step-1 iteration of the finetune phase (backbone frozen, run under
  no_grad), with the finetune recipe's loss weights (`--finetune-config`);
- `step2`: one step-2 iteration (generated features train the classifier; no backbone), with
  the finetune recipe's loss weights: step 2 only runs in that phase;
- `eval`: one evaluation batch (`eval.batch_size` images warped to `eval.warp_size`,
  single-scale, logits upsampled to the label size, confusion matrix);
- `predict`: `cagnet predict` on a folder of `--predict-images` images (the first photos
  ../shared/data/voc-samples/*_image.png when present, else synthetic images written to a
  temporary folder), `eval.batch_size` per forward at `eval.warp_size`, every output written:
  images per second.

By default the four training / evaluation measurements run; `--measure all` runs every one,
the yardstick first. `--finetune-config` (default: `<config>_finetune.yaml` beside `--config`,
e.g. bench/cpu_reference_finetune.yaml = experiments/voc12_finetune.yaml at the CPU reference
shapes) must have the model and shapes of `--config`. Every JSON line names both recipes
(`recipe`, `finetune_recipe`; `config` is the name of `--config`), the one the measurement ran
on (`ran_on`) and its loss weights.

Each measurement is the median over `--iterations` timed repetitions after `--warmup` untimed
ones, written as one JSON line (device, recipe, amp, batch, crop, torch version, threads, peak
memory, FLOPs, ...) to `--out`. Peak memory is `torch.cuda.max_memory_allocated` on CUDA and the
peak resident set size (`resource.getrusage`) on the CPU; on the CPU each measurement runs in a
fresh process (unless `--in-process`), so that memory an earlier measurement left in the
allocator does not count. The FLOPs of one repetition come from
`torch.utils.flop_counter.FlopCounterMode` (convolutions and matmuls, forward + backward); with
`--peak-tflops` the achieved fraction of that peak is reported.

Holding the figures against another implementation: seconds depend on the machine and on its
load at that moment (on a shared machine, note `uptime` before and after); ratios measured in
one run do not. When `matmul` is measured (listed first, or `--measure all`), every one with a
FLOP count also reports `matmul_gflops` (the yardstick's GFLOP/s at this run's thread count and
precision: about the best any dense implementation reaches here, now) and
`fraction_of_matmul` = (its FLOPs / its median seconds) / that rate. To compare with another
implementation, time its equivalent step on the same machine, shapes and thread count right
after this benchmark and give the ratio of the two medians (a ratio measured in one run), or
compare `fraction_of_matmul` across machines; absolute seconds from different runs are not
comparable.

    OMP_NUM_THREADS=2 python bench/benchmark.py --config bench/cpu_reference.yaml \\
        --device cpu --iterations 3 --warmup 1 --out bench/results.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Callable

import torch

from cagnet.config import Config, load_config
from cagnet.errors import CagnetError
from cagnet.utils.io import atomic_write_text
from cagnet.utils.runtime import set_deterministic
from measurements import (DEFAULT_MEASUREMENTS, FINETUNE_MEASUREMENTS, MEASUREMENTS,
                          VOC_SAMPLES, Bench, count_flops,
                          matmul_function, peak_memory_mib, reset_peak_memory,
                          time_repetitions)



def default_finetune_config(config: str) -> str:
    """`<stem>_finetune.yaml` beside the recipe `config` (bench/cpu_reference_finetune.yaml
    for bench/cpu_reference.yaml)."""
    path = Path(config)
    return str(path.with_name(f"{path.stem}_finetune{path.suffix}"))


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="recipe YAML (bench/*.yaml)")
    parser.add_argument("--finetune-config", default="",
                        help="finetune recipe of finetune_step1 and step2, same model and "
                             "shapes as --config (default: <config>_finetune.yaml beside it)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="config override of both recipes (repeatable)")
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iterations", type=int, default=5, help="timed repetitions")
    parser.add_argument("--warmup", type=int, default=1, help="untimed repetitions first")
    parser.add_argument("--measure", default=",".join(DEFAULT_MEASUREMENTS),
                        help=f"'all' or a comma-separated subset of {', '.join(MEASUREMENTS)} "
                             "(default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default: train.threads, else torch's default)")
    parser.add_argument("--matmul-size", type=int, default=4096,
                        help="side of the yardstick's square fp32 matrices")
    parser.add_argument("--predict-images", type=int, default=4,
                        help="images per predict repetition (0: every photo of the folder)")
    parser.add_argument("--predict-folder", default=str(VOC_SAMPLES),
                        help="folder of *_image.png photos for predict (default: %(default)s)")
    parser.add_argument("--peak-tflops", type=float, default=0.0,
                        help="the device's peak TFLOP/s for this precision (e.g. 989 for H100 "
                             "SXM dense bf16); adds the achieved fraction")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    parser.add_argument("--in-process", action="store_true",
                        help="on the CPU, run every measurement in this process")
    parser.add_argument("--matmul-gflops", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="", help="append one JSON line per measurement here")
    arguments = parser.parse_args(argv)
    if arguments.measure == "all":
        arguments.measure = ",".join(MEASUREMENTS)
    arguments.finetune_config = arguments.finetune_config or \
        default_finetune_config(arguments.config)
    unknown = set(arguments.measure.split(",")) - set(MEASUREMENTS)
    if unknown or arguments.iterations < 1 or arguments.warmup < 0 \
            or arguments.predict_images < 0:
        parser.error(f"--measure takes {', '.join(MEASUREMENTS)} (got {sorted(unknown)}); "
                     "--iterations >= 1, --warmup >= 0, --predict-images >= 0")
    return arguments


def check_same_shapes(config: Config, finetune: Config) -> None:
    """The finetune recipe must measure the network and shapes of the main one."""
    pairs = {"model": (config.model, finetune.model),
             "data.crop_size": (config.data.crop_size, finetune.data.crop_size)}
    for key in ("batch_size", "amp", "channels_last", "compile"):
        pairs[f"train.{key}"] = (getattr(config.train, key), getattr(finetune.train, key))
    differing = [key for key, (main, other) in pairs.items() if main != other]
    if differing:
        raise CagnetError(f"--finetune-config {finetune.name}: {', '.join(differing)} differ "
                          f"from --config {config.name}; give a finetune recipe of the same "
                          "shapes (e.g. inherit experiments/voc12_finetune.yaml as "
                          "bench/cpu_reference_finetune.yaml does)")


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def time_record(name: str, function: Callable[[], object], arguments: argparse.Namespace,
                device: torch.device, fields: dict) -> dict:
    """Median time, peak memory and FLOPs of one measurement, as one JSON-ready record."""
    method = reset_peak_memory(device)
    seconds = time_repetitions(function, arguments.iterations, arguments.warmup, device)
    memory = peak_memory_mib(device)
    median = statistics.median(seconds)
    return {"measurement": name, **fields, "seconds_median": median,
            "seconds_min": min(seconds), "seconds": seconds,
            "peak_memory_mib": round(memory, 1), "peak_memory_method": method}


def measure(bench: Bench, name: str, arguments: argparse.Namespace, common: dict) -> dict:
    """One training / evaluation / prediction measurement of `bench`."""
    extra: dict = {}
    if name == "predict":
        function, images, source = bench.predict_function(Path(arguments.predict_folder),
                                                          arguments.predict_images)
        extra = {"predict_images": images, "predict_inputs": source,
                 "predict_batch": bench.config.eval.batch_size}
    else:
        function, images = bench.measurement(name)
    record = time_record(name, function, arguments, bench.device, {**common, **extra})
    median = record["seconds_median"]
    if images:
        record["images_per_second"] = images / median
    if not arguments.no_flops:
        flops = count_flops(function)
        record["flops"] = flops
        record["achieved_tflops"] = flops / median / 1e12
        if arguments.matmul_gflops:
            record["matmul_gflops"] = arguments.matmul_gflops
            record["fraction_of_matmul"] = flops / median / 1e9 / arguments.matmul_gflops
        if arguments.peak_tflops:
            record["peak_tflops"] = arguments.peak_tflops
            record["fraction_of_peak"] = record["achieved_tflops"] / arguments.peak_tflops
    return record


def measure_matmul(arguments: argparse.Namespace, device: torch.device, common: dict) -> dict:
    function, flops = matmul_function(arguments.matmul_size, device)
    record = time_record("matmul", function, arguments, device,
                         {**common, "matrix_size": arguments.matmul_size,
                          "float32_matmul_precision": torch.get_float32_matmul_precision()})
    record["flops"] = flops
    record["gflops"] = flops / record["seconds_median"] / 1e9
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
    if record["measurement"] == "matmul":
        return (f"{'matmul':15s} median {record['seconds_median']:.4g} s, "
                f"{record['gflops']:.4g} GFLOP/s ({record['matrix_size']}^2 fp32, "
                f"{record['threads']} threads)")
    speed = f", {record['images_per_second']:.3g} img/s" if "images_per_second" in record else ""
    flops = f", {record['achieved_tflops'] * 1e3:.3g} GFLOP/s" if "flops" in record else ""
    if "fraction_of_matmul" in record:
        flops += f" = {record['fraction_of_matmul']:.2f} x matmul"
    return (f"{record['measurement']:15s} median {record['seconds_median']:.4g} s{speed}, peak "
            f"{record['peak_memory_mib']:.0f} MiB{flops}")


def emit(record: dict, arguments: argparse.Namespace) -> None:
    print(summary_line(record), flush=True)
    if arguments.out:
        append_records(arguments.out, [record])


def run_isolated(argv: list[str], names: list[str], matmul_gflops: float) -> int:
    """Each measurement in a fresh process (CPU peak RSS cannot be reset to zero)."""
    for name in names:
        command = [sys.executable, str(Path(__file__).resolve()), *argv, "--measure", name,
                   "--in-process", "--matmul-gflops", repr(matmul_gflops)]
        status = subprocess.run(command).returncode
        if status:
            return status
    return 0


def common_fields(arguments: argparse.Namespace, base: Config, ran_on: str, config: Config,
                  device: torch.device, bench: Bench | None) -> dict:
    """What every JSON line of this run states about the setting: `base` is `--config`,
    `config` the recipe (at path `ran_on`) that the measurement runs."""
    fields = {
        "device": arguments.device, "device_name": device_description(device),
        "config": base.name,
        "recipe": arguments.config, "finetune_recipe": arguments.finetune_config,
        "ran_on": ran_on, "overrides": arguments.overrides,
        "amp": config.train.amp, "channels_last": config.train.channels_last,
        "compile": config.train.compile, "batch": config.train.batch_size,
        "crop": config.data.crop_size, "train_scales": config.model.train_scales,
        "eval_batch": config.eval.batch_size, "eval_warp": config.eval.warp_size,
        "eval_protocol": config.eval.protocol,
        "loss_weights": {key: value for key, value in dataclasses.asdict(config.loss).items()
                         if isinstance(value, (int, float)) and not isinstance(value, bool)},
        "iterations": arguments.iterations, "warmup": arguments.warmup,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if bench is not None:
        fields.update(grid=list(bench.grid), classes=bench.model.num_classes,
                      embeddings=bench.embedding_source)
    return fields


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    arguments = parse_arguments(argv)
    names = arguments.measure.split(",")
    try:
        config = load_config(arguments.config, arguments.overrides)
        finetune = None
        if any(name in FINETUNE_MEASUREMENTS for name in names):
            finetune = load_config(arguments.finetune_config, arguments.overrides)
            check_same_shapes(config, finetune)
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
    if "matmul" in names:  # first: the yardstick of everything measured after it
        record = measure_matmul(arguments, device,
                                common_fields(arguments, config, arguments.config, config,
                                              device, None))
        emit(record, arguments)
        arguments.matmul_gflops = record["gflops"]
        names = [name for name in names if name != "matmul"]
    if device.type == "cpu" and not arguments.in_process and names \
            and (len(names) > 1 or "matmul" in arguments.measure.split(",")):
        return run_isolated(argv, names, arguments.matmul_gflops)
    benches: dict[str, Bench] = {}
    for name in names:
        recipe, recipe_config = ((arguments.finetune_config, finetune)
                                 if name in FINETUNE_MEASUREMENTS
                                 else (arguments.config, config))
        if recipe not in benches:
            benches[recipe] = Bench(recipe_config, device, arguments.seed)
        bench = benches[recipe]
        common = common_fields(arguments, config, recipe, recipe_config, device, bench)
        emit(measure(bench, name, arguments, common), arguments)
    return 0


if __name__ == "__main__":
    sys.exit(main())
