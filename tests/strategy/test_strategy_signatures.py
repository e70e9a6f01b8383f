"""Per-rule strategy classes: real keyword-only signatures (the rule's options, ``num_byzantine``,
the robust options, FedAvg's), no silent rule override, options given once, defaults in the rule.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import pytest
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.serverapp.strategy import FedAvg

from flwr_byz import gars, strategy
from flwr_byz.strategy import legacy, message_api, rules

MODULES = [(message_api, FedAvg), (legacy, LegacyFedAvg)]
IDS = ["message-api", "legacy"]
RULE_CLASSES = [name.__name__ for name in rules.RULE_CLASSES.values()]
CASES = [(module, fedavg, name) for module, fedavg in MODULES for name in RULE_CLASSES]
CASE_IDS = [f"{api}-{name}" for api in IDS for name in RULE_CLASSES]

#: a valid value of every rule option (a new option needs one here)
SAMPLE = {
    "b": 1,
    "distance": "plain",
    "neighbours": 2,
    "m": 3,
    "eps": 1e-6,
    "tol": 1e-6,
    "max_iter": 50,
    "max_subsets": 1000,
    "selector": "medoid",
    "variant": "bulyan",
    "selector_options": {},
    "tau": 10.0,
    "L": 2,
    "niters": 2,
    "c": 1.0,
    "seed": 3,
}


def _server_update(global_arrays: dict[str, Any], server_round: int) -> dict[str, Any]:
    return global_arrays


def _required(cls: type) -> dict[str, Any]:
    """The keywords a class cannot do without (FLTrust's server update)."""
    return {"server_update_fn": _server_update} if cls.rule_name == "fltrust" else {}


def _kernel_options(rule: str) -> list[str]:
    """The kernel's keyword options, read from its signature, less what the engine supplies."""
    params = list(inspect.signature(gars.get(rule).fn).parameters.values())[2:]
    engine = {"centered_clipping": {"center"}, "fltrust": {"server_update"}, "dnc": {"generator"}}
    return [p.name for p in params if p.name not in engine.get(rule, set())]


def _own_parameters(fn: Any) -> list[str]:
    params = list(inspect.signature(fn).parameters.values())[1:]  # no self
    return [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def test_every_public_strategy_class_is_covered() -> None:
    assert set(strategy.STRATEGIES) | set(strategy.BEYOND_STRATEGIES) == set(rules.RULE_CLASSES)
    for module, _ in MODULES:
        public = {name for name in module.__all__ if isinstance(getattr(module, name), type)}
        assert public == {*RULE_CLASSES, _generic(module)}


def _generic(module: Any) -> str:
    return "RobustStrategy" if module is message_api else "RobustFedAvg"


@pytest.mark.parametrize(("module", "fedavg", "name"), CASES, ids=CASE_IDS)
def test_the_signature_lists_every_keyword_in_order(module, fedavg, name) -> None:
    cls = getattr(module, name)
    params = inspect.signature(cls).parameters
    names = list(params)
    assert all(p.kind is p.KEYWORD_ONLY for p in params.values()), names
    assert len(names) == len(set(names))
    assert "self" not in names and "rule" not in names
    # the rule's own options first, as the kernel names them, each None (the kernel's default)
    options = names[: names.index("num_byzantine")]
    assert options == _kernel_options(cls.rule_name) == list(rules.rule_option_names(cls.rule_name))
    assert all(params[key].default is None for key in options)
    assert params["num_byzantine"].default == 0
    robust = [p for p in _own_parameters(rules.RobustBase.__init__) if p != "rule"]
    robust.remove("server_update_fn")  # FLTrust's only: its class's keyword, required there
    if cls.rule_name == "fltrust":
        assert names[len(options) + 1] == "server_update_fn"
        assert params["server_update_fn"].default is inspect.Parameter.empty
    else:
        assert "server_update_fn" not in names
    fedavg_names = _own_parameters(fedavg.__init__)
    assert names[len(names) - len(fedavg_names) :] == fedavg_names  # FedAvg's last, in its order
    assert set(robust) <= set(names[: len(names) - len(fedavg_names)])
    positions = [names.index(key) for key in robust]
    assert positions == sorted(positions)  # RobustBase's order
    assert min(positions) == names.index("num_byzantine") == len(options)
    for key in fedavg_names:
        assert params[key].default == inspect.signature(fedavg.__init__).parameters[key].default


@pytest.mark.parametrize(("module", "fedavg"), MODULES, ids=IDS)
def test_the_generic_class_takes_the_rule_first(module, fedavg) -> None:
    cls = getattr(module, _generic(module))
    params = list(inspect.signature(cls).parameters.values())
    assert params[0].name == "rule" and params[0].kind is params[0].POSITIONAL_OR_KEYWORD
    assert all(p.kind is p.KEYWORD_ONLY for p in params[1:])
    names = [p.name for p in params]
    assert set(_own_parameters(rules.RobustBase.__init__)) <= set(names)
    assert names[-len(_own_parameters(fedavg.__init__)) :] == _own_parameters(fedavg.__init__)
    assert cls("krum", num_byzantine=1).aggregator.rule.name == "krum"


def test_a_users_subclass_with_its_own_init_gets_its_own_signature() -> None:
    class Mine(strategy.Krum):
        def __init__(self, *, spread: float = 1.0, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.spread = spread

    assert list(inspect.signature(Mine).parameters) == ["spread", "kwargs"]

    class Same(strategy.Krum):
        pass

    assert inspect.signature(Same) == inspect.signature(strategy.Krum)
    assert Mine(spread=2.0, num_byzantine=1).num_byzantine == 1


@pytest.mark.parametrize(("module", "fedavg", "name"), CASES, ids=CASE_IDS)
def test_a_keyword_option_equals_the_same_rule_option(module, fedavg, name) -> None:
    cls = getattr(module, name)
    options = {key: SAMPLE[key] for key in rules.rule_option_names(cls.rule_name)}
    by_keyword = cls(num_byzantine=1, **options, **_required(cls))
    by_dict = cls(num_byzantine=1, rule_options=options, **_required(cls))
    assert by_keyword.aggregator.rule_options == by_dict.aggregator.rule_options == options
    assert cls(num_byzantine=1, **_required(cls)).aggregator.rule_options == {}


@pytest.mark.parametrize(("module", "fedavg", "name"), CASES, ids=CASE_IDS)
def test_an_unknown_keyword_is_named(module, fedavg, name) -> None:
    cls = getattr(module, name)
    with pytest.raises(TypeError, match=rf"{name}\(\) got an unexpected keyword argument 'bogus'"):
        cls(num_byzantine=1, bogus=3, **_required(cls))
    with pytest.raises(TypeError, match="did you mean 'num_byzantine'"):
        cls(num_byzantin=1, **_required(cls))


@pytest.mark.parametrize(("module", "fedavg", "name"), CASES, ids=CASE_IDS)
def test_the_docstring_names_the_rule_and_its_requirement(module, fedavg, name) -> None:
    cls = getattr(module, name)
    doc = " ".join((cls.__doc__ or "").split())
    assert name in doc.split(":")[0]
    rule = gars.get(cls.rule_name)
    a = rule.min_n(0)
    k = rule.min_n(1) - a
    assert rule.min_n(5) == 5 * k + a
    assert (f"n >= {k}f + {a}" if k else f"n >= {a}") in doc, doc
    assert re.search(r"Requires n >= ", doc)


@pytest.mark.parametrize("module", [strategy, legacy], ids=IDS)
def test_a_per_rule_class_refuses_another_rule(module) -> None:
    with pytest.raises(TypeError, match="Median runs 'median'; for 'krum' use Krum"):
        module.Median(rule="krum", num_byzantine=1)
    with pytest.raises(TypeError, match="positional"):
        module.Median("krum", num_byzantine=1)
    assert module.Median(rule="median", num_byzantine=1).aggregator.rule.name == "median"


@pytest.mark.parametrize("module", [strategy, legacy], ids=IDS)
def test_rule_options_and_keywords_merge_or_conflict_clearly(module) -> None:
    merged = module.TrimmedMean(num_byzantine=2, rule_options={"b": 1})
    assert merged.aggregator.rule_options == {"b": 1}
    same = module.TrimmedMean(b=1, rule_options={"b": 1})
    assert same.aggregator.rule_options == {"b": 1}
    with pytest.raises(ValueError, match=r"option 'b' given twice: b=2 and rule_options\['b'\]=1"):
        module.TrimmedMean(b=2, rule_options={"b": 1})
    geo = module.GeometricMedian(num_byzantine=1, rule_options={"eps": 1e-6})
    assert geo.aggregator.rule_options == {"eps": 1e-6}  # the rule's own defaults for the rest


def test_only_what_the_user_set_reaches_the_rule() -> None:
    assert strategy.Bulyan(num_byzantine=1).aggregator.rule_options == {}
    assert strategy.MultiKrum(num_byzantine=1, m=3).aggregator.rule_options == {"m": 3}
    clipped = strategy.CenteredClipping(num_byzantine=1, tau=10.0)
    assert clipped.aggregator.rule_options == {"tau": 10.0}
    assert strategy.DnC(num_byzantine=1).aggregator.rule_options == {}  # seed 0 in the engine


@pytest.mark.parametrize("module", [strategy, legacy], ids=IDS)
def test_flowers_keyword_names_mean_the_same(module) -> None:
    assert module.Krum(num_malicious_nodes=2).num_byzantine == 2  # Flower's Krum, Bulyan
    chosen = module.MultiKrum(num_malicious_nodes=1, num_nodes_to_select=3)
    assert chosen.num_byzantine == 1 and chosen.aggregator.rule_options == {"m": 3}
    with pytest.raises(ValueError, match="name the same f"):
        module.Median(num_byzantine=1, num_malicious_nodes=2)
    with pytest.raises(ValueError, match="give one"):
        module.MultiKrum(m=2, num_nodes_to_select=3)
