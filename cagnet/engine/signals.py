"""Graceful stops: SIGTERM and SIGINT ask the training loop to stop at the end of the current
iteration, write a checkpoint and exit, instead of killing the process mid-step.

Exit status: 128 + the signal number (SIGINT 130, SIGTERM 143), the shell's convention for "ended
by this signal". A stopped run is *not* finished, so it must not exit 0: a pipeline such as
`cagnet train ... && cagnet finetune ...` would otherwise go on with an unfinished model. The
message printed names the checkpoint and says to continue with `--resume`.

A second SIGINT while a stop is pending raises `KeyboardInterrupt` at once (no checkpoint: the
newest periodic one stays valid, since every checkpoint is written atomically).
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunStopped(Exception):
    """Training stopped on request after writing a checkpoint. Not a `CagnetError`: nothing is
    wrong; the CLI prints the message and exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class StopRequest:
    """Context manager: while active (in the main thread), SIGTERM and SIGINT only record that a
    stop was asked for; the loop polls `requested` after every iteration."""

    def __init__(self) -> None:
        self.signal_number: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self.signal_number is not None and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_number = number
        sys.stderr.write(f"\ncagnet: {signal.Signals(number).name} received: stopping after the "
                         "current iteration (Ctrl-C again stops at once, without a checkpoint)\n")

    @property
    def requested(self) -> bool:
        return self.signal_number is not None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signal_number).name if self.signal_number else ""

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signal_number or 0)


def shield_worker_from_stop_signals(worker_id: int) -> None:
    """DataLoader `worker_init_fn`. Ctrl-C reaches the whole foreground process group and
    schedulers send SIGTERM to every process of a job; a worker that died of it would make torch
    raise in the main process at an arbitrary point, possibly mid-update. So workers ignore
    SIGINT and the first SIGTERM: the main process stops at the end of the iteration and shuts
    them down. A second SIGTERM (torch's and multiprocessing's clean-up of a stuck worker) ends
    the worker as usual; a dead main process ends them through torch's parent watchdog."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _worker_first_sigterm)


def _worker_first_sigterm(number: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the next one terminates
