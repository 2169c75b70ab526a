"""Accuracy against sparsity, with and without neuron ablation, on two real data sets (``docs/findings.md``).

The SRigL paper's Figure 2 claims: above 90 % sparsity RigL learns to ablate neurons; SRigL without
ablation falls behind there; SRigL with ablation (``gamma_sal``) restores RigL-level accuracy. This
sweep trains, with one recipe per data set:

* dense (once per seed), RigL, SRigL ``gamma_sal=0`` (no ablation) and SRigL ``gamma_sal=0.3`` (the
  paper's CNN value; more values with ``--gammas``), at sparsity 0.8, 0.9, 0.95, 0.98, 0.99, ERK;
* on scikit-learn's bundled digits (64 -> 1024 -> 1024 -> 10 MLP) and on MNIST-1D generated offline by
  the ``mnist1d`` package (40 -> 1024 -> 1024 -> 10 MLP); ``pip install -e '.[examples]'``.

Per run it records the test accuracy, and per layer the active neurons (rows of the mask with at
least one weight, so RigL's implicitly ablated neurons count too) and the fan-in. After all runs,
the first seed's model of every setting is accelerated for batch 1 with
:func:`lightning_srigl.accelerate` and timed against the dense model (interleaved, one process, no
training running). ``findings_report.py`` writes the CSVs, Markdown tables and plots.

Runs are single-threaded and spread over ``--workers`` processes (default 2). Usage, from the
repository root::

    PYTHONPATH=. python scripts/findings_sweep.py --output docs/assets/findings   # full sweep
    PYTHONPATH=. python scripts/findings_sweep.py --quick                         # tiny, < 2 minutes

The default output folder, ``runs/findings``, is ignored by git.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningDataModule, Trainer, seed_everything
from torch import Tensor, nn

from example_projects.common.classification import ClassificationModule
from example_projects.digits_mlp.datamodule import DigitsDataModule
from example_projects.digits_mlp.model import DigitsMLP
from example_projects.mnist1d_mlp.datamodule import MNIST1DDataModule
from example_projects.mnist1d_mlp.model import MNIST1DMLP
from lightning_srigl import RigLCallback, SRigLCallback, accelerate
from lightning_srigl.timing import hot_times
from lightning_srigl.masking import mask_of
from lightning_srigl.sparsity import fan_in

import findings_report  # scripts/ is on sys.path when this file runs as a script

SPARSITIES = (0.8, 0.9, 0.95, 0.98, 0.99)
GAMMAS = (0.0, 0.3)


@dataclass(frozen=True)
class DataSpec:
    """A data set and the MLP trained on it: ``model(hidden=...)``, ``data()`` with their defaults."""

    title: str
    model: type[ClassificationModule]
    data: type[LightningDataModule]
    hidden: tuple[int, ...]
    epochs: int
    delta_t: int


DATASETS = {
    # 1,078 training images, batch 64: 17 steps/epoch, 850 steps, topology updates every 25 until step 637.
    "digits": DataSpec("scikit-learn digits", DigitsMLP, DigitsDataModule, (1024, 1024), 50, 25),
    # 3,600 training signals, batch 128: 29 steps/epoch, 1,160 steps, updates every 25 until step 870.
    "mnist1d": DataSpec("MNIST-1D", MNIST1DMLP, MNIST1DDataModule, (1024, 1024), 40, 25),
}


@dataclass(frozen=True)
class Setting:
    """One training run: ``method`` is ``"dense"``, ``"rigl"`` or ``"srigl"`` (with ``gamma_sal``)."""

    dataset: str
    method: str
    sparsity: float
    seed: int
    gamma_sal: float | None = None

    @property
    def label(self) -> str:
        """The method as the tables and plots name it."""
        if self.method == "srigl":
            return f"SRigL γ={self.gamma_sal:g}"
        return {"dense": "dense", "rigl": "RigL"}[self.method]


@dataclass(frozen=True)
class Plan:
    """What the sweep trains: the settings and the per-data-set recipe (possibly shrunk by ``--quick``)."""

    settings: list[Setting]
    specs: dict[str, DataSpec]
    min_run_time: float


@dataclass
class RunResult:
    """A finished run: test accuracy, per-layer topology and CPU seconds; ``net`` for the first seed."""

    setting: Setting
    accuracy: float | None
    error: str | None
    layers: list[findings_report.LayerTopology]
    cpu_seconds: float
    net: nn.Module | None = field(default=None, repr=False)
    cached: bool = False


def make_plan(datasets: list[str], sparsities: list[float], gammas: list[float], seeds: int, quick: bool) -> Plan:
    """Every setting of the sweep; ``quick`` shrinks widths, epochs and timing to a structure check."""
    specs = {name: DATASETS[name] for name in datasets}
    if quick:
        specs = {name: replace(spec, hidden=(128, 128), epochs=2, delta_t=5) for name, spec in specs.items()}
    settings = []
    for dataset in datasets:
        settings += [Setting(dataset, "dense", 0.0, seed) for seed in range(seeds)]
        for sparsity in sparsities:
            for seed in range(seeds):
                settings.append(Setting(dataset, "rigl", sparsity, seed))
                settings += [Setting(dataset, "srigl", sparsity, seed, gamma) for gamma in gammas]
    return Plan(settings, specs, min_run_time=0.05 if quick else 0.5)


def sparsity_callbacks(setting: Setting, delta_t: int) -> list[Callback]:
    """The method's callback with the paper's defaults (ERK, alpha 0.3, updates stop at 75 %)."""
    if setting.method == "dense":
        return []
    common = dict(sparsity=setting.sparsity, delta_t=delta_t, seed=setting.seed, report=False)
    if setting.method == "rigl":
        return [RigLCallback(**common)]
    return [SRigLCallback(gamma_sal=setting.gamma_sal, **common)]


def layer_topology(net: nn.Module) -> list[findings_report.LayerTopology]:
    """Per ``nn.Linear`` (in order, named ``fc1``...): active neurons (mask rows with a weight) and fan-in."""
    rows = []
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    for index, linear in enumerate(linears, start=1):
        mask = mask_of(linear)
        counts = fan_in(mask if mask is not None else torch.ones_like(linear.weight, dtype=torch.bool))
        active = counts[counts > 0]
        rows.append(
            findings_report.LayerTopology(
                layer=f"fc{index}",
                out_features=linear.out_features,
                in_features=linear.in_features,
                active=int(active.numel()),
                fan_in_mean=float(active.float().mean()) if active.numel() else 0.0,
                fan_in_max=int(active.max()) if active.numel() else 0,
            )
        )
    return rows


def test_split(data: LightningDataModule) -> tuple[Tensor, Tensor]:
    """The test inputs ``(N, features)`` and labels ``(N,)`` of an example data module."""
    data.setup("test")
    return data.splits["test"].tensors  # type: ignore[attr-defined]


def train_one(setting: Setting, spec: DataSpec, keep_net: bool) -> RunResult:
    """Fit one setting on one CPU thread; accuracy is the final model's on the test split."""
    torch.set_num_threads(1)
    seed_everything(setting.seed, verbose=False)
    model, data = spec.model(hidden=spec.hidden), spec.data()
    trainer = Trainer(
        max_epochs=spec.epochs, accelerator="cpu", devices=1, logger=False, limit_val_batches=0,
        callbacks=sparsity_callbacks(setting, spec.delta_t), enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    start = time.process_time()
    try:
        trainer.fit(model, data)
    except ValueError as error:  # e.g. a layer whose budget cannot give every neuron one weight
        return RunResult(setting, None, str(error).splitlines()[0], [], time.process_time() - start)
    x, y = test_split(data)
    net = model.net.eval()
    with torch.inference_mode():
        accuracy = float((net(x).argmax(dim=-1) == y).float().mean())
    cpu = time.process_time() - start
    return RunResult(setting, accuracy, None, layer_topology(net), cpu, net if keep_net else None)


def _quiet_worker() -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)


