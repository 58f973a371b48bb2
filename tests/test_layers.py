"""The layering rule of broker/__init__.py, checked on the sources: each package imports
only the layers below it; the protocol and the core import no I/O (not even through
another broker module); no output module of serve imports another; nothing but the
composition root imports serve; the worker speaks only the protocol; and only the
WebSocket adapter touches the internals of trio-websocket and trio."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BROKER = ROOT / "broker"
IO = frozenset(("trio", "zmq", "h11", "trio_websocket", "wsproto", "socket", "selectors"))
HEAVY = frozenset(("cv2", "numpy"))  # the worker extra: the broker and the client never need them
OUTPUTS = ("broker.serve.websocket", "broker.serve.mjpeg", "broker.serve.wsapi")
ADAPTER = "broker.serve.wsframes"
INTERNALS = re.compile(r"\._stream\b|\._stream_lock\b|\._sock\b")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_path(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, by absolute name (``from pkg import mod`` counts
    ``pkg.mod`` when that is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            for alias in node.names:
                if module_path(f"{node.module}.{alias.name}") is not None:
                    found.add(f"{node.module}.{alias.name}")
    return found


def closure(name: str) -> set[str]:
    """What importing module ``name`` imports, following broker's own modules."""
    seen, todo, outside = set(), [name], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        path = module_path(current)
        assert path is not None, current
        for imported in imports(path):
            if imported.split(".")[0] == "broker":
                todo.append(imported)
            else:
                outside.add(imported.split(".")[0])
    return outside


def broker_modules(under: Path = BROKER) -> list[Path]:
    return sorted(under.rglob("*.py"))


def test_the_scan_sees_the_modules_it_checks() -> None:
    names = {module_name(path) for path in broker_modules()}
    assert {"broker.core.hub", "broker.serve.server", ADAPTER, *OUTPUTS} <= names
    assert "trio" in closure("broker.serve.delivery")  # the scan can find I/O


def test_the_core_imports_no_io() -> None:
    for path in broker_modules(BROKER / "core"):
        found = closure(module_name(path)) & IO
        assert not found, f"{module_name(path)} imports {sorted(found)}"


def test_no_output_imports_another() -> None:
    for output in OUTPUTS:
        path = module_path(output)
        assert path is not None
        others = {name for name in imports(path) if name in OUTPUTS and name != output}
        assert not others, f"{output} imports {sorted(others)}"


def test_only_the_composition_root_imports_serve() -> None:
    for path in broker_modules():
        name = module_name(path)
        if name.startswith("broker.serve") or name == "broker.app":
            continue
        serve = {m for m in imports(path) if m == "broker.serve" or m.startswith("broker.serve.")}
        assert not serve, f"{name} imports {sorted(serve)}"


def test_only_the_adapter_touches_websocket_and_trio_internals() -> None:
    for package in ("core", "ingest", "serve"):
        for path in broker_modules(BROKER / package):
            if module_name(path) == ADAPTER:
                assert INTERNALS.search(path.read_text())
                continue
            found = INTERNALS.findall(path.read_text())
            assert not found, f"{module_name(path)} touches {sorted(set(found))}"


PURE_SUPPORT = {"broker.support.backoff", "broker.support.logthrottle", "broker.support.ratelimit"}
BELOW_EDGES = {
    "broker.protocol",
    "broker.config",
    "broker.core",
    "broker.support",
    "broker.trust",
}

# package: (what of ours it may import, which third-party modules it must not import).
RULES: dict[str, tuple[set[str], frozenset[str]]] = {
    # The wire contracts: nothing of either side, no I/O (h11 and wsproto's rule).
    "broker.protocol": ({"broker.protocol"}, IO | HEAVY),
    # Small utilities depend on nothing else of ours.
    "broker.support": ({"broker.support"}, HEAVY),
    # Tokens, keys and certificates: checked by the config, used by the edges.
    "broker.trust": ({"broker.trust", "broker.support", "broker.protocol"}, HEAVY),
    "broker.config": ({"broker.config", "broker.protocol", "broker.trust"}, IO | HEAVY),
    # The core is pure and synchronous.
    "broker.core": ({"broker.core", "broker.protocol", "broker.config"} | PURE_SUPPORT, IO | HEAVY),
    # Frames in and the control plane: the layers below, never each other or the edge.
    "broker.ingest": ({"broker.ingest"} | BELOW_EDGES, HEAVY),
    "broker.control": ({"broker.control"} | BELOW_EDGES, HEAVY),
    # Analytics: the frame feed and the analyzer's supervision (control's supervisor).
    "broker.analytics": ({"broker.analytics", "broker.control"} | BELOW_EDGES, HEAVY),
    "broker.serve": (
        {"broker.serve", "broker.ingest", "broker.control", "broker.analytics"} | BELOW_EDGES,
        HEAVY,
    ),
    # The client library is a separate program: the protocol, the queue, pure utilities.
    "broker.client": (
        {"broker.client", "broker.protocol", "broker.core.queue"} | PURE_SUPPORT,
        HEAVY,
    ),
    # The worker speaks the protocol and uses pure utilities, nothing of the broker; no trio.
    "cameras": (
        {"cameras", "broker.protocol"} | PURE_SUPPORT,
        frozenset(("trio", "trio_websocket", "h11")),
    ),
}


def under(name: str, prefixes: set[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(package: str, allowed: set[str], banned: frozenset[str]) -> list[str]:
    """Imports of our modules outside ``allowed``, and of ``banned`` third-party ones."""
    bad = []
    for path in sorted((ROOT / package.replace(".", "/")).rglob("*.py")):
        name = module_name(path)
        for target in sorted(imports(path)):
            top = target.split(".")[0]
            ours = top in ("broker", "cameras") and target not in ("broker", "cameras")
            if (ours and not under(target, allowed)) or top in banned:
                bad.append(f"{name} imports {target}")
    return bad


@pytest.mark.parametrize("package", list(RULES))
def test_each_layer_imports_only_what_it_may(package: str) -> None:
    allowed, banned = RULES[package]
    assert violations(package, allowed, banned) == []


def test_the_layer_rules_can_fail() -> None:
    """The composition root imports every layer: a rule narrower than that is broken."""
    assert violations("broker", {"broker.protocol"}, frozenset()) != []
    assert violations("broker.serve", BELOW_EDGES, frozenset()) != []
