"""One progress and time-left reporter for a sweep, whichever runner trains it: one bar
counts the samples every model has trained, and lines above it say when models start and
end, with the time elapsed and left."""

from __future__ import annotations

import math
import sys
import time

from tqdm.auto import tqdm

from vaerepro.core.config import TrainConfig
from vaerepro.core.numbers import format_duration


def time_left(
    expected: dict[TrainConfig, float] | None,
    before: dict[TrainConfig, int],
    trained: dict[TrainConfig, int],
    elapsed: float,
) -> str:
    """ ", about 12 min left": the seconds `expected` for the samples still to train (per
    model, from `before` to its budget), scaled by the wall time the trained ones took, all
    jobs together ("" without an estimate)."""
    if not expected:
        return ""
    share = {c: (trained[c] - before[c]) / max(c.samples - before[c], 1) for c in expected}
    done = sum(expected[c] * share[c] for c in expected)
    if not done:
        return ""
    left = sum(expected[c] * (1 - share[c]) for c in expected) * elapsed / done
    return f", about {format_duration(left)} left"


def say(line: str) -> None:
    """A line on stderr, above any progress bar, not inside it."""
    with tqdm.external_write_mode(file=sys.stderr):
        print(line, file=sys.stderr)


class SweepProgress:
    """Reports the training of `configs`, of which `done` samples were trained before (resumed
    models). `expected`: the estimated seconds per model, for the time left. With `enabled`
    False the bar is off but the start and end lines are still printed (to stderr)."""

    def __init__(
        self,
        configs: list[TrainConfig],
        done: dict[TrainConfig, int] | None = None,
        expected: dict[TrainConfig, float] | None = None,
        enabled: bool = True,
    ):
        self.before = {c: (done or {}).get(c, 0) for c in configs}
        self.trained = dict(self.before)
        self.expected = expected
        self.start = time.perf_counter()
        self.bar = tqdm(
            total=sum(c.samples for c in configs),
            initial=sum(self.trained.values()),
            unit="sample",
            unit_scale=True,
            desc="sweep",
            disable=not enabled,
            dynamic_ncols=True,
            smoothing=0,  # the rate over the whole run: the jobs runner's rows come in jumps
        )

    def say(self, line: str) -> None:
        say(line)

    def elapsed(self) -> str:
        return f"{format_duration(self.seconds())} elapsed"

    def left(self) -> str:
        return time_left(self.expected, self.before, self.trained, time.perf_counter() - self.start)

    def started(self, label: str, detail: str = "") -> None:
        self.say(f"{label}: started{detail}, {self.elapsed()}{self.left()}")

    def advance(self, cfg: TrainConfig, samples: int, row: dict | None = None) -> None:
        """Model `cfg` has trained `samples` in all; `row`: its newest CSV row, if any."""
        self.trained[cfg] = samples
        self.bar.update(sum(self.trained.values()) - self.bar.n)
        if row is not None:
            # train_speed is the CSV's train_samples_per_s (the bar's own rate counts
            # evaluations and checkpoints too), comparable with `nox -s bench`'s step
            # (MCEM has no ELBO; the marginal likelihood shows where it was estimated)
            shown = {"train": "train_elbo", "test": "test_elbo", "test_logp": "test_marginal"}
            self.bar.set_postfix(
                **{k: f"{row[c]:.2f}" for k, c in shown.items() if math.isfinite(row[c])},
                train_speed=f"{row['train_samples_per_s'] / 1e3:.1f}k/s",
            )

    def finished(self, cfg: TrainConfig, label: str) -> None:
        self.advance(cfg, cfg.samples)
        self.say(f"{label}: finished, {self.elapsed()}{self.left()}")

    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> SweepProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
