"""Tables of ``findings_sweep.py``: ``results.json`` (every run, machine-readable) and ``findings.md``.

``findings.md`` is a pure function of ``results.json`` (`markdown_report`), so a test can
check that the committed tables are the committed results'. Per ``(model, schedule)`` it has: test
accuracy (mean ± sd over seeds), the difference to RigL (mean ± sd of the per-seed differences),
the active weights against RigL's (the matched-budget check), the active neurons and fan-in at the
end, and the ablated neurons over training. Then the effect of the reference's sparse init and the
paper's own numbers (quoted, `PAPER`).
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from lightning_srigl.kernels.cpu.isa import cpu_model

# The paper's top-1 accuracies (%) from the reference code's notebooks/final_results.ipynb, as
# quoted in docs/reproducing.md: model -> (RigL, SRigL w/o ablation, SRigL w/ ablation) at 95 / 99 %.
PAPER = {
    "CIFAR-10 ResNet-18 (5 seeds)": {95: (94.62, 94.48, 94.70), 99: (92.88, 91.47, 92.79)},
    "CIFAR-10 WRN-22-2 (5 seeds)": {95: (92.1, 91.4, 91.8), 99: (84.9, 76.9, 82.7)},
    "ImageNet ResNet-50 (1 seed)": {95: (69.66, 68.83, 69.18), 99: (51.47, 48.74, 51.55)},
}
Record = dict[str, Any]


def run_metadata(
    *, command: str, cpu_seconds: Sequence[float], wall_seconds: float, workers: int, reused_runs: int,
    recipes: dict[str, str],
) -> dict[str, Any]:  # fmt: skip
    """The machine and the timing of a sweep.

    The estimate is for the default ``--workers 2`` on a quiet 2-core machine: the single-threaded
    runs keep their CPU time and fill both cores (``sum / 2``, or the longest run if that is more).
    CPU seconds include runs reused from ``--cache`` (as measured when they ran); wall seconds do not.
    """
    total = sum(cpu_seconds)
    return {
        "command": command,
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "workers": workers,
        "loadavg_at_end": [round(v, 2) for v in os.getloadavg()],
        "reused_runs": reused_runs,
        "training_cpu_seconds": round(total, 1),
        "wall_seconds": round(wall_seconds, 1),
        "estimated_quiet_wall_seconds": round(max(total / 2, max(cpu_seconds, default=0.0)), 1),
        "recipes": recipes,
    }


def _mean_sd(values: Sequence[float]) -> str:
    if not values:
        return "—"
    sd = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.2f}{sd}"


def _groups(runs: Sequence[Record], model: str, schedule: str) -> dict[tuple[str, float], list[Record]]:
    """``{(label, sparsity): runs}`` of one ``(model, schedule)``, in the runs' order."""
    groups: dict[tuple[str, float], list[Record]] = {}
    for run in runs:
        if (run["model"], run["schedule"]) == (model, schedule):
            groups.setdefault((run["label"], run["sparsity"]), []).append(run)
    return groups


def _sparse_labels(groups: dict[tuple[str, float], list[Record]]) -> list[str]:
    return list(dict.fromkeys(label for label, _ in groups if label != "dense"))


def _sparsities(groups: dict[tuple[str, float], list[Record]]) -> list[float]:
    return sorted({sparsity for label, sparsity in groups if label != "dense"})


def _ok(runs: Sequence[Record]) -> list[Record]:
    return [run for run in runs if run["accuracy"] is not None]


def paired_differences(runs: Sequence[Record], baseline: Sequence[Record]) -> list[float]:
    """Accuracy points of each run minus the ``baseline`` run of the same seed (seeds without both are left out)."""
    by_seed = {run["seed"]: run["accuracy"] for run in _ok(baseline)}
    return [100 * (run["accuracy"] - by_seed[run["seed"]]) for run in _ok(runs) if run["seed"] in by_seed]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: int = 0) -> list[str]:
    align = "|---" * (len(header) - right) + "|---:" * right + "|"
    return ["| " + " | ".join(header) + " |", align, *("| " + " | ".join(row) + " |" for row in rows)]


