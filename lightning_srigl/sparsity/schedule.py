"""When topology updates happen and how many weights they replace (RigL's cosine schedule)."""

from __future__ import annotations

import math

__all__ = ["cosine_drop_fraction", "exploration_end", "is_update_step"]


def cosine_drop_fraction(step: int, t_end: int, alpha: float) -> float:
    """Fraction of active weights to drop at ``step``: ``alpha / 2 * (1 + cos(pi * step / t_end))``.

    ``step`` counts optimizer steps already taken (the first update is at ``step = delta_t``),
    exactly as the reference evaluates it in float64.
    """
    if t_end <= 0:
        raise ValueError(f"t_end must be a positive number of optimizer steps, got {t_end}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha (initial drop fraction) must be in [0, 1], got {alpha}; the paper uses 0.3")
    return alpha / 2 * (1 + math.cos((step * math.pi) / t_end))


def is_update_step(step: int, delta_t: int, t_end: int) -> bool:
    """True when a topology update is due after optimizer step ``step``.

    Updates happen every ``delta_t`` optimizer steps, never at step 0 and only before ``t_end``.
    """
    if delta_t <= 0:
        raise ValueError(f"delta_t must be a positive number of optimizer steps, got {delta_t}")
    return step > 0 and step % delta_t == 0 and step < t_end


def exploration_end(total_steps: int, fraction: float) -> int:
    """Optimizer step at which topology updates stop: ``int(total_steps * fraction)``.

    The paper stops at 75% of training (``fraction=0.75``) and freezes the masks afterwards.
    """
    if total_steps < 0:
        raise ValueError(f"total_steps must be >= 0, got {total_steps}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(
            f"the exploration fraction must be in (0, 1], got {fraction}; 0.75 stops mask updates "
            "after 75% of the optimizer steps"
        )
    return int(total_steps * fraction)
