"""Style and architecture are checked with the fast tests: ruff, and the import contracts of
docs/architecture.md ("may import" column) through import-linter."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ACTORS_MAY_IMPORT = {"rl", "rl.config", "rl.grpo", "rl.data", "rl.platform", "rl.model_parts"}


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)


def test_ruff_is_clean():
    result = _run(str(BIN / "ruff"), "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_contracts_are_kept():
    result = _run(str(BIN / "lint-imports"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_actor_contract_forbids_every_other_rl_module():
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    forbidden = next(c for c in contracts if c["source_modules"] == ["actors"])["forbidden_modules"]
    modules = {f"rl.{p.stem}" for p in (REPO / "rl").glob("*.py") if p.stem != "__init__"}
    assert set(forbidden) == modules - ACTORS_MAY_IMPORT, "update the actors contract in pyproject.toml"
