"""The stage sequences of each method in `cagnet compare`, and the protocol line of each entry.

Each function runs (or reuses) its stages through `ComparePipeline.stage` and adds its entries
to `entries`; see `pipeline.py` for the stages and `run.py` for the order and the shared step-1 network.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cagnet.baselines.calibration import parse_values, validation_split, write_split_file
from cagnet.baselines.calibration_run import calibrate, sweep_target, write_calibration
from cagnet.baselines.compare.pipeline import ComparePipeline, clean_folder, entry
from cagnet.baselines.compare.stages import StageOutcome, restate_protocol
from cagnet.baselines.pseudo_labels import rule_from_config, write_pseudo_labels
from cagnet.baselines.self_training import train_self_training
from cagnet.baselines.spnet import train_spnet
from cagnet.baselines.zs3net import train_zs3net
from cagnet.config import Config
from cagnet.datasets.splits import ClassSplit
from cagnet.engine.checkpoint import load_model
from cagnet.engine.trainer import train
from cagnet.utils.runtime import resolve_device


def _trained(result) -> tuple[Path, dict, dict]:
    return result.checkpoint, result.scores, {}


def cagnet(pipeline: ComparePipeline, entries: dict) -> StageOutcome:
    """CaGNet step 1 (the shared step-1 network) and the mixed finetune."""
    show = pipeline.show_progress
    config = pipeline.config("cagnet_step1", "baseline.method=cagnet")
    run_dir = pipeline.work / "cagnet" / "step1"
    step1 = pipeline.stage("cagnet_step1", run_dir, config, {}, lambda: _trained(
        train(config, run_dir, overwrite=True, show_progress=show)))
    finetune_config = pipeline.config("cagnet_finetune", "baseline.method=cagnet",
                                      "model.init=")
    finetune_dir = pipeline.work / "cagnet" / "finetune"
    finetune = pipeline.stage("cagnet_finetune", finetune_dir, finetune_config,
                              {"init": step1.checkpoint}, lambda: _trained(
                                  train(finetune_config, finetune_dir, overwrite=True,
                                        init_checkpoint=step1.checkpoint, show_progress=show)))
    entries["cagnet"] = entry(
        finetune, f"CaGNet: step 1 ({config.train.iterations} iterations, backbone + contextual "
        f"module + generator + classifier on seen classes), then the mixed finetune "
        f"({finetune_config.train.iterations} iterations, step 1 / step 2 alternating every "
        f"{finetune_config.train.mixed_period}, backbone frozen, unseen rate "
        f"{finetune_config.train.gen_unseen_rate:g})", step1_run=str(step1.run_dir))
    return step1


def spnet(pipeline: ComparePipeline, entries: dict, split: ClassSplit) -> None:
    """SPNet, SPNet without the validation classes, and SPNet-c (T picked on them)."""
    show = pipeline.show_progress
    config = pipeline.config("spnet", "baseline.method=spnet")
    run_dir = pipeline.work / "spnet"
    trained = pipeline.stage("spnet", run_dir, config, {}, lambda: _trained(
        train_spnet(config, run_dir, overwrite=True, show_progress=show)))
    held_out = validation_split(split)
    split_file = pipeline.work / "spnet_validation_split.yaml"
    names = [split.class_names[i] for i in held_out.unseen_ids]
    if not split_file.is_file() or pipeline.fresh:
        write_split_file(held_out, split_file, "SPNet-c calibration split (cagnet compare): the "
                         "validation classes of\nthe benchmark's split play the unseen ones; "
                         "the real unseen classes are ignored.")
    validation_config = pipeline.config("spnet_validation", "baseline.method=spnet",
                                        f"data.split={split_file}")
    validation_dir = pipeline.work / "spnet_validation"
    validation = pipeline.stage(
        "spnet_validation", validation_dir, validation_config, {"split": split_file},
        lambda: _trained(train_spnet(validation_config, validation_dir, overwrite=True,
                                     show_progress=show)))
    values = parse_values(pipeline.recipe.calibration_values)
    calibrated_dir = pipeline.work / "spnet_c"

    def calibrate_spnet() -> tuple[Path, dict, dict]:
        device = resolve_device(config.train.device)
        real = load_model(trained.checkpoint)
        result = calibrate(sweep_target(real, device), values,
                           validation=sweep_target(load_model(validation.checkpoint), device),
                           validation_classes=names)
        write_calibration(calibrated_dir, result, real, str(trained.checkpoint),
                          validation.checkpoint)
        return trained.checkpoint, result.test_scores, {"temperature": result.temperature,
                                                        "chosen_on": result.chosen_on}

    calibrated = pipeline.stage("spnet_c", calibrated_dir, {"values": values},
                                {"model": trained.checkpoint,
                                 "validation_model": validation.checkpoint}, calibrate_spnet)
    description = (f"SPNet: DeepLab-v2 ASPP features projected onto the fixed L2-normalised "
                   f"class embeddings (logits = feature · Eᵀ, no bias, no temperature), "
                   f"cross-entropy over the seen classes summed over the "
                   f"{len(config.model.train_scales) + (len(config.model.train_scales) > 1)} "
                   f"multi-scale maps; its own backbone from the same init, "
                   f"{config.train.iterations} iterations")
    entries["spnet"] = entry(trained, description)
    temperature = calibrated.details["temperature"]
    entries["spnet_c"] = entry(
        calibrated, f"SPNet-c: the SPNet model with T = {temperature:g} subtracted from every "
        f"seen class's softmax probability; T = the best validation hIoU over {len(values)} "
        f"values in [{values[0]:g}, {values[-1]:g}] of an SPNet trained without the validation "
        f"classes {names} (they play the unseen classes; the test unseen classes are never "
        "used to choose T)", temperature=temperature, validation_run=str(validation.run_dir))
    entries["spnet_c"]["run"] = str(calibrated_dir)


def supervised(pipeline: ComparePipeline, entries: dict, split: ClassSplit) -> None:
    """The reference row: CaGNet step 1 with every class seen (the same trunk and recipe), to
    show whether the segmentation itself is healthy before zero-shot is judged."""
    split_file = pipeline.work / "supervised_split.yaml"
    if not split_file.is_file() or pipeline.fresh:
        write_split_file(ClassSplit(split.class_names, split.seen_ids + split.unseen_ids, ()),
                         split_file, "cagnet compare: every class seen (the supervised "
                         "reference row)")
    config = pipeline.config("supervised", "baseline.method=cagnet", f"data.split={split_file}")
    run_dir = pipeline.work / "supervised"
    outcome = pipeline.stage("supervised", run_dir, config, {"split": split_file},
                             lambda: _trained(train(config, run_dir, overwrite=True,
                                                    show_progress=pipeline.show_progress)))
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
    run_dir = pipeline.work / "zs3net"
    outcome = pipeline.stage("zs3net", run_dir, config, {"init": step1.checkpoint},
                             lambda: _trained(train_zs3net(config, run_dir, step1.checkpoint,
                                                           overwrite=True,
                                                           show_progress=pipeline.show_progress)))
    entries["zs3net"] = entry(outcome, "ZS3Net: " + _zs3net_description(config,
                                                                         "CaGNet step 1"))


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


def _st_protocol(pseudo: StageOutcome, zero_embedding: bool | None) -> dict:
    details = pseudo.details
    text = (f"pseudo-labelled ({details['rule']}) from the trained model on every training "
            f"pixel whose training label is 255 (background included, as in the original "
            f"code): {details['total_pseudo_labelled_pixels']} pixels; these reach the losses "
            "with their unseen class")
    if zero_embedding is not None:
        text += ("; the generator is conditioned on a zero vector for them (original quirk)"
                 if zero_embedding else "; the generator is conditioned on their class's "
                 "embedding")
    return {"unseen_training_pixels": text}


def cagnet_self_training(pipeline: ComparePipeline, entries: dict) -> None:
    """The original's `st` phase (step 1 on pseudo-labels, online by default) then its
    `st_mixed` phase (the mixed finetune on the plain seen labels); offline labelling trains
    both phases on the pseudo-label folder instead."""
    source = pipeline.outcomes["cagnet_finetune"]
    folder = pipeline.work / "cagnet_st"
    fixed = ("baseline.method=cagnet", "model.init=")
    step1_config = pipeline.config("cagnet_st_step1", *fixed)
    settings = step1_config.self_training
    zero = ("; the generator is conditioned on a zero vector for them (original quirk)"
            if settings.zero_embedding_for_pseudo_labels
            else "; the generator is conditioned on their class's embedding")
    if settings.labelling == "online":
        updates = {"unseen_training_pixels": (
            "every step-1 batch labelled online by the current model (best-ranked unseen class "
            f"when among the top {settings.top_p} predictions, feature grid) on the pixels "
            f"whose training label is 255 (background included, as in the original){zero}")}
        inputs, extra, finetune_fixed = {}, {}, fixed
    else:
        pseudo = _pseudo_labels(pipeline, "cagnet_st_pseudo_labels", "cagnet", source,
                                step1_config, folder / "pseudo_labels")
        updates = _st_protocol(pseudo, settings.zero_embedding_for_pseudo_labels)
        finetune_fixed = fixed + (f"data.pseudo_label_dir={pseudo.run_dir}",)
        step1_config = pipeline.config("cagnet_st_step1", *finetune_fixed)
        inputs = {"pseudo_labels": pseudo.checkpoint}
        extra = {"pseudo_label_diagnostics": pseudo.details.get("diagnostics"),
                 "pseudo_labels": str(pseudo.run_dir)}
    finetune_config = pipeline.config("cagnet_st_finetune", *finetune_fixed)
    step1 = _self_training_stage(pipeline, "cagnet_st_step1", folder / "step1", step1_config,
                                 source.checkpoint, updates, inputs)
    final = _self_training_stage(pipeline, "cagnet_st_finetune", folder / "finetune",
                                 finetune_config, step1.checkpoint, updates, inputs)
    labels = "pseudo-labels" if settings.labelling == "offline" else "the seen labels only"
    entries["cagnet_st"] = entry(
        final, f"CaGNet + ST: {updates['unseen_training_pixels']}; step 1 "
        f"({step1_config.train.iterations} iterations) from the CaGNet model, then the mixed "
        f"finetune ({finetune_config.train.iterations} iterations) on {labels}", **extra)


def _self_training_stage(pipeline: ComparePipeline, name: str, run_dir: Path, config: Config,
                         init: Path, updates: dict, inputs: dict) -> StageOutcome:
    def action() -> tuple[Path, dict, dict]:
        plain = config.train.stage == "finetune" and config.self_training.labelling == "online"
        run = train if plain else train_self_training
        result = run(config, run_dir, init_checkpoint=init, overwrite=True,
                     show_progress=pipeline.show_progress)
        if not plain:
            restate_protocol(run_dir, updates, f"{config.name}: {name} (self-training)")
        return result.checkpoint, result.scores, {}

    return pipeline.stage(name, run_dir, config, {"init": init, **inputs}, action)


def zs3net_self_training(pipeline: ComparePipeline, entries: dict) -> None:
    source = pipeline.outcomes["zs3net"]
    folder = pipeline.work / "zs3net_st"
    probe = pipeline.config("zs3net_st_step1")
    pseudo = _pseudo_labels(pipeline, "zs3net_st_pseudo_labels", "zs3net", source, probe,
                            folder / "pseudo_labels")
    pseudo_dir = f"data.pseudo_label_dir={pseudo.run_dir}"
    step1_config = pipeline.config("zs3net_st_step1", "baseline.method=cagnet", "model.init=",
                                   pseudo_dir, "self_training.labelling=offline",
                                   "self_training.zero_embedding_for_pseudo_labels=false")
    updates = _st_protocol(pseudo, None)
    step1 = _self_training_stage(pipeline, "zs3net_st_step1", folder / "step1", step1_config,
                                 source.checkpoint, updates,
                                 {"pseudo_labels": pseudo.checkpoint})
    config = pipeline.config("zs3net_st", "baseline.method=zs3net", "model.init=", pseudo_dir)
    run_dir = folder / "zs3net"

    def action() -> tuple[Path, dict, dict]:
        result = train_zs3net(config, run_dir, step1.checkpoint, overwrite=True,
                              show_progress=pipeline.show_progress)
        restate_protocol(run_dir, updates, f"{config.name}: ZS3Net + ST")
        return result.checkpoint, result.scores, {}

    final = pipeline.stage("zs3net_st", run_dir, config, {"init": step1.checkpoint,
                                                          "pseudo_labels": pseudo.checkpoint},
                           action)
    entries["zs3net_st"] = entry(
        final, f"ZS3Net + ST: {updates['unseen_training_pixels']}; step 1 "
        f"({step1_config.train.iterations} iterations) from the ZS3Net model, then ZS3Net's "
        "stage on the new features (the pseudo-labelled pixels count as real unseen pixels): "
        + _zs3net_description(config, "that step 1"),
        pseudo_label_diagnostics=pseudo.details.get("diagnostics"),
        pseudo_labels=str(pseudo.run_dir))
