"""The depth head: NLL accounting, ground-truth recovery, and cached generation against the full forward."""
import math

import pytest
import torch

from mmdlib.lm.depth import (
    DepthConfig,
    DepthHead,
    copy_gap_bits,
    copy_tokens,
    factorization_gap,
    generate_depth,
    per_item_bits,
    trunk_features,
)
from mmdlib.lm.model import TokenLM, lm_config, nll_sum

V, K = 16, 3
FAST = DepthConfig(hidden=64, n_layers=1, lr=1e-2, batch_size=32, max_epochs=25, patience=3)


def tiny_lm(pattern: str) -> TokenLM:
    torch.manual_seed(0)
    return TokenLM(lm_config("tiny", pattern=pattern, n_q=K, codebook_size=V, dim=32, n_layers=1, n_heads=2)).eval()


@pytest.mark.parametrize("pattern", ["parallel", "delay"])
def test_zero_head_counts_each_code_once(pattern):
    """An untrained head (zero output layer) scores exactly as the LM's own evaluation."""
    model = tiny_lm(pattern)
    codes = copy_tokens(6, K, 40, V, 0.5, seed=1)
    head = DepthHead(model, FAST)
    bits = per_item_bits(model, head, trunk_features(model, codes, window=20))
    nats, frames = nll_sum(model, codes, window=20)
    assert frames == 12 * 20
    assert float(bits.sum()) * 20 * math.log(2) == pytest.approx(nats, rel=1e-5)


def test_copy_gap_bits_analytic():
    assert copy_gap_bits(V, 0.0, K) == pytest.approx(0.0, abs=1e-12)
    assert copy_gap_bits(V, 1.0, K) == pytest.approx((K - 1) * math.log2(V))


@pytest.mark.parametrize("pattern,align", [("parallel", "none"), ("delay", "delay")])
def test_instrument_recovers_known_dependence(pattern, align):
    """Independent codes: gap ~ 0. Copy dependence inside the pattern's tuple: the analytic gap (15 %)."""
    model = tiny_lm(pattern)
    split = lambda p, seed, n: copy_tokens(n, K, 40, V, p, align, seed)  # noqa: E731
    indep, _ = factorization_gap(model, split(0.0, 1, 160), split(0.0, 2, 40), split(0.0, 3, 40), FAST, 20)
    assert abs(indep["gap_bits"]) < max(0.05, 3 * indep["gap_se"])
    dep, _ = factorization_gap(model, split(0.6, 1, 160), split(0.6, 2, 40), split(0.6, 3, 40), FAST, 20)
    true = copy_gap_bits(V, 0.6, K) * (1 if pattern == "parallel" else 19 / 20)  # delay: a window's last frame has no partner
    assert dep["gap_bits"] == pytest.approx(true, rel=0.15)
    assert dep["depth_bits"] < dep["factorised_bits"] <= dep["lm_bits"] + 0.05


@pytest.mark.parametrize("pattern", ["parallel", "delay"])
def test_cached_generation_equals_full_forward(pattern):
    """Greedy sampling with the KV cache, slot by slot, picks the argmax of the full (uncached)
    forward of trunk + head at every cell of the sequence it produced."""
    model = tiny_lm(pattern)
    head = DepthHead(model, FAST)
    torch.manual_seed(3)
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.5)
    codes = generate_depth(model, head, n_frames=12, batch_size=3, temperature=0.0)
    assert codes.shape == (3, K, 12)
    h, seq, pat = trunk_features(model, codes)
    with torch.no_grad():
        logits = model.logits(h, pat.columns) + head(h, seq)
    assert torch.equal(logits.argmax(-1)[:, pat.valid], seq[:, pat.valid])
