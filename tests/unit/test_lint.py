"""Style and architecture are checked with the fast tests: ruff, and the import contracts of
docs/architecture.md ("may import" column) through import-linter. The contracts name folders, not modules,
so a new module is covered by where it lives; the planted imports below show that each contract bites."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PACKAGES = ("rl", "actors", "rewards")


def _run(*cmd: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_ruff_is_clean():
    result = _run(str(BIN / "ruff"), "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_contracts_are_kept():
    result = _run(str(BIN / "lint-imports"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_rl_holds_only_its_three_layers():
    """rl/ is the driver's modules plus the core and tools folders: a new folder needs a place in the contracts."""
    folders = {p.name for p in (REPO / "rl").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == {"core", "tools"}, "give the new folder a layer in pyproject.toml's import contracts"


@pytest.mark.parametrize(("module", "planted"), [
    ("actors/remote.py", "import rl.trainer"),  # an actor reaching up into the driver
    ("actors/remote.py", "import rl.tools.plots"),  # ... or into the tools
    ("rl/core/grpo.py", "import actors.remote"),  # the core reaching up into the actors
    ("rl/core/grpo.py", "import rl.checkpoint"),  # ... or into the driver
    ("rl/checkpoint.py", "import rl.tools.plots"),  # the driver importing a tool
    ("rl/ap.py", "import rl.trainer"),  # a cycle between driver modules (rl.trainer -> rl.evaluate -> rl.ap)
    ("rl/core/frames.py", "import rl.core.data"),  # ... or inside a folder (rl.core.data -> rl.core.frames)
    ("rewards/geometry.py", "import rl.core.grpo"),  # rewards stays pure
])
def test_each_contract_bites(tmp_path, module, planted):
    for package in PACKAGES:
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    target = tmp_path / module
    target.write_text(f"{planted}\n{target.read_text()}")
    result = _run(str(BIN / "lint-imports"), cwd=tmp_path)
    assert result.returncode != 0 and "BROKEN" in result.stdout, result.stdout + result.stderr
