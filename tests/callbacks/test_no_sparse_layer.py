"""A fit where no selected layer can be sparse warns once (the shared base) and trains the dense model.

``NMSparsityCallback(n=2, m=4)`` on ``Linear(16, 30), Linear(30, 30), Linear(30, 4)``: the first and
last layers stay dense by default and 30 inputs do not divide by 4, so nothing is sparse; the first
optimizer step crashed with ``Tensor list must have at least one tensor``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import sys, warnings
    import torch
    from torch import nn
    from lightning_srigl.callbacks import NMSparsityCallback, SRigLCallback
    from lightning_srigl.masking import masked_weights
    from tests.callbacks.tiny import TinyNet, trainer

    class Net(TinyNet):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(16, 30), nn.ReLU(), nn.Linear(30, 30), nn.ReLU(), nn.Linear(30, 4))

    callback = NMSparsityCallback(n=2, m=4) if sys.argv[1] == "nm" else SRigLCallback(sparsity=0.0, delta_t=2)
    model = Net()
    before = [p.detach().clone() for p in model.parameters()]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(callbacks=[callback], max_steps=6, default_root_dir=sys.argv[2]).fit(model)
    warned = [str(w.message) for w in caught if "no selected layer is sparse" in str(w.message)]
    assert len(warned) == 1, [str(w.message) for w in caught]
    assert masked_weights(model) == []
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))  # it trained
    print("OK")
    """
)


def _run(method: str, folder: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", SCRIPT, method, str(folder)]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_nm_with_no_layer_it_can_sparsify_warns_and_trains_dense(tmp_path: Path) -> None:
    result = _run("nm", tmp_path)
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stderr[-3000:]


def test_srigl_with_every_layer_dense_warns_the_same_way_and_trains_dense(tmp_path: Path) -> None:
    result = _run("srigl", tmp_path)
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stderr[-3000:]
