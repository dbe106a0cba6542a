"""The stages of each method in `cagnet compare` and the protocol line of its entry: each
function runs (or reuses) its stages through `ComparePipeline.stage` and adds its entries to
`entries` (the stages: `pipeline.py`; their order and the shared step-1 network: `run.py`)."""

import dataclasses
from pathlib import Path
from typing import Callable, Mapping

from cagnet.baselines.calibration import parse_values, validation_split, write_split_file
from cagnet.baselines.calibration_run import calibrate_checkpoints
from cagnet.baselines.compare.pipeline import (ComparePipeline, StageOutcome, clean_folder, entry,
                                               restate_protocol)
from cagnet.baselines.pseudo_labels import rule_from_config, write_pseudo_labels
from cagnet.baselines.self_training import train_self_training
from cagnet.baselines.spnet import train_spnet
from cagnet.baselines.zs3net import train_zs3net
from cagnet.config import Config
from cagnet.datasets.splits import ClassSplit
from cagnet.engine.checkpoint import load_model
from cagnet.engine.trainer import train
from cagnet.utils.runtime import resolve_device


def train_stage(pipeline: ComparePipeline, name: str, config: Config, run: Callable = train,
                init: Path | None = None, inputs: Mapping | None = None,
                restate: tuple[dict, str] | None = None, folder: str = "") -> StageOutcome:
    """Stage `name`: `run(config, <work>/<folder or name>, init_checkpoint=init)`, then with
    `restate` (protocol updates, title) the run's report rewritten (`restate_protocol`)."""
    run_dir = pipeline.work / (folder or name)
    options = {} if init is None else {"init_checkpoint": init}

    def action() -> tuple[Path, dict, dict]:
        result = run(config, run_dir, overwrite=True, show_progress=pipeline.show_progress,
                     **options)
        if restate:
            restate_protocol(run_dir, *restate)
        return result.checkpoint, result.scores, {}

    inputs = {**({"init": init} if init else {}), **(inputs or {})}
    return pipeline.stage(name, run_dir, config, inputs, action)


def _split_file(pipeline: ComparePipeline, name: str, split: ClassSplit, comment: str) -> Path:
    """`<work>/name` holding `split` (kept unless `--fresh`)."""
    path = pipeline.work / name
    if not path.is_file() or pipeline.fresh:
        write_split_file(split, path, comment)
    return path


def cagnet(pipeline: ComparePipeline, entries: dict) -> StageOutcome:
    """CaGNet step 1 (the shared step-1 network) and the mixed finetune."""
    config = pipeline.config("cagnet_step1", "baseline.method=cagnet")
    step1 = train_stage(pipeline, "cagnet_step1", config, folder="cagnet/step1")
    finetune_config = pipeline.config("cagnet_finetune", "baseline.method=cagnet", "model.init=")
    finetune = train_stage(pipeline, "cagnet_finetune", finetune_config, init=step1.checkpoint,
                           folder="cagnet/finetune")
    entries["cagnet"] = entry(
        finetune, f"CaGNet: step 1 ({config.train.iterations} iterations, backbone + contextual "
        f"module + generator + classifier on seen classes), then the mixed finetune "
        f"({finetune_config.train.iterations} iterations, step 1 / step 2 alternating every "
        f"{finetune_config.train.mixed_period}, backbone frozen, unseen rate "
        f"{finetune_config.train.gen_unseen_rate:g})", step1_run=str(step1.run_dir))
    return step1


def spnet(pipeline: ComparePipeline, entries: dict, split: ClassSplit) -> None:
    """SPNet, SPNet without the validation classes, and SPNet-c (T picked on them)."""
    config = pipeline.config("spnet", "baseline.method=spnet")
    trained = train_stage(pipeline, "spnet", config, train_spnet)
    held_out = validation_split(split)
    names = [split.class_names[i] for i in held_out.unseen_ids]
    split_file = _split_file(
        pipeline, "spnet_validation_split.yaml", held_out, "SPNet-c calibration split (cagnet "
        "compare): the validation classes of\nthe benchmark's split play the unseen ones; the "
        "real unseen classes are ignored.")
    validation_config = pipeline.config("spnet_validation", "baseline.method=spnet",
                                        f"data.split={split_file}")
    validation = train_stage(pipeline, "spnet_validation", validation_config, train_spnet,
                             inputs={"split": split_file})
    values = parse_values(pipeline.recipe.calibration_values)
    calibrated_dir = pipeline.work / "spnet_c"

    def calibrate_spnet() -> tuple[Path, dict, dict]:
        result, _ = calibrate_checkpoints(trained.checkpoint, values, out_dir=calibrated_dir,
                                          validation_checkpoint=validation.checkpoint)
        return trained.checkpoint, result.test_scores, {"temperature": result.temperature,
                                                        "chosen_on": result.chosen_on}

    calibrated = pipeline.stage("spnet_c", calibrated_dir, {"values": values}, {
        "model": trained.checkpoint, "validation_model": validation.checkpoint}, calibrate_spnet)
    scales = len(config.model.train_scales)
    entries["spnet"] = entry(
        trained, f"SPNet: DeepLab-v2 ASPP features projected onto the fixed L2-normalised "
        f"class embeddings (logits = feature · Eᵀ, no bias, no temperature), cross-entropy over "
        f"the seen classes summed over the {scales + (scales > 1)} multi-scale maps; its own "
        f"backbone from the same init, {config.train.iterations} iterations")
    temperature = calibrated.details["temperature"]
    entries["spnet_c"] = entry(
        calibrated, f"SPNet-c: the SPNet model with T = {temperature:g} subtracted from every "
        f"seen class's softmax probability; T = the best validation hIoU over {len(values)} "
        f"values in [{values[0]:g}, {values[-1]:g}] of an SPNet trained without the validation "
        f"classes {names} (they play the unseen classes; the test unseen classes are never "
        "used to choose T)", temperature=temperature, validation_run=str(validation.run_dir))
    entries["spnet_c"]["run"] = str(calibrated_dir)
    # T moves only seen probabilities: among the unseen classes the argmax is SPNet's own
    entries["spnet_c"]["scores"]["zsl_miou"] = entries["spnet"]["scores"].get("zsl_miou")