def cache_path(cache: Path, setting: Setting, spec: DataSpec) -> Path:
    """Where ``--cache`` keeps one finished run: named by the setting and the recipe."""
    gamma = "" if setting.gamma_sal is None else f"_g{setting.gamma_sal:g}"
    recipe = f"h{'x'.join(map(str, spec.hidden))}_e{spec.epochs}_dt{spec.delta_t}"
    return cache / f"{setting.dataset}_{setting.method}{gamma}_s{setting.sparsity:g}_seed{setting.seed}_{recipe}.pt"


def train_cached(setting: Setting, spec: DataSpec, keep_net: bool, cache: Path | None) -> RunResult:
    """:func:`train_one`, reusing (and filling) the ``cache`` folder when one is given."""
    path = cache_path(cache, setting, spec) if cache is not None else None
    if path is not None and path.is_file():
        saved = torch.load(path, weights_only=False)  # written by this script, below
        if saved["net"] is not None or not keep_net:
            layers = [findings_report.LayerTopology(**layer) for layer in saved["layers"]]
            return RunResult(setting, saved["accuracy"], saved["error"], layers, saved["cpu_seconds"], saved["net"], True)
    result = train_one(setting, spec, keep_net)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"accuracy": result.accuracy, "error": result.error, "cpu_seconds": result.cpu_seconds,
                   "layers": [asdict(layer) for layer in result.layers], "net": result.net}  # fmt: skip
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(payload, partial)
        partial.replace(path)  # atomic: a concurrent sweep never reads a half-written file
    return result