def _per_sparsity(
    groups: dict[tuple[str, float], list[Record]], labels: Sequence[str], cell: Callable[[list[Record]], str]
) -> list[list[str]]:
    rows = []
    for sparsity in _sparsities(groups):
        cells = [cell(groups[(label, sparsity)]) if (label, sparsity) in groups else "—" for label in labels]
        rows.append([f"{100 * sparsity:g} %", *cells])
    return rows


def accuracy_table(groups: dict[tuple[str, float], list[Record]]) -> list[str]:
    """Test accuracy (%), one row per sparsity, one column per method: ``mean ± sd`` over seeds."""
    labels = _sparse_labels(groups)
    rows = _per_sparsity(groups, labels, lambda runs: _mean_sd([100 * r["accuracy"] for r in _ok(runs)]))
    return _table(["sparsity", *labels], rows)


def gap_table(groups: dict[tuple[str, float], list[Record]]) -> list[str]:
    """Accuracy points minus RigL's (same seed), ``mean ± sd`` of the per-seed differences."""
    labels = [label for label in _sparse_labels(groups) if label != "RigL"]
    rows = []
    for sparsity in _sparsities(groups):
        rigl = groups.get(("RigL", sparsity), [])
        cells = [_mean_sd(paired_differences(groups.get((label, sparsity), []), rigl)) for label in labels]
        rows.append([f"{100 * sparsity:g} %", *cells])
    return _table(["sparsity", *labels], rows)


def weight_deviation(runs: Sequence[Record], rigl: Sequence[Record]) -> float:
    """Largest ``|active weights / RigL's - 1|`` over ``runs``, RigL's count taken from the same seed."""
    counts = {run["seed"]: sum(run["weights"].values()) for run in _ok(rigl)}
    return max((abs(sum(r["weights"].values()) / counts[r["seed"]] - 1) for r in _ok(runs) if r["seed"] in counts),
               default=0.0)  # fmt: skip


def weights_table(groups: dict[tuple[str, float], list[Record]]) -> list[str]:
    """Active weights of the sparse layers at the end (mean over seeds) and the largest deviation from RigL's."""
    labels = _sparse_labels(groups)
    rows = []
    for sparsity in _sparsities(groups):
        present = [groups.get((label, sparsity), []) for label in labels]
        counts = [f"{statistics.mean(sum(r['weights'].values()) for r in _ok(runs)):,.0f}" if _ok(runs) else "—"
                  for runs in present]  # fmt: skip
        worst = max(weight_deviation(runs, groups.get(("RigL", sparsity), [])) for runs in present)
        rows.append([f"{100 * sparsity:g} %", *counts, f"{100 * worst:.2f} %"])
    return _table(["sparsity", *labels, "largest deviation from RigL"], rows, right=len(labels) + 1)


def rigl_matching_note(groups: dict[tuple[str, float], list[Record]]) -> list[str]:
    """A line naming RigL's own ``sparsity`` argument where the sweep matched its count to SRigL's."""
    matched = {
        sparsity: runs[0]["rigl_sparsity"]
        for (label, sparsity), runs in groups.items()
        if label == "RigL" and runs and runs[0].get("rigl_sparsity") is not None
    }
    if not matched:
        return []
    given = ", ".join(f"{100 * s:g} %: `sparsity={r:.6f}`" for s, r in sorted(matched.items()))
    return [f"RigL is given the weight count SRigL's constant fan-in holds at the same level ({given}).", ""]


def _count(value: float) -> str:
    """A mean count to one decimal, without a trailing ``.0``."""
    return f"{round(value, 1):g}"


