"""`cagnet calibrate`: calibrated stacking of any checkpoint, T picked on validation classes."""

import argparse

from cagnet.commands.common import add_command, add_config_arguments


def add_parser(commands) -> None:
    parser = add_command(
        commands, "calibrate", "calibrated stacking: subtract T from the seen classes' "
        "probabilities, T chosen on validation classes", """
cagnet calibrate --checkpoint runs/spnet/checkpoints/last.pt \\
    --validation-checkpoint runs/spnet_validation/checkpoints/last.pt
cagnet calibrate --checkpoint runs/spnet/checkpoints/last.pt --temperature 0.6""", run)
    parser.add_argument("--checkpoint", required=True, help="the model to calibrate (a "
                        "checkpoint file of any method)")
    choice = parser.add_mutually_exclusive_group(required=True)
    choice.add_argument("--validation-checkpoint", default=None,
                        help="the same method trained without the split's validation classes "
                        "(they play the unseen classes): T is picked on its curve")
    choice.add_argument("--temperature", type=float, default=None,
                        help="apply this T instead of choosing one (e.g. 0.6, the original's "
                        "VOC value); recorded as given")
    parser.add_argument("--values", default="0:1:0.05",
                        help="the T grid: start:stop:step or a comma list (default 0:1:0.05)")
    add_config_arguments(parser, required=False)
    parser.add_argument("--output-dir", default=None, help="where the calibrated metrics and "
                        "report go (default: calibration_<checkpoint> beside the run's "
                        "checkpoints folder)")


def run(arguments: argparse.Namespace) -> int:
    from cagnet.baselines.calibration import parse_values
    from cagnet.baselines.calibration_run import calibrate_checkpoints
    from cagnet.report.tables import format_scores_line
    result, out_dir = calibrate_checkpoints(
        arguments.checkpoint, parse_values(arguments.values),
        validation_checkpoint=arguments.validation_checkpoint,
        temperature=arguments.temperature, config_path=arguments.config,
        overrides=arguments.overrides, out_dir=arguments.output_dir)
    print(f"T = {result.temperature:g} ({result.chosen_on})")
    print(format_scores_line(result.test_scores))
    print(f"curves and report written to {out_dir}")
    return 0
