import itertools

import pytest
import torch

from mmdlib.patterns import PATTERNS, delay_offsets, make_pattern

SIZES = list(itertools.product(range(1, 6), [1, 2, 3, 7, 20]))  # (K, T)


def expected_step(name: str, k: int, t: int, K: int, T: int, g: int = 2) -> int:
    """The step at which code (k, t) is predicted, written out per pattern."""
    return {
        "parallel": t,
        "delay": t + k,
        "flatten": t * K + k,
        "coarse_first": t if k == 0 else T + t,
        "grouped_delay": (t + k // g) * min(g, K) + k % g if g <= K else t * K + k,
    }[name]


def expected_n_steps(name: str, K: int, T: int) -> int:
    return {"parallel": T, "delay": T + K - 1, "flatten": K * T, "coarse_first": 2 * T if K > 1 else T,
            "grouped_delay": max(expected_step("grouped_delay", k, T - 1, K, T) for k in range(K)) + 1}[name]


@pytest.mark.parametrize("name", PATTERNS)
def test_round_trip_and_pads(name):
    gen = torch.Generator().manual_seed(0)
    for K, T in SIZES:
        pat = make_pattern(name, K, T)
        codes = torch.randint(0, 50, (3, K, T), generator=gen)
        seq = pat.build(codes, pad=50)
        assert seq.shape == (3, pat.n_slots, pat.n_steps)
        assert torch.equal(pat.revert(seq), codes)
        assert (seq[:, ~pat.valid] == 50).all() and (seq[:, pat.valid] < 50).all()
        assert int(pat.valid.sum()) == K * T  # every code in exactly one cell


@pytest.mark.parametrize("name", PATTERNS)
def test_step_of_each_code_and_step_counts(name):
    for K, T in SIZES:
        pat = make_pattern(name, K, T)
        assert pat.n_steps == expected_n_steps(name, K, T), (K, T)
        want = torch.tensor([[expected_step(name, k, t, K, T) for t in range(T)] for k in range(K)])
        assert torch.equal(pat.step_of(), want), (K, T)
        # the `steps` list agrees: each (k, t) listed once, at its step
        seen = [(k, t, s) for s, step in enumerate(pat.steps) for k, t in step]
        assert sorted(seen) == sorted((k, t, int(want[k, t])) for k in range(K) for t in range(T))
        assert all(pat.steps)  # no step without a code


def test_exact_counts():
    K, T = 4, 250
    assert make_pattern("parallel", K, T).n_steps == T
    assert make_pattern("delay", K, T).n_steps == T + K - 1
    assert make_pattern("flatten", K, T).n_steps == K * T
    assert make_pattern("coarse_first", K, T).n_steps == 2 * T
    assert make_pattern("grouped_delay", K, T, group_size=2).n_steps == 2 * (T + 1)


@pytest.mark.parametrize("name", PATTERNS)
def test_causal_order(name):
    """What the model has generated before predicting (k, t), i.e. all codes at earlier steps,
    always includes every earlier frame of the same codebook and, for k > 0, the coarser
    codebooks of the same frame unless predicted jointly (same step) with them."""
    for K, T in SIZES:
        step = make_pattern(name, K, T).step_of()
        assert (step[:, 1:] > step[:, :-1]).all()          # a stream is generated in time order
        assert (step[1:] >= step[:-1]).all()               # coarse codebooks never after finer ones
    # exact context of the delay pattern: (k, t) sees (k', t') iff t' + k' < t + k
    K, T = 4, 9
    step = make_pattern("delay", K, T).step_of()
    for k, t in itertools.product(range(K), range(T)):
        seen = {(k2, t2) for k2, t2 in itertools.product(range(K), range(T)) if step[k2, t2] < step[k, t]}
        assert seen == {(k2, t2) for k2, t2 in itertools.product(range(K), range(T)) if t2 + k2 < t + k}
    # flatten is the joint model: (k, t) sees exactly all codes before it in frame-major order
    step = make_pattern("flatten", K, T).step_of()
    order = sorted(itertools.product(range(T), range(K)))
    assert [int(step[k, t]) for t, k in order] == list(range(K * T))


def test_delay_uses_delay_offsets_and_grouped_delay_limits():
    for K, T in SIZES:
        delay = make_pattern("delay", K, T)
        offs = torch.tensor(delay_offsets(K))[:, None]
        assert torch.equal(delay.step_of(), torch.arange(T) + offs)
        # group_size 1 is delay, group_size K is flatten
        assert torch.equal(make_pattern("grouped_delay", K, T, group_size=1).step_of(), delay.step_of())
        assert torch.equal(make_pattern("grouped_delay", K, T, group_size=K).step_of(),
                           make_pattern("flatten", K, T).step_of())


def test_bad_arguments():
    with pytest.raises(ValueError, match="pattern"):
        make_pattern("zigzag", 4, 10)
    with pytest.raises(ValueError, match="n_frames"):
        make_pattern("delay", 4, 0)
    with pytest.raises(ValueError, match="build"):
        make_pattern("delay", 4, 10).build(torch.zeros(1, 3, 10, dtype=torch.long), pad=5)
