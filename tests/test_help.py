"""Every help screen shows an example, and every option says what it is for."""

from __future__ import annotations

import argparse

from cagnet import __version__
from cagnet.cli import build_parser, main


def all_parsers(parser: argparse.ArgumentParser, path: str = "cagnet"):
    """(command path, parser) of `parser` and of every subcommand below it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from all_parsers(child, f"{path} {name}")


def test_every_subcommand_help_shows_an_example_and_documents_each_option():
    parsers = list(all_parsers(build_parser()))[1:]
    assert len(parsers) > 20
    missing_examples = [path for path, parser in parsers
                        if "examples:" not in parser.format_help()]
    assert not missing_examples, missing_examples
    for path, parser in parsers:
        example_lines = parser.epilog.split("examples:", 1)[1]
        assert path in example_lines or path.split()[-1] in example_lines, path
    undocumented = [f"{path} {action.option_strings[0]}" for path, parser in parsers
                    for action in parser._actions
                    if action.option_strings and not action.help]
    assert not undocumented, undocumented


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as exit_:
        assert exit_.code == 0
    assert capsys.readouterr().out.strip() == f"cagnet {__version__}"
