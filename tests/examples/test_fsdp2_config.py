"""``example_projects/digits_mlp/fsdp2.yaml``, the FSDP2 config of docs/distributed.md, parses and trains."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_srigl.cli import main

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "example_projects" / "digits_mlp" / "fsdp2.yaml"

# One process (the 2-process runs are tests/callbacks/test_fsdp.py), a few steps; it runs in a child process
# because ModelParallelStrategy leaves its process group initialised.
TINY_FIT = f"""
from lightning_srigl.cli import run
from lightning_srigl.masking import is_sharded, local_part, masked_weights
cli = run(["fit", "--config", {str(CONFIG)!r}, "--trainer.devices", "1",
           "--trainer.strategy.init_args.data_parallel_size", "1", "--trainer.max_epochs", "null",
           "--trainer.max_steps", "3", "--trainer.limit_val_batches", "1", "--trainer.logger", "false",
           "--trainer.enable_progress_bar", "false",
           "--trainer.callbacks.delta_t", "2", "--trainer.callbacks.report", "false",
           "--model.init_args.hidden", "[32, 32]", "--trainer.default_root_dir", {{root!r}}])
masked = masked_weights(cli.model)
assert cli.trainer.global_step == 3 and len(masked) == 3
for m in masked:
    assert is_sharded(m.weight) and is_sharded(m.mask), m.fqn
    assert not local_part(m.weight.detach())[~local_part(m.mask)].any(), m.fqn
print("density", sum(int(local_part(m.mask).sum()) for m in masked) / sum(m.mask.numel() for m in masked))
"""


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """LightningCLI warns when both ``args`` and ``sys.argv`` carry arguments."""
    monkeypatch.setattr(sys, "argv", ["lightning-srigl"])


def test_the_fsdp2_config_parses(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIG), "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "class_path: lightning.pytorch.strategies.ModelParallelStrategy" in printed
    assert "tensor_parallel_size: 1" in printed and "ShardedDigitsMLP" in printed and "SRigLCallback" in printed


def test_the_fsdp2_config_trains_sparse_sharded_layers(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    script = TINY_FIT.format(root=str(tmp_path))
    command = [sys.executable, "-c", script]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    density = float(result.stdout.split("density")[-1])
    assert density == pytest.approx(0.1, abs=0.03)