def _layer_cell(runs: Sequence[Record], layer: str) -> str:
    ok = _ok(runs)
    active = statistics.mean(r["neurons"][layer] for r in ok)
    mean = statistics.mean(r["fan_in"][layer][0] for r in ok)
    return f"{_count(active)}/{ok[0]['rows'][layer]} · {mean:.1f} ({max(r['fan_in'][layer][1] for r in ok)})"


def neurons_table(groups: dict[tuple[str, float], list[Record]]) -> list[str]:
    """Per setting and layer: active neurons at the end (mean over seeds) · mean fan-in of the active rows (max)."""
    settings = [(label, s) for (label, s), runs in groups.items() if _ok(runs)]
    if not settings:
        return []
    layers = list(_ok(groups[settings[0]])[0]["neurons"])
    rows = []
    for label, sparsity in sorted(settings, key=lambda key: (key[0] != "dense", key[1])):
        level = "dense" if label == "dense" else f"{100 * sparsity:g} %"
        rows.append([level, label, *(_layer_cell(groups[(label, sparsity)], layer) for layer in layers)])
    return _table(["sparsity", "method", *layers], rows, right=len(layers))


def trace_table(groups: dict[tuple[str, float], list[Record]]) -> list[str]:
    """Ablated neurons (rows with no weight) per sparse layer at each fifth of training, mean over seeds."""
    settings = [(label, s) for (label, s), runs in groups.items() if label != "dense" and _ok(runs)]
    if not settings:
        return []
    first = _ok(groups[settings[0]])[0]
    layers = list(first["weights"])
    points = [index for index, (fraction, _) in enumerate(first["trace"]) if round(5 * fraction, 6).is_integer()]
    rows = []
    for label, sparsity in sorted(settings, key=lambda key: key[1]):
        ok = _ok(groups[(label, sparsity)])
        cells = []
        for point in points:
            ablated = [statistics.mean(r["rows"][layer] - r["trace"][point][1][layer] for r in ok) for layer in layers]
            cells.append(" / ".join(_count(value) for value in ablated))
        rows.append([f"{100 * sparsity:g} %", label, *cells])
    header = [f"{100 * first['trace'][point][0]:g} %" for point in points]
    return [f"Layers: {' / '.join(layers)}.", "", *_table(["sparsity", "method", *header], rows, right=len(points))]


def quirk_table(runs: Sequence[Record]) -> list[str]:
    """Accuracy points of ``init_std_quirk=True`` minus the same method and seed with the default init."""
    rows = []
    for quirk in [r for r in runs if r["init_std_quirk"]]:
        key = (quirk["model"], quirk["schedule"], quirk["method"], quirk["gamma_sal"], quirk["sparsity"])
        if any(row[:4] == [key[0], key[1], f"{100 * key[4]:g} %", quirk["label"]] for row in rows):
            continue
        same = [r for r in runs if (r["model"], r["schedule"], r["method"], r["gamma_sal"], r["sparsity"]) == key]
        quirked = [r for r in same if r["init_std_quirk"]]
        default = [r for r in same if not r["init_std_quirk"]]
        rows.append([key[0], key[1], f"{100 * key[4]:g} %", quirk["label"],
                     _mean_sd([100 * r["accuracy"] for r in _ok(quirked)]),
                     _mean_sd(paired_differences(quirked, default))])  # fmt: skip
    return _table(["model", "schedule", "sparsity", "method", "accuracy (%)", "minus default init (points)"], rows)


def paper_table() -> list[str]:
    """The paper's numbers (quoted, not ours): accuracy and the gaps to RigL at 95 and 99 %."""
    rows = []
    for model, levels in PAPER.items():
        for sparsity, (rigl, without, with_) in levels.items():
            rows.append([model, f"{sparsity} %", f"{rigl:g}", f"{without:g}", f"{with_:g}",
                         f"{without - rigl:+.2f}", f"{with_ - rigl:+.2f}"])  # fmt: skip
    header = ["model (paper)", "sparsity", "RigL", "SRigL w/o ablation", "SRigL γ=0.3", "w/o − RigL", "γ=0.3 − RigL"]
    return _table(header, rows)


