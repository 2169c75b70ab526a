"""The ``lightning-srigl`` command: short callback names, config round-trip, benchmark and convert."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from example_projects.digits_mlp.model import DigitsMLP
from lightning_srigl.cli import main, run
from lightning_srigl.sparsity.nm import is_nm

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "example_projects" / "digits_mlp" / "smoke.yaml"
MODEL = ["--model", "example_projects.digits_mlp.model.DigitsMLP", "--model.hidden", "[16, 16]"]
DATA = ["--data", "example_projects.digits_mlp.datamodule.DigitsDataModule"]
QUIET = [
    "--trainer.logger",
    "false",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
]


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """LightningCLI warns when both ``args`` and ``sys.argv`` carry arguments."""
    monkeypatch.setattr(sys, "argv", ["lightning-srigl"])


def _printed_config(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main(args + ["--print_config"])
    assert exit_info.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("short", ["SRigLCallback", "RigLCallback", "NMSparsityCallback", "AccelerateCallback"])
def test_callbacks_resolve_by_short_name(short: str, capsys: pytest.CaptureFixture[str]) -> None:
    config = _printed_config(["fit", *MODEL, *DATA, f"--trainer.callbacks+={short}"], capsys)
    (callback,) = config["trainer"]["callbacks"]
    module, name = callback["class_path"].rsplit(".", 1)
    assert name == short and module.split(".")[0] == "lightning_srigl"


def test_short_name_arguments_reach_the_callback(capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "fit",
        *MODEL,
        *DATA,
        "--trainer.callbacks+=SRigLCallback",
        "--trainer.callbacks.sparsity=0.8",
        "--trainer.callbacks.gamma_sal=0",
    ]
    (callback,) = _printed_config(args, capsys)["trainer"]["callbacks"]
    assert callback["init_args"]["sparsity"] == 0.8 and callback["init_args"]["gamma_sal"] == 0.0


def test_fit_with_short_name_trains_sparse(tmp_path: Path) -> None:
    args = [
        "fit",
        *MODEL,
        *DATA,
        *QUIET,
        "--trainer.max_steps",
        "3",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.enable_checkpointing",
        "false",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.callbacks+=RigLCallback",
        "--trainer.callbacks.sparsity=0.5",
        "--trainer.callbacks.delta_t=1",
        "--trainer.callbacks.report=false",
    ]
    cli = run(args)
    masks = [b for n, b in cli.model.named_buffers() if n.endswith("_mask")]
    assert cli.trainer.global_step == 3 and len(masks) == 3
    assert sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks) == pytest.approx(0.5, abs=0.01)


def test_print_config_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(SMOKE), "--trainer.callbacks+=AccelerateCallback", "--print_config"])
    first = capsys.readouterr().out
    saved = tmp_path / "config.yaml"
    saved.write_text(first)
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(saved), "--print_config"])
    assert capsys.readouterr().out == first
    callbacks = yaml.safe_load(first)["trainer"]["callbacks"]
    assert [c["class_path"].rsplit(".", 1)[1] for c in callbacks] == ["SRigLCallback", "AccelerateCallback"]


def test_benchmark_subcommand_writes_results(tmp_path: Path) -> None:
    config = tmp_path / "bench.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "shapes": [[32, 16]],
                "sparsities": [0.75],
                "batch_sizes": [2],
                "threads": [1],
                "methods": ["dense_fp32", "csr_fp32"],
                "nm_methods": [],
                "cold_sparsities": [],
                "min_run_time": 0.01,
                "output_dir": str(tmp_path / "out"),
                "name": "tiny",
            }
        )
    )
    module = run(["benchmark", "--config", str(config), "--seed", "1"])
    assert {row["method"] for row in module.results} == {"dense_fp32", "csr_fp32"}
    assert module.outputs and all(Path(p).is_file() for p in module.outputs.values())


def test_convert_subcommand_makes_a_2_4_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    ckpt = tmp_path / "dense.ckpt"
    torch.save({"state_dict": DigitsMLP(hidden=(16, 16)).state_dict()}, ckpt)
    out = tmp_path / "converted.ckpt"
    args = [
        "convert",
        *MODEL,
        *DATA,
        "--ckpt_path",
        str(ckpt),
        "--output",
        str(out),
        "--calibration_batches",
        "2",
        "--convert.structure",
        "n:m",
        "--convert.keep_first_dense",
        "false",
        "--convert.reconstruction_steps",
        "3",
    ]
    report = run(args)
    assert [layer.name for layer in report.layers] == ["net.0.0.weight", "net.0.2.weight"]
    assert report.accuracy_before is not None and report.accuracy_after is not None
    state = torch.load(out, weights_only=False)["state_dict"]
    assert is_nm(state["net.0.2.weight_sparsity_mask"], 2, 4)
    assert not state["net.0.2.weight"][~state["net.0.2.weight_sparsity_mask"]].any()
    assert "accuracy:" in capsys.readouterr().out


def test_convert_rejects_a_checkpoint_of_another_model(tmp_path: Path) -> None:
    ckpt = tmp_path / "other.ckpt"
    torch.save({"state_dict": DigitsMLP(hidden=(8,)).state_dict()}, ckpt)
    with pytest.raises(ValueError, match="same model class_path"):
        main(["convert", *MODEL, "--ckpt_path", str(ckpt), "--output", str(tmp_path / "x.ckpt")])


def test_module_entry_point_lists_the_subcommands() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lightning_srigl", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    for name in ("fit", "validate", "test", "predict", "benchmark", "convert", "SRigLCallback"):
        assert name in result.stdout


def test_console_entry_exits_zero_after_a_benchmark(tmp_path: Path) -> None:
    """Console scripts call ``sys.exit(main())``: ``main`` must return None, not the module it ran."""
    config = ROOT / "configs" / "benchmark_smoke.yaml"
    entry = "import sys; from lightning_srigl.cli import main; sys.exit(main())"
    result = subprocess.run(
        [sys.executable, "-c", entry, "benchmark", "--config", str(config), "--output_dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "benchmark_smoke.csv").exists()
    output = result.stdout + result.stderr
    for banner in ("GPU available", "TPU available", "Tip:", "Sparse CSR tensor support is in beta"):
        assert banner not in output, banner
    assert "Timing cases" in result.stdout and "━" in result.stdout, "no progress bar over the cases"
    assert "µs per call" in result.stdout and "ratios, > 1 = faster" in result.stdout


DIGITS_CONFIG = ROOT / "example_projects" / "digits_mlp" / "config.yaml"


def test_help_answers_without_importing_torch_or_lightning() -> None:
    """``lightning-srigl --help`` lists every subcommand and loads neither torch nor Lightning (lazy imports)."""
    code = (
        "import sys\nfrom lightning_srigl.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit as exit_:\n"
        "    assert exit_.code == 0, exit_.code\nprint(sorted(m for m in ('torch', 'lightning') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("[]"), result.stdout
    for name in ("fit", "validate", "test", "predict", "benchmark", "convert"):
        assert f"\n    {name} " in result.stdout


def test_a_second_sparsity_callback_is_a_one_line_error() -> None:
    console = Path(sys.executable).parent / "lightning-srigl"
    args = [str(console), "fit", "--config", str(DIGITS_CONFIG), "--trainer.callbacks+=RigLCallback"]
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    (error,) = [line for line in result.stderr.splitlines() if "error:" in line]
    assert error.startswith("lightning-srigl: error: trainer.callbacks has 2 sparsity callbacks")
    assert "SRigLCallback (#1), RigLCallback (#2)" in error and "--trainer.callbacks.sparsity=" in error


def test_overrides_reach_the_config_s_sparsity_callback(capsys: pytest.CaptureFixture[str]) -> None:
    """The example configs list their sparsity callback last, where ``--trainer.callbacks.<arg>`` lands."""
    callbacks = _printed_config(["fit", "--config", str(DIGITS_CONFIG), "--trainer.callbacks.sparsity=0.95"], capsys)[
        "trainer"
    ]["callbacks"]
    assert [c["class_path"].rsplit(".", 1)[1] for c in callbacks] == ["ModelCheckpoint", "SRigLCallback"]
    assert callbacks[1]["init_args"]["sparsity"] == 0.95 and callbacks[1]["init_args"]["gamma_sal"] == 0.3
    assert callbacks[0]["init_args"]["monitor"] == "val/acc"
    swapped = _printed_config(
        ["fit", "--config", str(DIGITS_CONFIG), "--trainer.callbacks.class_path=RigLCallback"], capsys
    )["trainer"]["callbacks"][1]
    assert swapped["class_path"].endswith("RigLCallback") and swapped["init_args"]["sparsity"] == 0.9


def _one_error_line(args: list[str]) -> str:
    """Run ``python -m lightning_srigl <args>``: it must exit 2 with one ``error:`` line and no traceback."""
    command = [sys.executable, "-m", "lightning_srigl", *args]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    (error,) = [line for line in result.stderr.splitlines() if "error:" in line]
    return error


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch_sizes", "[0]"], "each of batch_sizes must be an integer >= 1, got 0"),  # was a matplotlib traceback
        (["--sparsities", "[1.5]"], "each of sparsities must be a number in [0, 1)"),  # ran "at sparsity 1.50"
        (["--threads", "[]"], "threads is empty"),
    ],
)
def test_bad_benchmark_arguments_are_one_error_line_before_anything_runs(flags: list[str], message: str) -> None:
    error = _one_error_line(["benchmark", *flags, "--output_dir", "null"])
    assert error.startswith("lightning-srigl: error: ") and message in error


def test_a_bad_callback_argument_is_one_error_line_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(SMOKE), "--trainer.callbacks.sparsity=1.5"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("lightning-srigl: error: trainer.callbacks #0 (SRigLCallback): sparsity must be a number")


def test_an_unknown_subcommand_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fitt"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "invalid subcommand 'fitt' (choose from fit, validate, test, predict, benchmark, convert)" in error