def supervised(pipeline: ComparePipeline, entries: dict, split: ClassSplit) -> None:
    """The reference row: CaGNet step 1 with every class seen (the same trunk and recipe), to
    show whether the segmentation itself is healthy before zero-shot is judged."""
    split_file = _split_file(
        pipeline, "supervised_split.yaml",
        ClassSplit(split.class_names, split.seen_ids + split.unseen_ids, ()),
        "cagnet compare: every class seen (the supervised reference row)")
    config = pipeline.config("supervised", "baseline.method=cagnet", f"data.split={split_file}")
    outcome = train_stage(pipeline, "supervised", config, inputs={"split": split_file})
    entries["supervised"] = entry(
        outcome, f"Supervised reference: CaGNet step 1 ({config.train.iterations} iterations) "
        "with every class seen, labels of all classes; its seen / unseen means are over the "
        "zero-shot split's seen / unseen classes")


def _zs3net_description(config: Config, start: str) -> str:
    zs3net = config.baseline.zs3net
    generated = zs3net.generated_pixels_per_class or "as many as the average seen class"
    return (f"GMMN ([embedding ‖ U(0,1) noise] -> {zs3net.hidden} -> LeakyReLU -> Dropout "
            f"{zs3net.dropout:g} -> feature) trained {zs3net.generator_iterations} iterations "
            f"with multi-kernel MMD (sigma {zs3net.mmd_sigmas}) on up to "
            f"{zs3net.pixels_per_class} real pixels per class and image of {start}'s frozen "
            f"features; classifier (CaGNet's trunk + cls head, from {start}) retrained "
            f"{zs3net.classifier_iterations} iterations on real labelled pixels + generated "
            f"unseen pixels ({generated} per unseen class and batch), unseen classes weighted "
            f"{zs3net.unseen_weight:g} in the cross-entropy")


def zs3net(pipeline: ComparePipeline, entries: dict, step1: StageOutcome) -> None:
    config = pipeline.config("zs3net", "baseline.method=zs3net", "model.init=")
    outcome = train_stage(pipeline, "zs3net", config, train_zs3net, step1.checkpoint)
    entries["zs3net"] = entry(outcome, "ZS3Net: " + _zs3net_description(config, "CaGNet step 1"))


def _pseudo_labels(pipeline: ComparePipeline, name: str, method: str, source: StageOutcome,
                   config: Config, out_dir: Path) -> StageOutcome:
    """Pseudo-label the training set with `source`'s model and `method`'s rule."""
    rule, description = rule_from_config(method, config)

    def action() -> tuple[Path, dict, dict]:
        loaded = load_model(source.checkpoint)
        device = resolve_device(config.train.device)
        summary = write_pseudo_labels(loaded.model.to(device), config, loaded.split(), rule,
                                      clean_folder(out_dir), device)
        return out_dir / "summary.json", {}, {"rule": description, **summary}

    signature = {"rule": description, "data": dataclasses.asdict(config.data),
                 "eval_warp": config.eval.warp_size}
    return pipeline.stage(name, out_dir, signature, {"model": source.checkpoint}, action)


def _conditioning(zero_embedding: bool | None) -> str:
    """How the generator is conditioned on pseudo-labelled pixels (None: not said)."""
    if zero_embedding is None:
        return ""
    return "; the generator is conditioned on " + (
        "a zero vector for them (original quirk)" if zero_embedding else "their class's embedding")


def _st_protocol(pseudo: StageOutcome, zero_embedding: bool | None) -> dict:
    return {"unseen_training_pixels": (
        f"pseudo-labelled ({pseudo.details['rule']}) from the trained model on every training "
        f"pixel whose training label is 255 (background included, as in the original code): "
        f"{pseudo.details['total_pseudo_labelled_pixels']} pixels; these reach the losses with "
        f"their unseen class{_conditioning(zero_embedding)}")}


