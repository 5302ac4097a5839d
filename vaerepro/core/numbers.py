"""Numbers as people write them: sample counts (1e6) and durations (3 h 05 min)."""

from __future__ import annotations

import argparse
import math


def parse_count(text: str) -> int:
    """A positive whole number, written plainly or as 1e6 (an argparse type: its error names
    the text)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    if value != int(value):
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}")
    return int(value)


def format_count(n: float) -> str:
    """A sample count as people write it: 300000 -> 3e5, 1.5e6 -> 1.5e6, 2500 -> 2.5e3."""
    mantissa, exponent = f"{n:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def format_duration(seconds: float) -> str:
    """3 h 05 min, 12 min, 40 s."""
    seconds = max(0, round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds} s"