def run_all(plan: Plan, workers: int, cache: Path | None) -> list[RunResult]:
    """Train every setting of ``plan`` over ``workers`` processes (in this process when 1), in order."""
    first_seed = min(s.seed for s in plan.settings)
    jobs = [(s, plan.specs[s.dataset], s.seed == first_seed, cache) for s in plan.settings]
    results: list[RunResult] = []
    if workers <= 1:
        _quiet_worker()
        for job in jobs:
            results.append(train_cached(*job))
            _print_progress(results[-1], len(results), len(jobs))
        return results
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_quiet_worker) as pool:
        for future in [pool.submit(train_cached, *job) for job in jobs]:
            results.append(future.result())
            _print_progress(results[-1], len(results), len(jobs))
    return results


def _print_progress(result: RunResult, done: int, total: int) -> None:
    s = result.setting
    outcome = f"acc {100 * result.accuracy:.2f}%" if result.accuracy is not None else f"FAILED: {result.error}"
    print(f"[{done}/{total}] {s.dataset} {s.label} s={s.sparsity:g} seed={s.seed}: {outcome} "
          f"({result.cpu_seconds:.1f} s CPU{', cached' if result.cached else ''})", flush=True)  # fmt: skip


def measure_latencies(results: list[RunResult], plan: Plan, threads: int) -> list[findings_report.Latency]:
    """Batch-1 latency of every first-seed model, accelerated, against its data set's dense model."""
    latencies = []
    for dataset, spec in plan.specs.items():
        runs = [r for r in results if r.setting.dataset == dataset and r.net is not None]
        dense = next((r.net for r in runs if r.setting.method == "dense"), None)
        if dense is None:
            continue
        x, _ = test_split(spec.data())
        for run in runs:
            latencies.append(_latency(run, dense, x, threads, plan.min_run_time))
    return latencies


def _latency(run: RunResult, dense: nn.Module, x: Tensor, threads: int, min_run_time: float) -> findings_report.Latency:
    assert run.net is not None
    net, x1 = run.net, x[:1]
    fast, kernels = net, "dense"
    if run.setting.method != "dense":
        fast = copy.deepcopy(net).eval()
        with torch.no_grad():
            report = accelerate(fast, x1, verbose=False)
        kernels = "/".join(row.chosen for row in report.rows)
    with torch.inference_mode():
        exact = bool(torch.equal(fast(x).argmax(dim=-1), net(x).argmax(dim=-1)))
        times = hot_times(
            {"dense": lambda: dense(x1), "model": lambda: fast(x1)},
            threads=threads, min_run_time=min_run_time, device=torch.device("cpu"),
        )  # fmt: skip
    return findings_report.Latency(
        setting=run.setting, dense_us=times["dense"].median * 1e6, model_us=times["model"].median * 1e6,
        kernels=kernels, same_predictions=exact,
    )  # fmt: skip


