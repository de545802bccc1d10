"""What fitting a head costs: each registry row's measured `FitCost`, and estimates as people read them."""

from __future__ import annotations

import dataclasses

__all__ = ["FitCost", "format_seconds"]


@dataclasses.dataclass(frozen=True)
class FitCost:
    """What one fit of a head's defaults costs, measured by `bench/heads.py` on 2 cores.

    The estimate for `n` rows of `d` features is
    `seconds * (n / 1000) ** rows_power * (d / 1000)`: linear in the
    features, and as steep in the rows as the head's solver (about 1 for
    linear models and trees, 2 for kernel SVMs).

    Attributes:
        seconds: float, seconds at 1,000 rows x 1,000 features.
        rows_power: float, how fast the cost grows with the rows.
    """

    seconds: float
    rows_power: float = 1.0

    def estimate(self, n_rows: int, n_features: int) -> float:
        return self.seconds * (max(n_rows, 1) / 1000) ** self.rows_power * (max(n_features, 1) / 1000)


def format_seconds(seconds: float) -> str:
    """`"~4 s"`, `"~3 min"`, `"~1.5 h"`: an estimate as a person reads it."""
    if seconds < 90:
        return f"~{max(seconds, 1):.0f} s"
    if seconds < 5400:
        return f"~{seconds / 60:.0f} min"
    return f"~{seconds / 3600:.1f} h"
