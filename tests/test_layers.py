"""The layering of broker/, checked on the sources: the core imports no I/O (not even
through another broker module), no output module of serve imports another, nothing but
the composition root imports serve, and only the WebSocket adapter touches the
internals of trio-websocket and trio."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BROKER = ROOT / "broker"
IO = frozenset(("trio", "zmq", "h11", "trio_websocket", "wsproto", "socket", "selectors"))
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
