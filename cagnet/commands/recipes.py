"""`cagnet recipes` (the installed recipes) and `cagnet config show` (a resolved config)."""

import argparse

from cagnet.commands.common import add_command, add_config_arguments


def add_parser(commands) -> None:
    add_command(commands, "recipes", "list the installed recipes (usable by name: --config "
                "voc12)", "cagnet recipes", run_recipes)
    config = add_command(commands, "config", "print a recipe's resolved config (inherit "
                         "and --set applied) without running anything",
                         "cagnet config show --config shapes --set train.iterations=100")
    tools = config.add_subparsers(dest="config_command", required=True, metavar="TOOL")
    add_config_arguments(add_command(tools, "show", "print the resolved config as YAML",
                                     "cagnet config show --config voc12_finetune", run_show))


def run_recipes(arguments: argparse.Namespace) -> int:
    from cagnet.config import recipe_names
    for name, path in recipe_names().items():
        lines = [line[1:].strip() for line in path.read_text(encoding="utf-8").splitlines()
                 if line.startswith("#")]
        print(f"{name:<26} {lines[0] if lines else ''}")
    return 0


def run_show(arguments: argparse.Namespace) -> int:
    from cagnet.config import dump_config, load_config
    print(dump_config(load_config(arguments.config, arguments.overrides)), end="")
    return 0
