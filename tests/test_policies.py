"""Budget splitting of each policy (pure Python: no model)."""

import numpy as np
import pytest

from pyuncomp.policies import LayerInfo, PyramidKV, SnapKV, UNComp, entropy_stages, fit_budgets, make_policy


def test_equal_weights_give_equal_budgets_with_the_rounded_mean():
    budgets = fit_budgets([np.ones(3)] * 30, 65.4, 8, 2000)
    assert all(list(b) == [65, 65, 65] for b in budgets)


@pytest.mark.parametrize("mean, low, high", [(100.0, 8, 2000), (40.0, 36, 1000), (700.0, 8, 800)])
def test_budgets_keep_the_mean_and_the_bounds(mean, low, high):
    weights = [np.array([5.0, 1.0, 3.0]) * (30 - i) for i in range(30)]
    flat = np.concatenate(fit_budgets(weights, mean, low, high))
    assert flat.sum() == round(mean) * flat.size
    assert flat.min() >= low and flat.max() <= high
    # proportional where no bound is hit: a larger weight never gets fewer tokens
    w = np.concatenate(weights)
    order = np.argsort(w, kind="stable")
    assert np.all(np.diff(flat[order]) >= -1)


def test_a_mean_below_the_floor_gives_everyone_the_floor():
    flat = np.concatenate(fit_budgets([np.array([1.0, 2.0])] * 4, 3.0, 8, 100))
    assert list(flat) == [8] * 8


def test_bad_weights_are_refused():
    with pytest.raises(ValueError, match="positive"):
        fit_budgets([np.array([1.0, 0.0])], 10, 1, 100)


def test_pyramid_falls_with_depth_and_keeps_the_mean():
    layers = [LayerInfo(il=i, n_head_kv=3) for i in range(30)]
    weights = PyramidKV().weights(layers)
    first = [w[0] for w in weights]
    assert all(a > b for a, b in zip(first, first[1:]))
    assert np.mean(first) == pytest.approx(1.0)
    assert all(len(set(w)) == 1 for w in weights)  # heads of a layer share equally


def test_entropy_stages_cut_at_the_largest_jumps():
    h = np.array([0.5, 0.51, 0.52, 0.70, 0.71, 0.40, 0.41])
    assert list(entropy_stages(h, 3)) == [0, 0, 0, 1, 1, 2, 2]
    assert list(entropy_stages(h, 1)) == [0] * 7


def test_heads_holding_less_than_their_share_hand_the_rest_to_the_others():
    # after an earlier compression a head may hold fewer tokens than its new share: it keeps what it
    # holds, and the mean is still met by the heads that hold more
    held = [np.array([10, 100, 100]), np.array([100, 100, 100])]
    budgets = fit_budgets([np.ones(3), np.ones(3)], 50, 8, held)
    assert budgets[0][0] == 10
    assert sum(b.sum() for b in budgets) == 300
    assert all((b <= h).all() for b, h in zip(budgets, held))
    assert sorted(np.concatenate(budgets)[1:]) == [58] * 5


def test_uncomp_shares_heads_by_entropy_and_layers_by_stage():
    rng = np.random.default_rng(0)
    entropy = [rng.uniform(0.5, 0.8, 4) for _ in range(12)]
    layers = [LayerInfo(il=i, n_head_kv=4, entropy=e) for i, e in enumerate(entropy)]
    policy = UNComp(n_head_groups=2)
    weights = policy.weights(layers)
    for w, e in zip(weights, entropy):
        favoured = np.argsort(e)[:2]  # the two lowest-entropy key heads
        assert set(np.flatnonzero(w == w.max())) == set(favoured)
        assert w.max() / w.min() == pytest.approx(policy.head_spread)
    stage = entropy_stages(np.array([e.mean() for e in entropy]), policy.n_stages)
    means = [w.mean() for w in weights]
    for s in set(stage):
        assert len({round(m, 9) for m, st in zip(means, stage) if st == s}) == 1
    high_first = UNComp(favour_low_entropy=False).weights(layers)
    assert all(w[np.argmax(e)] == w.max() and w[np.argmin(e)] == w.min() for w, e in zip(high_first, entropy))


def test_uncomp_can_order_the_layer_pyramid_by_entropy_instead_of_depth():
    # three clear stages: layers 0-3 high entropy, 4-7 lowest, 8-11 in between
    levels = [0.8] * 4 + [0.6] * 4 + [0.7] * 4
    layers = [LayerInfo(il=i, n_head_kv=2, entropy=np.array([e, e + 0.01])) for i, e in enumerate(levels)]
    by_depth = [w.mean() for w in UNComp(n_stages=3).weights(layers)]
    by_entropy = [w.mean() for w in UNComp(n_stages=3, layer_order="entropy").weights(layers)]
    assert by_depth[0] > by_depth[4] > by_depth[8]
    assert by_entropy[4] > by_entropy[8] > by_entropy[0]
    assert np.mean(by_entropy) == pytest.approx(1.0)
    assert sorted(set(np.round(by_entropy, 9))) == sorted(set(np.round(by_depth, 9)))  # the same shares, reordered
    with pytest.raises(ValueError, match="layer_order"):
        UNComp(layer_order="width")


def test_more_head_groups_spread_linearly():
    shares = UNComp(n_head_groups=4).head_shares(np.array([0.4, 0.1, 0.3, 0.2]))
    assert list(np.argsort(-shares)) == [1, 3, 2, 0]
    assert shares.mean() == pytest.approx(1.0)


def test_policies_by_name():
    assert isinstance(make_policy("snapkv"), SnapKV)
    assert make_policy("uncomp", n_head_groups=3).n_head_groups == 3
    assert make_policy("streamingllm").scoring == "recency"
    with pytest.raises(ValueError, match="no compression policy"):
        make_policy("full")
