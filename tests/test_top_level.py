"""``import lightning_srigl`` in a fresh process: its exported names and its modules resolve on first access, whatever
the process imported before (the test suite's own imports would hide a name that resolves only after another import).
"""

from __future__ import annotations

import subprocess
import sys

# docs/checkpoints.md, after `import lightning_srigl`: `lightning_srigl.masking.without_masks(state)`
SCRIPT = """
import sys, torch
import lightning_srigl

state = {"net.0.weight": torch.ones(2, 3), "net.0.weight_sparsity_mask": torch.ones(2, 3, dtype=torch.bool)}
assert list(lightning_srigl.masking.without_masks(state)) == ["net.0.weight"]
assert lightning_srigl.condensed.load_condensed is lightning_srigl.load_condensed
assert "lightning" not in sys.modules  # masking and condensed need torch only
assert not hasattr(lightning_srigl, "no_such_module") and not hasattr(lightning_srigl, "_moved_away")
print("resolved")
"""


def test_a_fresh_process_reaches_the_package_s_modules_through_its_top_level_name() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("resolved")
