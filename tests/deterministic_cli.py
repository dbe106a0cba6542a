"""`cagnet` command lines with the per-sample random draws switched off, for
tests/test_distributed.py (in-process, or as a script under torchrun).

The latent noise of the contextual module (`torch.randn_like`) is made zero (z = its mean) and
the test's recipe sets every dropout rate to 0. Those draws come from per-rank seeds in a
multi-process run, so only without them can a multi-process run be compared with one process
number for number. Everything else (data order and augmentation, step-2 labels and latents,
losses, the gradient sums, evaluation) is exactly what a real run does.

Usage: python deterministic_cli.py ARGS... [--then ARGS...]  (each ARGS is one `cagnet` call)
"""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator, Sequence

import torch

from cagnet.cli import main


@contextlib.contextmanager
def no_latent_noise() -> Iterator[None]:
    """Within the block, `torch.randn_like(x)` returns zeros (the latent z equals its mean)."""
    original = torch.randn_like
    torch.randn_like = lambda tensor, *args, **kwargs: torch.zeros_like(tensor)
    try:
        yield
    finally:
        torch.randn_like = original


def run(argv: Sequence[str]) -> int:
    """Run each `--then`-separated `cagnet` command in turn; the first failure's status."""
    commands: list[list[str]] = [[]]
    for argument in argv:
        if argument == "--then":
            commands.append([])
        else:
            commands[-1].append(argument)
    with no_latent_noise():
        for command in commands:
            status = main(command)
            if status:
                return status
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