def budget_summary(runs: Sequence[Record]) -> dict[str, Any]:
    """The largest deviation of any run's active weights from RigL's (same model, schedule, sparsity, seed)."""
    worst, where = 0.0, ""
    for model, schedule in dict.fromkeys((r["model"], r["schedule"]) for r in runs):
        groups = _groups(runs, model, schedule)
        for (label, sparsity), group in groups.items():
            if label in ("dense", "RigL"):
                continue
            deviation = weight_deviation(group, groups.get(("RigL", sparsity), []))
            if deviation >= worst:
                worst, where = deviation, f"{model} {schedule} {label} at {100 * sparsity:g} %"
    return {"worst": worst, "worst_setting": where}


def markdown_report(data: dict[str, Any]) -> str:
    """``findings.md`` from the contents of ``results.json``: the command and machine, then the tables."""
    meta, runs = data["meta"], data["runs"]
    lines = [
        "# RigL against SRigL with and without ablation, at matched weight counts (MNIST-1D)",
        "",
        f"Command: `{meta['command']}`  ",
        f"CPU: {meta['cpu']}; torch {meta['torch']}; {meta['workers']} training processes (1 thread each); "
        f"load average at the end {meta['loadavg_at_end']}.  ",
        f"Training CPU time {meta['training_cpu_seconds']:.0f} s ({len(runs)} runs, {meta['reused_runs']} reused "
        f"from a cache), wall {meta['wall_seconds']:.0f} s; estimated wall time on a quiet 2-core machine "
        f"{meta['estimated_quiet_wall_seconds'] / 60:.1f} min.",
    ]
    for model, schedule in dict.fromkeys((r["model"], r["schedule"]) for r in runs):
        groups = _groups(runs, model, schedule)
        dense = groups.get(("dense", 0.0), [])
        lines += ["", f"## {model}, {schedule} schedule", "", f"Recipe: {meta['recipes'][f'{model}/{schedule}']}.", ""]
        dense_text = f"; dense: {_mean_sd([100 * r['accuracy'] for r in _ok(dense)])}" if dense else ""
        lines += [f"Test accuracy (%), mean ± sd over seeds{dense_text}.", "", *accuracy_table(groups), ""]
        lines += ["Difference to RigL (points): mean ± sd of the per-seed differences (seeds paired).", ""]
        lines += [*gap_table(groups), "", "Active weights of the sparse layers at the end (mean over seeds).", ""]
        lines += [*weights_table(groups), ""]
        lines += rigl_matching_note(groups)
        lines += ["Active neurons at the end (mean over seeds) · mean fan-in of the active rows (max over seeds).", ""]
        lines += [
            *neurons_table(groups),
            "",
            "Ablated neurons (rows with no weight) over training, mean over seeds.",
            "",
        ]
        lines += trace_table(groups)
    if any(r["init_std_quirk"] for r in runs):
        lines += ["", "## The reference's sparse init (std 2/fan_in, `init_std_quirk=True`)", ""]
        lines += ["Seeds paired with the same method's default-init runs (std sqrt(2/fan_in)).", ""]
        lines += quirk_table(runs)
    lines += ["", "## The paper's numbers (quoted from its notebooks, not our runs)", "", *paper_table()]
    return "\n".join(lines) + "\n"


def write_report(results: Sequence[Any], meta: dict[str, Any], out: Path, tolerance: float) -> dict[str, Any]:
    """``results.json`` and ``findings.md`` into ``out`` (created); returns `budget_summary`."""
    runs = [result.record() for result in results]
    budget = {**budget_summary(runs), "tolerance": tolerance}
    data = {"meta": {**meta, "weight_budget": budget}, "runs": runs}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    data = json.loads((out / "results.json").read_text())  # the tables are made from what the file holds
    (out / "findings.md").write_text(markdown_report(data))
    return budget