def recipe_text(spec: DataSpec) -> str:
    """One line describing a data set's model and schedule, for the report header."""
    widths = "-".join(map(str, spec.hidden))
    return (
        f"{spec.title}, MLP with hidden widths {widths}, {spec.epochs} epochs, SGD Nesterov lr 0.05 cosine, "
        f"weight decay 5e-4; ERK, delta_t {spec.delta_t}, alpha 0.3, topology frozen after 75 % of the steps"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny widths, 2 epochs, 2 seeds, 2 sparsities")
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=["digits", "mnist1d"])
    parser.add_argument("--sparsities", type=float, nargs="+", default=None, help=f"default {SPARSITIES}")
    parser.add_argument("--gammas", type=float, nargs="+", default=list(GAMMAS), help="SRigL gamma_sal values")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 3; --quick: 2)")
    parser.add_argument("--workers", type=int, default=2, help="training processes, one thread each")
    parser.add_argument("--latency-threads", type=int, default=1, help="intra-op threads for the latency timing")
    parser.add_argument("--output", type=Path, default=Path("runs/findings"))
    parser.add_argument("--cache", type=Path, default=None,
                        help="keep every finished run here and reuse it (resume an interrupted sweep; "
                        "delete the folder after changing the code)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.sparsities is None:
        args.sparsities = [0.9, 0.95] if args.quick else list(SPARSITIES)
    if args.seeds is None:
        args.seeds = 2 if args.quick else 3
    bad = [s for s in args.sparsities if not 0.0 < s < 1.0]
    if bad or args.seeds < 1 or args.workers < 1 or any(g < 0 for g in args.gammas):
        parser.error("sparsities must be in (0, 1), gammas >= 0, --seeds and --workers >= 1")
    return args


def main(argv: list[str] | None = None) -> Path:
    """Run the sweep and write its report; returns the output folder."""
    args = parse_args(argv)
    plan = make_plan(args.datasets, args.sparsities, args.gammas, args.seeds, args.quick)
    wall = time.perf_counter()
    results = run_all(plan, args.workers, args.cache)
    training_wall = time.perf_counter() - wall
    torch.set_num_threads(args.latency_threads)  # accelerate() chooses kernels at the timed thread count
    latency_cpu = time.process_time()
    latencies = measure_latencies(results, plan, args.latency_threads)
    latency_cpu = time.process_time() - latency_cpu
    command = "PYTHONPATH=. python scripts/findings_sweep.py " + " ".join(argv if argv is not None else sys.argv[1:])
    meta = findings_report.run_metadata(
        command=command.strip(), results_cpu_seconds=sum(r.cpu_seconds for r in results),
        training_wall_seconds=training_wall, latency_wall_seconds=time.perf_counter() - wall - training_wall,
        latency_cpu_seconds=latency_cpu,
        workers=args.workers, latency_threads=args.latency_threads, reused_runs=sum(r.cached for r in results),
        recipes={name: recipe_text(spec) for name, spec in plan.specs.items()},
    )  # fmt: skip
    findings_report.write_report(results, latencies, meta, args.output)
    print(f"report written to {args.output}/ (findings.md, findings.csv, runs.csv, *.png, meta.json)")
    print(f"CPU time of the training runs: {meta['training_cpu_seconds']:.0f} s; "
          f"estimated quiet wall time on 2 cores: {meta['estimated_quiet_wall_seconds'] / 60:.1f} min")  # fmt: skip
    return args.output


if __name__ == "__main__":
    main()
