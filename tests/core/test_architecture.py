"""Architecture: facts live on rules (an unstated fact is refused by name) and the package is
layered (core imports nothing above it; no import cycles), read off the modules' imports."""
import ast
import dataclasses
import dis
import inspect
import pathlib
import re

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
    facts = ("depth", "max_pool", "affine", "weighted", "homogeneous", "channels",
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
    """Every comparison in ``source`` of a ``.rule_name`` attribute with string constants (``==``,
    ``!=``, ``in``, ``not in`` a tuple, list or set of them), as source text."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left] + node.comparators
            if any(isinstance(o, ast.Attribute) and o.attr == "rule_name" for o in operands) and \
                    any(_string_constants(o) for o in operands):
                found.append(ast.unparse(node))
    return found


ADAPTERS = PACKAGE.parent.parent / "adapters"
OUTSIDE_CORE = sorted([p for p in PACKAGE.rglob("*.py") if "core" not in p.relative_to(PACKAGE).parts]
                      + list(ADAPTERS.glob("*.py")))


def test_analyses_and_adapters_ask_rules_for_facts_never_op_names():
    assert _rule_name_comparisons('a = node.rule_name in ("conv", "linear")\n'
                                  'b = graph.nodes[0].rule_name != "input"\nc = n.rule_name == rule\n') \
        == ["node.rule_name in ('conv', 'linear')", "graph.nodes[0].rule_name != 'input'"]
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


# ---------------------------------------------------------------- one op, one rule, one file

def _custom_op(name, compute):
    """A torch-function-aware Python function ``name(x)`` computing ``compute(x)``: capture sees
    it as one op (like any torch function), so only a rule registered for it can lift it."""
    def op(x):
        if torch.overrides.has_torch_function((x,)):
            return torch.overrides.handle_torch_function(op, (x,), x)
        return compute(x)
    op.__name__ = op.__qualname__ = name
    return op


def _pairwise_max(x):
    return x.unflatten(-1, (-1, 2)).amax(-1)


pair_max = _custom_op("pair_max", _pairwise_max)
plain_relu = _custom_op("plain_relu", torch.relu)


@pytest.fixture
def throwaway_family_rules():
    """A max-pooling-like op and an activation, each one rule stating only what its family
    preset does not: that is all it takes to add them."""
    @rules.rule("throwaway_pair_max", pair_max, family=rules.POOLING, max_pool=2,
                skips_missing=True)
    def lift_pair_max(ev, x, *, func=None):
        """Max neurons over pairs of entries: lifted, the sum of each pair (two terms, + 2 as
        every rule budgets for its coefficients, docs/design.md "Rounding")."""
        return ev.fixed(x, lambda m: m.unflatten(-1, (-1, 2)).sum(-1), terms=2 + 2)

    @rules.rule("throwaway_relu", plain_relu, family=rules.ACTIVATION)
    def lift_relu(ev, x, *, func=None):
        """ReLU neurons: identity neurons in the lifted network."""
        return x
    yield
    rules.unregister("throwaway_pair_max")
    rules.unregister("throwaway_relu")


class _PoolNet(nn.Module):
    """conv -> activation -> -inf padding -> max over pairs along the width -> linear; with
    ``custom``, the activation and the pooling are the throwaway ops, else ReLU and max_pool2d."""

    def __init__(self, custom):
        super().__init__()
        torch.manual_seed(0)
        self.custom = custom
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4 * 8 * 5, 3)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        y = self.bn(self.conv(x))
        y = plain_relu(y) if self.custom else torch.relu(y)
        y = torch.nn.functional.pad(y, (1, 1), value=-float("inf"))
        y = pair_max(y) if self.custom else torch.nn.functional.max_pool2d(y, (1, 2))
        return self.head(y.flatten(1))


def test_a_pooling_op_and_an_activation_added_as_one_rule_each_run_every_analysis(
        throwaway_family_rules):
    """Every analysis gives the same numbers on a model using the two throwaway rules as on the
    same model written with ReLU and max_pool2d (a -inf padding read by the new pooling too)."""
    from pathmetric import reports
    custom, builtin = _PoolNet(True).eval(), _PoolNet(False).eval()
    builtin.load_state_dict(custom.state_dict())
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(custom(x), builtin(x))
    other = {"conv.weight": custom.conv.weight.detach() * 0.9}
    assert pm.check_support(custom, x).ok
    analyses = {
        "path_norm": lambda m: pm.path_norm(m, x, q=2),
        "path_metric": lambda m: pm.path_metric(m, other, x),
        "output_bound": lambda m: pm.output_bound(m, other, x).tolist(),
        "quantization_bound": lambda m: pm.quantization_bound(m, x, bits=4),
        "weight_scores": lambda m: {k: v.tolist() for k, v in pm.weight_scores(m, x).items()},
        "channel_scores": lambda m: {k: v.tolist() for k, v in pm.channel_scores(m, x).items()},
        "layer_sensitivity": lambda m: dict(pm.layer_sensitivity(m, x, bits=(2, 4))),
        "prune": lambda m: {k: v.tolist() for k, v in pm.prune(m, 0.5, x).masks.items()},
        "graph_facts": lambda m: reports.graph_facts(m, x),
        "generalization_bound": lambda m: reports.generalization_bound(m, x, n=1000),
        "symmetries": lambda m: reports.symmetries(m, x),
        "classical_bound": lambda m: reports.classical_bound(m, other, x),
        "random_rescale": lambda m: pm.random_rescale(m, x, seed=0).conv.weight.tolist(),
    }
    for name, analysis in analyses.items():
        assert analysis(custom) == analysis(builtin), name
    assert reports.graph_facts(custom, x).pool_types == 1


def _delegations() -> list:
    """``(rule, rule it delegates to)``: a rule whose lift calls another rule's lift."""
    by_lift = {r.lift: name for name, r in rules.RULES.items()}

    def global_names(code) -> set:   # names the function and the functions inside it load
        names = {i.argval for i in dis.get_instructions(code) if i.opname == "LOAD_GLOBAL"}
        for const in code.co_consts:
            if inspect.iscode(const):
                names |= global_names(const)
        return names
    found = []
    for name, r in rules.RULES.items():
        called = [r.lift.__globals__.get(g) for g in global_names(r.lift.__code__)]
        found += [(name, by_lift[f]) for f in called if f in by_lift and by_lift[f] != name]
    return sorted(set(found))


#: facts a delegating rule states differently from the rule it calls, and why
DIFFERS = {
    ("minimum", "maximum"): {"depth"},   # min = -max(-x, -y): an identity layer after the max
    # a max/min reduction calls the elementwise maximum only when its ``dim`` is an activation;
    # otherwise it reduces entries (channels reindexed, a max neuron over the reduced entries)
    ("max", "maximum"): {"max_pool", "channels", "index_outputs", "skips_missing"},
    ("min", "maximum"): {"depth", "max_pool", "channels", "index_outputs"},
}


def test_a_rule_and_the_rule_it_delegates_to_agree():
    facts = [f.name for f in dataclasses.fields(rules.Rule)
             if f.name not in ("name", "funcs", "lift", "check", "param_views", "_signature")]
    pairs = _delegations()
    assert ("upsample_linear", "interpolate") in pairs and ("rrelu", "leaky_relu") in pairs
    disagree = {(a, b): {f for f in facts if getattr(rules.RULES[a], f) != getattr(rules.RULES[b], f)}
                - DIFFERS.get((a, b), set()) for a, b in pairs}
    assert not any(disagree.values()), disagree


def test_family_presets_are_copied_into_each_rule():
    assert rules.RULES["conv"].channel_params == {"weight": 0, "bias": 0}
    assert rules.RULES["conv"].channel_params is not rules.RULES["linear"].channel_params
    assert rules.WEIGHTED_LAYER["channel_params"] is not rules.RULES["conv"].channel_params


def test_families_import_the_registry_not_the_package():
    """The family modules import :mod:`pathmetric.core.rules.registry`; only the package's
    ``__init__`` imports the families (no import cycle by design)."""
    for path in (PACKAGE / "core" / "rules").glob("*.py"):
        if path.name in ("__init__.py", "registry.py"):
            continue
        assert "pathmetric.core.rules" not in _imports(path), path.name
        assert "pathmetric.core.rules.registry" in _imports(path), path.name


REPOSITORY = PACKAGE.parents[1]
_LINK = re.compile(r"\]\(([^)#\s]+)")


def _repository_text_files() -> list:
    """The repository's source, documentation and configuration files (no virtual environment,
    caches or recorded results)."""
    skip = {"__pycache__", "results", "node_modules"}
    files = []
    for p in REPOSITORY.rglob("*"):
        parts = p.relative_to(REPOSITORY).parts
        if not p.is_file() or skip & set(parts) or parts[0].endswith(".egg-info") or any(
                part.startswith(".") and part != ".ci" for part in parts[:-1]):
            continue
        if p.suffix in (".py", ".md", ".toml", ".sh", ".txt", ".cfg", ".yaml", ".yml") or \
                parts[0] == ".ci":
            files.append(p)
    return files


def test_no_file_in_the_repository_refers_to_a_path_outside_it():
    """No ``../shared``-style or absolute machine path, and every relative Markdown link
    resolves inside the repository (the design document is docs/design.md)."""
    files = _repository_text_files()
    assert any(p.name == "README.md" for p in files) and (REPOSITORY / "docs" / "design.md").exists()
    found = []
    for path in files:
        text = path.read_text(errors="replace")
        if path == pathlib.Path(__file__):
            continue
        found += [f"{path.name}: {hit}" for hit in re.findall(r"\.\./shared|/work/\w+", text)]
        for target in _LINK.findall(text):
            if "://" in target or target.startswith("mailto:"):
                continue
            resolved = (path.parent / target).resolve()
            if REPOSITORY.resolve() not in resolved.parents and resolved != REPOSITORY.resolve():
                found.append(f"{path.name}: link {target}")
    assert not found, found
