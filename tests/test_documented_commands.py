"""Every shell command printed in the README, the examples' READMEs and ``docs/cli.md`` runs as printed.

The commands are read from the ```` ```bash ```` blocks of those files, so the documents and this test
cannot drift apart. Each block runs in order, as subprocesses, in a copy of the working tree (what a
fresh clone holds): ``lightning-srigl`` and ``python`` are this environment's, and ``PYTHONPATH`` is
unset, so ``class_path`` modules must import from the current directory as the docs promise.

Where a document says so, a long run gets its documented smoke variant: the example's ``smoke.yaml``
(or ``configs/benchmark_smoke.yaml``) added right after the printed ``--config``, ``--quick`` added to
the findings sweep, and ``DEMO_ARGS="--seeds 1 --epochs 1 --min-run-time 0.05"`` for ``make demo``.
Data placeholders (``/path/to/...``) point at generated data in the dataset's real format. Every file a
command writes or changes, except the file a command redirects its output into, must be one the
repository's ``.gitignore`` ignores (``git status`` stays clean).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.examples.conftest import write_cifar_batches, write_image_folder

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [
    "README.md",
    *sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("example_projects/*/README.md")),
    "docs/cli.md",
]
NOT_RUN = {  # command prefix -> why the suite does not run it
    "make test": "it is the command that runs this suite",
    "make docs": "tests/test_docs.py runs the same `mkdocs build --strict`",
    "pip install": "it installs into the environment; `make` performs the installation this suite runs in",
}
SMOKE_CONFIGS = {  # printed --config -> the smoke config the docs say is added after it
    "example_projects/cifar10_resnet18/config.yaml": "example_projects/cifar10_resnet18/smoke.yaml",
    "example_projects/imagenet_resnet50/config.yaml": "example_projects/imagenet_resnet50/smoke.yaml",
    "example_projects/imagenet_vit_b16/config.yaml": "example_projects/imagenet_vit_b16/smoke.yaml",
    "configs/benchmark_cpu.yaml": "configs/benchmark_smoke.yaml",
    "example_projects/mnist1d_mlp/config.yaml": "example_projects/mnist1d_mlp/smoke.yaml",
    "example_projects/mnist1d_cnn/config.yaml": "example_projects/mnist1d_cnn/smoke.yaml",
}
SMOKE_FLAGS = {
    "PYTHONPATH=. python scripts/findings_sweep.py": "--quick"
}  # command prefix -> flag the docs say is added
SMOKE_ENV = {
    "make demo": {"DEMO_ARGS": "--seeds 1 --epochs 1 --min-run-time 0.05"},
    "make benchmark": {"BENCH_ARGS": "--config configs/benchmark_smoke.yaml"},  # the Makefile's quick check
}
IN_TEXT = [("top-README-make-benchmark", ["make benchmark"])]  # named in the README's text, not in a block
TABLE_TOP = "┏"


def bash_blocks(text: str) -> list[list[str]]:
    """The commands of each ```` ```bash ```` block: continuation lines joined, comments dropped."""
    blocks = []
    for body in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        joined = re.sub(r"\s*\\\n\s*", " ", body)
        commands = [re.sub(r"\s+#.*$", "", line).strip() for line in joined.splitlines()]
        blocks.append([c for c in commands if c and not c.startswith("#")])
    return blocks


def documented_blocks() -> list[tuple[str, list[str]]]:
    """``(id, commands)`` per block; a command printed again later is run once, where it first appears."""
    seen: set[str] = set()
    found = []
    for document in DOCUMENTS:
        for i, block in enumerate(bash_blocks((ROOT / document).read_text())):
            commands = [c for c in block if c not in seen and not c.startswith(tuple(NOT_RUN))]
            seen.update(block)
            if commands:
                found.append((f"{Path(document).parent.name or 'top'}-{Path(document).stem}-{i}", commands))
    return found + IN_TEXT


def smoke_variant(command: str, data: dict[str, Path]) -> tuple[str, dict[str, str]]:
    """The command with its documented smoke config inserted and placeholders replaced; extra env."""
    for config, smoke in SMOKE_CONFIGS.items():
        command = command.replace(f"--config {config}", f"--config {config} --config {smoke}", 1)
    for prefix, flag in SMOKE_FLAGS.items():
        command = f"{command} {flag}" if command.startswith(prefix) else command
    for placeholder, path in data.items():
        command = command.replace(placeholder, str(path))
    env = next((extra for prefix, extra in SMOKE_ENV.items() if command.startswith(prefix)), {})
    return command, env


def fresh_copy(destination: Path) -> Path:
    """The tracked and untracked-but-not-ignored files of the working tree, copied to ``destination``."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def files_under(folder: Path) -> dict[str, bytes]:
    """Relative path -> content of every file below ``folder`` (symlinked folders such as ``.venv`` not followed)."""
    found = {}
    for parent, _, names in os.walk(folder):
        for name in names:
            path = Path(parent) / name
            found[str(path.relative_to(folder))] = path.read_bytes()
    return found


def test_every_command_is_run_or_excused() -> None:
    """The parser finds the commands a new user reads first, and every command is either run or named in NOT_RUN."""
    every = [c for document in DOCUMENTS for block in bash_blocks((ROOT / document).read_text()) for c in block]
    assert "make demo" in every and "make test" in every
    assert "lightning-srigl fit --config example_projects/digits_mlp/config.yaml" in every
    run = {c for _, commands in documented_blocks() for c in commands}
    assert all(c in run or c.startswith(tuple(NOT_RUN)) for c in every)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    return {
        "/path/to/cifar-10-batches-py": write_cifar_batches(root / "cifar-10-batches-py"),
        "/path/to/imagenet": write_image_folder(root / "imagenet"),
    }


@pytest.mark.slow
@pytest.mark.parametrize("commands", [c for _, c in documented_blocks()], ids=[i for i, _ in documented_blocks()])
def test_documented_commands_run(commands: list[str], data: dict[str, Path], tmp_path: Path) -> None:
    clone = fresh_copy(tmp_path / "clone")
    # as a user's shell: no PYTHONPATH, and no make variables when the suite itself runs under `make test`
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", COLUMNS="100")
    for printed in commands:
        command, extra = smoke_variant(printed, data)
        if command.startswith("make ") and not (clone / ".venv").exists():
            (clone / ".venv").symlink_to(ROOT / ".venv")
            if subprocess.run(["make", "-q", ".venv/.installed"], cwd=clone).returncode != 0:
                pytest.skip("`make` targets need an up-to-date .venv, the one `make test` creates")
        before = files_under(clone)
        result = subprocess.run(
            ["bash", "-c", command], cwd=clone, env={**env, **extra}, capture_output=True, text=True, timeout=1200
        )
        assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        after = files_under(clone)
        changed = sorted(name for name in after if before.get(name) != after[name])
        asked_for = set(re.findall(r">\s*(\S+)", command))  # `... > run.yaml`: the user's own file
        unclean = [name for name in not_ignored(changed) if name not in asked_for]
        assert not unclean, f"{command} leaves `git status` unclean: {unclean}"
        if printed == "make demo":
            check_demo_output(result.stdout, changed)


def not_ignored(names: list[str]) -> list[str]:
    """Those of ``names`` (paths relative to the repository root) that the repository's ``.gitignore`` keeps."""
    if not names:
        return []
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", "--stdin"],
        cwd=ROOT,
        input="\n".join(names),
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    return [name for name in names if name not in ignored]


def check_demo_output(stdout: str, changed: list[str]) -> None:
    """``make demo``: under 15 lines before its first table, nothing wider than 100 columns, every method in
    both tables, and files (``changed``) written only under the git-ignored ``runs/``."""
    lines = stdout.splitlines()
    first_table = next(i for i, line in enumerate(lines) if line.startswith(TABLE_TOP))
    assert first_table < 15, "\n".join(lines[:first_table])
    assert max(len(line) for line in lines) <= 100
    assert "…" not in stdout, "a table cell was cut"
    assert sum(line.startswith(TABLE_TOP) for line in lines) == 2
    for method in ("dense", "SRigL 90%", "RigL 90%", "2:4 SR-STE", "SRigL 99%", "RigL 99%"):
        assert sum(line.startswith(f"│ {method} ") for line in lines) == 2, method
    assert "no 2:4 kernel here" in stdout
    assert changed and all(name.startswith("runs/digits_demo/") for name in changed), sorted(changed)