def _pseudo_label_entry(pseudo: StageOutcome) -> dict:
    return {"pseudo_label_diagnostics": pseudo.details.get("diagnostics"),
            "pseudo_labels": str(pseudo.run_dir)}


def _self_training_stage(pipeline: ComparePipeline, name: str, folder: str, config: Config,
                         init: Path, updates: dict, inputs: dict) -> StageOutcome:
    """A stage on pseudo-labels; with online labelling the finetune is the original's plain
    `st_mixed` phase (seen labels only, the trainer's own protocol card)."""
    plain = config.train.stage == "finetune" and config.self_training.labelling == "online"
    restate = None if plain else (updates, f"{config.name}: {name} (self-training)")
    return train_stage(pipeline, name, config, train if plain else train_self_training, init,
                       inputs, restate, folder)


def cagnet_self_training(pipeline: ComparePipeline, entries: dict) -> None:
    """The original's `st` phase (step 1 on pseudo-labels, online by default) then its
    `st_mixed` phase (the mixed finetune on the plain seen labels); offline labelling trains
    both phases on the pseudo-label folder instead."""
    source = pipeline.outcomes["cagnet_finetune"]
    fixed = ("baseline.method=cagnet", "model.init=")
    step1_config = pipeline.config("cagnet_st_step1", *fixed)
    settings = step1_config.self_training
    online = settings.labelling == "online"
    if online:
        updates = {"unseen_training_pixels": (
            "every step-1 batch labelled online by the current model (best-ranked unseen class "
            f"when among the top {settings.top_p} predictions, feature grid) on the pixels "
            "whose training label is 255 (background included, as in the original)"
            + _conditioning(settings.zero_embedding_for_pseudo_labels))}
        inputs, extra = {}, {}
    else:
        pseudo = _pseudo_labels(pipeline, "cagnet_st_pseudo_labels", "cagnet", source,
                                step1_config, pipeline.work / "cagnet_st" / "pseudo_labels")
        updates = _st_protocol(pseudo, settings.zero_embedding_for_pseudo_labels)
        fixed += (f"data.pseudo_label_dir={pseudo.run_dir}",)
        step1_config = pipeline.config("cagnet_st_step1", *fixed)
        inputs, extra = {"pseudo_labels": pseudo.checkpoint}, _pseudo_label_entry(pseudo)
    finetune_config = pipeline.config("cagnet_st_finetune", *fixed)
    step1 = _self_training_stage(pipeline, "cagnet_st_step1", "cagnet_st/step1", step1_config,
                                 source.checkpoint, updates, inputs)
    final = _self_training_stage(pipeline, "cagnet_st_finetune", "cagnet_st/finetune",
                                 finetune_config, step1.checkpoint, updates, inputs)
    entries["cagnet_st"] = entry(
        final, f"CaGNet + ST: {updates['unseen_training_pixels']}; step 1 "
        f"({step1_config.train.iterations} iterations) from the CaGNet model, then the mixed "
        f"finetune ({finetune_config.train.iterations} iterations) on "
        f"{'the seen labels only' if online else 'pseudo-labels'}", **extra)


def zs3net_self_training(pipeline: ComparePipeline, entries: dict) -> None:
    source = pipeline.outcomes["zs3net"]
    pseudo = _pseudo_labels(pipeline, "zs3net_st_pseudo_labels", "zs3net", source,
                            pipeline.config("zs3net_st_step1"),
                            pipeline.work / "zs3net_st" / "pseudo_labels")
    pseudo_dir = f"data.pseudo_label_dir={pseudo.run_dir}"
    step1_config = pipeline.config("zs3net_st_step1", "baseline.method=cagnet", "model.init=",
                                   pseudo_dir, "self_training.labelling=offline",
                                   "self_training.zero_embedding_for_pseudo_labels=false")
    updates, inputs = _st_protocol(pseudo, None), {"pseudo_labels": pseudo.checkpoint}
    step1 = _self_training_stage(pipeline, "zs3net_st_step1", "zs3net_st/step1", step1_config,
                                 source.checkpoint, updates, inputs)
    config = pipeline.config("zs3net_st", "baseline.method=zs3net", "model.init=", pseudo_dir)
    final = train_stage(pipeline, "zs3net_st", config, train_zs3net, step1.checkpoint, inputs,
                        (updates, f"{config.name}: ZS3Net + ST"), "zs3net_st/zs3net")
    entries["zs3net_st"] = entry(
        final, f"ZS3Net + ST: {updates['unseen_training_pixels']}; step 1 "
        f"({step1_config.train.iterations} iterations) from the ZS3Net model, then ZS3Net's "
        "stage on the new features (the pseudo-labelled pixels count as real unseen pixels): "
        + _zs3net_description(config, "that step 1"), **_pseudo_label_entry(pseudo))
