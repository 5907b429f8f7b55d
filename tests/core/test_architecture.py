"""Architecture: facts live on rules (an unstated fact is refused by name) and the package is
layered (core imports nothing above it; no import cycles), read off the modules' imports."""
import ast
import pathlib

import pytest
import torch
from torch import nn

import pathmetric as pm
from pathmetric.core import rules
from pathmetric.reports import generalization_bound

PACKAGE = pathlib.Path(pm.__file__).parent


@pytest.fixture
def throwaway_rule():
    """``torch.nn.functional.softshrink`` registered as a rule stating only its lifted image
    (lifted as the identity: the point is which analyses refuse, not the number)."""
    func = torch.nn.functional.softshrink

    @rules.rule("throwaway_op", func)
    def throwaway(ev, x, lambd=0.5, *, func=None):
        return x
    yield "throwaway_op"
    rules.unregister("throwaway_op")


def _model():
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.head = nn.Linear(4 * 6 * 6, 2)

        def forward(self, x):
            y = torch.nn.functional.softshrink(self.conv(x), 0.0)
            return self.head(torch.relu(y).flatten(1))
    return Net().eval()


def test_a_rule_stating_only_its_lifted_image_is_refused_by_name_where_a_fact_is_needed(
        throwaway_rule):
    model, x = _model(), torch.randn(1, 3, 8, 8)
    assert pm.path_norm(model, x) > 0
    for analysis in (lambda: generalization_bound(model, x, n=1000),
                     lambda: pm.channel_scores(model, x),
                     lambda: pm.random_rescale(model, x, seed=0)):
        with pytest.raises(pm.UnsupportedModelError, match=throwaway_rule) as info:
            analysis()
        assert info.value.unsupported[0][0] == throwaway_rule


def test_every_registered_rule_states_every_fact():
    facts = ("layers", "max_pool", "affine", "weighted", "homogeneous", "channels",
             "transforms_through", "channel_params", "channel_dim", "channel_affine")
    missing = [(name, f) for name, r in rules.RULES.items() for f in facts
               if getattr(r, f) is None]
    assert not missing
    assert all(r.channels in rules.CHANNEL_MAPS for r in rules.RULES.values())
    assert all(r.channel_dim in (1, -1) for r in rules.RULES.values())
    assert all(set(r.channel_params.values()) <= {0, 1} for r in rules.RULES.values())
    # a conv/linear-like layer says where its weight's output channels are
    assert all("weight" in r.channel_params for r in rules.RULES.values() if r.affine)


def _string_constants(node) -> list:
    """The string constants ``node`` is, or holds as a tuple/list/set display."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [s for element in node.elts for s in _string_constants(element)]
    return []


def _rule_name_comparisons(source: str) -> list:
    """Every comparison in ``source`` of an ``.rule`` attribute with string constants (``==``,
    ``!=``, ``in``, ``not in`` a tuple, list or set of them), as source text."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left] + node.comparators
            if any(isinstance(o, ast.Attribute) and o.attr == "rule" for o in operands) and \
                    any(_string_constants(o) for o in operands):
                found.append(ast.unparse(node))
    return found


ADAPTERS = PACKAGE.parent.parent / "adapters"
OUTSIDE_CORE = sorted([p for p in PACKAGE.rglob("*.py") if "core" not in p.relative_to(PACKAGE).parts]
                      + list(ADAPTERS.glob("*.py")))


def test_analyses_and_adapters_ask_rules_for_facts_never_op_names():
    assert _rule_name_comparisons('a = node.rule in ("conv", "linear")\n'
                                  'b = graph.nodes[0].rule != "input"\nc = n.rule == rule\n') \
        == ["node.rule in ('conv', 'linear')", "graph.nodes[0].rule != 'input'"]
    assert any(p.name == "scores.py" for p in OUTSIDE_CORE) and \
        any(p.name == "torch_pruning.py" for p in OUTSIDE_CORE)
    found = {str(p): hits for p in OUTSIDE_CORE if (hits := _rule_name_comparisons(p.read_text()))}
    assert not found, found


def _imports(path: pathlib.Path) -> set:
    """Modules of pathmetric that ``path`` imports (absolute names), at any depth."""
    module = ".".join(("pathmetric",) + path.relative_to(PACKAGE).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    if path.name == "__init__.py":
        module = package
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("pathmetric"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("pathmetric"):
                found.add(target)
                found.update(f"{target}.{a.name}" for a in node.names)
    return {name for name in found if name in MODULES} - {module}


MODULES = {".".join(("pathmetric",) + p.relative_to(PACKAGE).with_suffix("").parts)
           .removesuffix(".__init__"): p for p in PACKAGE.rglob("*.py")}


def test_core_imports_nothing_above_it_and_there_are_no_cycles():
    graph = {name: _imports(path) for name, path in MODULES.items()}
    core = {name for name in graph if name.startswith("pathmetric.core")}
    assert len(core) >= 7
    for name in core:
        above = {m for m in graph[name] if not m.startswith("pathmetric.core")
                 and m != "pathmetric.errors"}
        assert not above, f"{name} imports {above}"
    for name in graph:
        if not name.startswith("pathmetric.app"):
            assert not {m for m in graph[name] if m.startswith("pathmetric.app")}, name
        assert not any("adapters" in m for m in graph[name]), name
    # no cycles among the modules (a package's __init__ re-exporting its children excluded)
    edges = {name: {m for m in deps if not name.startswith(m + ".") and m != "pathmetric"}
             for name, deps in graph.items()}
    state: dict = {}

    def visit(name, stack):
        state[name] = "open"
        for m in edges[name]:
            if state.get(m) == "open":
                raise AssertionError(f"import cycle: {' -> '.join(stack + [name, m])}")
            if m not in state:
                visit(m, stack + [name])
        state[name] = "done"
    for name in edges:
        if name not in state:
            visit(name, [])


def test_no_private_name_is_imported_across_modules():
    """``from x import _name`` between modules of the engine and the adapters, or ``pm._name``:
    none (a helper another module needs is public, with a docstring)."""
    adapters = PACKAGE.parents[1] / "adapters"
    found = []
    for path in list(PACKAGE.rglob("*.py")) + list(adapters.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith(
                    ("pathmetric", "adapters"))):
                found += [f"{path.name}: {a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                    node.value.id in ("pm", "pathmetric") and node.attr.startswith("_"):
                found.append(f"{path.name}: pm.{node.attr}")
    assert not found, found
