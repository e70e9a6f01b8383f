"""Per-rule strategy classes: no silent rule override, options given once, defaults in the rule."""

from __future__ import annotations

import pytest

from flwr_byz import strategy
from flwr_byz.strategy import legacy


@pytest.mark.parametrize("module", [strategy, legacy], ids=["message-api", "legacy"])
def test_a_per_rule_class_refuses_another_rule(module) -> None:
    with pytest.raises(TypeError, match="Median runs 'median'; for 'krum' use Krum"):
        module.Median("krum", num_byzantine=1)
    assert module.Median("median", num_byzantine=1).aggregator.rule.name == "median"


@pytest.mark.parametrize("module", [strategy, legacy], ids=["message-api", "legacy"])
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


@pytest.mark.parametrize("module", [strategy, legacy], ids=["message-api", "legacy"])
def test_flowers_keyword_names_mean_the_same(module) -> None:
    assert module.Krum(num_malicious_nodes=2).num_byzantine == 2  # Flower's Krum, Bulyan
    chosen = module.MultiKrum(num_malicious_nodes=1, num_nodes_to_select=3)
    assert chosen.num_byzantine == 1 and chosen.aggregator.rule_options == {"m": 3}
    with pytest.raises(ValueError, match="name the same f"):
        module.Median(num_byzantine=1, num_malicious_nodes=2)
