"""The package's two import rules, checked on the source text (no model needed).

1. ``caa_lens`` is the library: it imports neither ``analysis`` nor ``figures``.
2. Everything built on it (``analysis/``, ``figures/``, ``benchmarks/``, the notebooks) uses only its
   public API: names in ``caa_lens.__all__``, or in the ``__all__`` of a sub-module listed in
   ``caa_lens.SUBMODULE_APIS`` (the documented advanced APIs). So what those layers need is exported, and
   anything else in ``caa_lens`` may change without breaking them.

And every module of both packages declares ``__all__``, whose names exist and are not private.
"""

import ast
import importlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import caa_lens

REPO = Path(__file__).resolve().parents[1]
CLIENT_DIRS = ("analysis", "figures", "benchmarks")


def _python_files(*dirs: str) -> list[Path]:
    return sorted(
        p for d in dirs for p in (REPO / d).rglob("*.py") if "data" not in p.relative_to(REPO).parts
    )


def _notebook_sources() -> Iterator[tuple[str, str]]:
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        for number, cell in enumerate(cells):
            if cell["cell_type"] == "code":
                lines = [
                    line
                    for line in "".join(cell["source"]).splitlines()
                    if not line.lstrip().startswith(("%", "!"))
                ]
                yield f"{path.name} cell {number}", "\n".join(lines)


def _sources() -> Iterator[tuple[str, str]]:
    for path in _python_files(*CLIENT_DIRS):
        yield str(path.relative_to(REPO)), path.read_text()
    yield from _notebook_sources()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _public(module: str, name: str) -> bool:
    """Whether ``module.name`` is part of caa_lens's public API."""
    if name.startswith("__"):  # __version__, __all__, __doc__
        return True
    if module == "caa_lens":
        return name in caa_lens.__all__ or f"caa_lens.{name}" in caa_lens.SUBMODULE_APIS
    if module in caa_lens.SUBMODULE_APIS and name in importlib.import_module(module).__all__:
        return True
    # Imported from where it is defined, but exported at the top: the same object, so the same API.
    found = getattr(importlib.import_module(module), name, None)
    return name in caa_lens.__all__ and found is getattr(caa_lens, name)


def _in_caa_lens(module: str | None) -> bool:
    return module is not None and (module == "caa_lens" or module.startswith("caa_lens."))


def _caa_lens_uses(tree: ast.AST) -> Iterator[tuple[str, str, int]]:
    """(module, name, line) for every caa_lens name a piece of code reaches."""
    aliases: dict[str, str] = {}  # local name -> caa_lens module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "caa_lens" or alias.name.startswith("caa_lens."):
                    if alias.asname:
                        aliases[alias.asname] = alias.name
                    else:
                        aliases["caa_lens"] = "caa_lens"
                    if alias.name != "caa_lens":
                        parent, _, leaf = alias.name.rpartition(".")
                        yield parent, leaf, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _in_caa_lens(node.module):
            for alias in node.names:
                yield str(node.module), alias.name, node.lineno
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            yield aliases[node.value.id], node.attr, node.lineno


def _outward_imports(source: str) -> Iterator[tuple[str, int]]:
    """(module, line) for every import of analysis, figures or benchmarks, lazy ones included."""
    for node in ast.walk(ast.parse(source)):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        yield from (
            (n, node.lineno) for n in names if n.split(".")[0] in {"analysis", "figures", "benchmarks"}
        )


def test_the_library_imports_neither_analysis_nor_figures():
    offenders = [
        f"{path.relative_to(REPO)}:{line} imports {module}"
        for path in _python_files("caa_lens")
        for module, line in _outward_imports(path.read_text())
    ]
    assert not offenders, "\n".join(offenders)


def test_the_checks_catch_planted_violations():
    planted = "def f():\n    from analysis.plots import draw\n    import figures.sweep\n"
    assert [m for m, _ in _outward_imports(planted)] == ["analysis.plots", "figures.sweep"]
    client = (
        "import caa_lens as cl\nfrom caa_lens.prefix import _require_filled\n"
        "from caa_lens.data import ContrastiveDataset\nx = cl.load_model()\ny = cl._private\n"
    )
    verdicts = {f"{m}.{n}": _public(m, n) for m, n, _ in _caa_lens_uses(ast.parse(client))}
    assert verdicts == {
        "caa_lens.prefix._require_filled": False,  # internal to the engine
        "caa_lens.data.ContrastiveDataset": True,  # exported at the top: the same object
        "caa_lens.load_model": True,
        "caa_lens._private": False,
    }


def test_clients_use_only_the_public_api():
    offenders = []
    for where, source in _sources():
        for module, name, line in _caa_lens_uses(ast.parse(source)):
            if not _public(module, name):
                offenders.append(f"{where}:{line} uses {module}.{name}")
    assert not offenders, "not in caa_lens.__all__ or a documented sub-module's __all__:\n" + "\n".join(
        sorted(set(offenders))
    )


def test_documented_submodules_exist_and_are_documented():
    for module in caa_lens.SUBMODULE_APIS:
        assert module.startswith("caa_lens.")
        importlib.import_module(module)
        assert f"``{module}``" in (caa_lens.__doc__ or ""), (
            f"{module} is not described in caa_lens's docstring"
        )


MODULES = [p for p in _python_files("caa_lens", "analysis") if p.name != "__main__.py"]  # scripts, not APIs


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p))
def test_every_module_declares_its_public_names(path: Path):
    tree = ast.parse(path.read_text())
    targets = [
        target
        for node in tree.body
        for target in (node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)])
    ]
    declared = [t for t in targets if isinstance(t, ast.Name) and t.id == "__all__"]
    assert declared, f"{path.relative_to(REPO)} has no __all__"
    module = importlib.import_module(_module_name(path))
    for name in module.__all__:
        assert not name.startswith("_"), f"{module.__name__}.__all__ lists the private name {name}"
        assert hasattr(module, name), f"{module.__name__}.__all__ lists {name}, which it does not define"


# What building, copying, selecting or extending a transformers KV cache looks like in source.
CACHE_WRITES = re.compile(
    r"DynamicCache|past_key_values\s*=|batch_select_indices|batch_repeat_interleave|\.crop\("
)


def test_only_the_prefix_engine_touches_a_kv_cache():
    """One engine (``caa_lens.prefix``) runs prefixes into a cache and suffixes on copies of it; the
    steering hooks only read the cache's length (``caa_lens.steering``)."""
    touching = {
        str(path.relative_to(REPO))
        for path in _python_files("caa_lens", "analysis", "benchmarks", "figures")
        if CACHE_WRITES.search(path.read_text())
    }
    assert touching == {"caa_lens/prefix.py"}
    assert CACHE_WRITES.search("model(ids, past_key_values=cache)")  # the pattern can fail
