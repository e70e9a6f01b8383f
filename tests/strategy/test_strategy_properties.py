"""Property tests of the engine: whatever f Byzantine rows hold (huge, NaN, inf, anything), the
median and trimmed-mean steps stay inside the honest values, coordinate by coordinate."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from flwr_byz.strategy import RobustAggregator, Submission

D = 6
byzantine_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([3e38, -3e38, 1e6, -1e6]),
)


@settings(max_examples=60, deadline=None)
@given(
    rule=st.sampled_from(["median", "trimmed_mean"]),
    f=st.integers(0, 3),
    extra_honest=st.integers(1, 4),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_coordinatewise_rules_stay_within_the_honest_range(rule, f, extra_honest, seed, data):
    honest_count = f + extra_honest  # honest majority: n = 2f + extra >= 2f + 1
    rng = np.random.default_rng(seed)
    start = {"w": rng.standard_normal(D).astype(np.float32)}
    honest = (rng.standard_normal((honest_count, D)) * 0.1).astype(np.float32)
    byzantine = [data.draw(arrays(np.float32, D, elements=byzantine_values)) for _ in range(f)]
    aggregator = RobustAggregator(rule, f, device="cpu")
    aggregator.set_global(start)
    submissions = [Submission(i + 1, {"w": start["w"] + h}) for i, h in enumerate(honest)]
    submissions += [Submission(100 + j, {"w": b}) for j, b in enumerate(byzantine)]
    out, report = aggregator.aggregate(1, submissions)

    assert not report.kept_model
    assert all(node >= 100 for node, _ in report.excluded)  # only Byzantine rows are excluded
    step = out["w"].astype(np.float64) - start["w"].astype(np.float64)
    honest_deltas = (start["w"] + honest).astype(np.float64) - start["w"].astype(np.float64)
    slack = 1e-5
    assert np.all(step >= honest_deltas.min(axis=0) - slack)
    assert np.all(step <= honest_deltas.max(axis=0) + slack)
