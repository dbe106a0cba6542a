"""The loop's own state, saved in every checkpoint so that a resumed run continues exactly."""

import math
import time
from dataclasses import dataclass, field


@dataclass
class IntervalStats:
    """Sums of the finite loss terms since the last log record."""

    totals: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    iterations: int = 0
    seconds: float = 0.0
    _tick: float = field(default_factory=time.perf_counter, repr=False)

    def add(self, terms: dict[str, float]) -> None:
        for name, value in terms.items():
            if math.isfinite(value):
                self.totals[name] = self.totals.get(name, 0.0) + value
                self.counts[name] = self.counts.get(name, 0) + 1
        self.iterations += 1

    def elapsed(self) -> float:
        """Wall time of the interval so far (before and after a resume)."""
        return self.seconds + time.perf_counter() - self._tick

    def record(self, rates: dict[str, float]) -> dict[str, float]:
        """The interval's mean terms, learning rates and speed; then start a new interval."""
        record = {name: self.totals[name] / self.counts[name] for name in self.totals}
        record.update({f"lr_{name}": rate for name, rate in rates.items()})
        record["seconds_per_iteration"] = self.elapsed() / max(1, self.iterations)
        self.load_state_dict({})
        return record

    def state_dict(self) -> dict:
        return {"totals": dict(self.totals), "counts": dict(self.counts),
                "iterations": self.iterations, "seconds": self.elapsed()}

    def load_state_dict(self, state: dict) -> None:
        self.totals = {str(k): float(v) for k, v in state.get("totals", {}).items()}
        self.counts = {str(k): int(v) for k, v in state.get("counts", {}).items()}
        self.iterations = int(state.get("iterations", 0))
        self.seconds = float(state.get("seconds", 0.0))
        self._tick = time.perf_counter()


@dataclass
class RunState:
    """Everything of the loop that a checkpoint must carry besides model and optimisers."""

    iteration: int = 0
    best_score: float = -1.0
    skipped_samples: list[str] = field(default_factory=list)
    interval: IntervalStats = field(default_factory=IntervalStats)

    def extra(self, nonfinite: dict, log_bytes: int, scores: dict | None = None) -> dict:
        """The checkpoint's `extra` dict (plain types only: loaded with weights_only=True)."""
        return {"best_score": self.best_score, "skipped_samples": list(self.skipped_samples),
                "interval": self.interval.state_dict(), "nonfinite": dict(nonfinite),
                "log_bytes": int(log_bytes), "scores": scores or {}}

    def load(self, iteration: int, extra: dict) -> None:
        self.iteration = int(iteration)
        self.best_score = float(extra.get("best_score", -1.0))
        self.skipped_samples = [str(name) for name in extra.get("skipped_samples", [])]
        self.interval.load_state_dict(extra.get("interval", {}))
