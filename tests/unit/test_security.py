"""Static checks of the security promises (docs/security.md): nothing we ship evaluates, unpickles or
remote-code-loads data, and local services bind to loopback by default."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from rl.core.config import Config, ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p for d in ("rl", "actors", "rewards") for p in (REPO / d).rglob("*.py"))
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}
FORBIDDEN_MODULES = {"pickle", "cloudpickle", "dill", "marshal", "shelve"}


def _name(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return f"{_name(func.value)}.{func.attr}"
    return ""


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def problems(tree: ast.AST) -> list[str]:
    """Line and reason of every forbidden call or import in a parsed module."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name, keywords = _name(node.func), {k.arg: k.value for k in node.keywords}
            if name in FORBIDDEN_CALLS:
                found.append(f"{node.lineno}: {name}()")
            if name.endswith("torch.load") and not _is_true(keywords.get("weights_only")):
                found.append(f"{node.lineno}: torch.load without weights_only=True")
            if _is_true(keywords.get("trust_remote_code")):
                found.append(f"{node.lineno}: trust_remote_code=True hard-coded (it must come from the config)")
        modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                   else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        found += [f"{node.lineno}: imports {m}" for m in modules if m.split(".")[0] in FORBIDDEN_MODULES]
    return found


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_no_eval_exec_pickle_or_unsafe_loading(path: Path) -> None:
    assert problems(ast.parse(path.read_text(encoding="utf-8"))) == []


def test_the_checker_catches_what_it_forbids() -> None:
    bad = ("import pickle\nfrom dill import loads\nx = eval('1')\ntorch.load(f)\ntorch.load(f, weights_only=True)\n"
           "AutoModel.from_pretrained(p, trust_remote_code=True)\nAutoModel.from_pretrained(p, trust_remote_code=t)\n")
    assert sorted(int(p.split(":")[0]) for p in problems(ast.parse(bad))) == [1, 2, 3, 4, 6]


def test_defaults_trust_no_remote_code_and_bind_to_loopback() -> None:
    cfg = Config()
    assert cfg.model.trust_remote_code is False
    assert cfg.cluster.host == "auto"  # the node's Ray address: 127.0.0.1 for a local Ray (rl.cluster.start_local)


@pytest.mark.parametrize("wildcard", ["0.0.0.0", "::"])
def test_a_wildcard_host_is_refused_naming_the_key(wildcard: str) -> None:
    with pytest.raises(ConfigError, match=r"cluster.host: a wildcard would open the unauthenticated weight-sync "
                                          r"and learner stores on every network"):
        load_config(overrides=[f"cluster.host='{wildcard}'"])


def test_a_store_listens_on_its_host_only() -> None:
    # torch's own TCPStore master listens on "::" whatever host it is given.
    from datetime import timedelta

    import psutil

    from actors.remote import listening_store

    store = listening_store("127.0.0.1", 1, timedelta(seconds=10))
    mine = [c.laddr for c in psutil.Process().net_connections("inet")
            if c.status == "LISTEN" and c.laddr.port == store.port]
    assert [(a.ip, a.port) for a in mine] == [("127.0.0.1", store.port)]
    store.set("key", "value")
    assert store.get("key") == b"value"


def test_local_collectives_use_the_loopback_interface() -> None:
    # What rl.cluster.start_local gives every actor and rl.sft gives its worker processes: gloo and NCCL
    # (RCCL reads the same name) bind to the interface of 127.0.0.1, not to whatever interface they find first.
    import psutil

    from rl.cluster import loopback_collectives_env

    env = loopback_collectives_env()
    assert set(env) == {"GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"}
    for interface in env.values():
        assert "127.0.0.1" in [a.address for a in psutil.net_if_addrs()[interface]]
