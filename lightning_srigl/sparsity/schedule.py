"""When topology updates happen and how many weights they replace (RigL's cosine schedule)."""

from __future__ import annotations

import math

__all__ = ["cosine_drop_fraction", "exploration_end", "in_gradient_window", "is_update_step", "update_due"]


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


def update_due(previous_step: int, step: int, delta_t: int, t_end: int) -> int | None:
    """The scheduled update step reached when the optimizer step count moved from ``previous_step`` to ``step``.

    One optimizer moves the count by 1 per batch; ``k`` optimizers (manual optimization) move it by
    ``k``, so the multiple of ``delta_t`` may lie inside the jump: the last one in
    ``(previous_step, step]`` is due. ``None`` when no update is.
    """
    last = step // delta_t * delta_t
    return last if last > previous_step and is_update_step(last, delta_t, t_end) else None


def in_gradient_window(round_start: int, steps_per_round: int, n: int, delta_t: int, t_end: int) -> bool:
    """Whether gradients of the round starting after step ``round_start`` feed the next update.

    A *round* is what happens between two batch ends that moved the step count: ``steps_per_round``
    optimizer steps (1 with one optimizer). The growth score of an update averages the gradients of
    the ``n`` rounds that end with it.
    """
    next_update = (round_start // delta_t + 1) * delta_t
    return next_update <= round_start + n * steps_per_round and is_update_step(next_update, delta_t, t_end)


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
