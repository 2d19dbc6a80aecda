"""The MMD kernels' saturation check: analytic mean kernel values, raw vs normalised distances."""
import math

import pytest
import torch

from mmdlib.mmd.loss import MMDConfig
from mmdlib.mmd.saturation import kernel_report


def gaussian_streams(k: int, d: int, n: int = 1024, seed: int = 0) -> torch.Tensor:
    """Independent N(0, 1) features as streams `b k d t` (b = 1, t = n frames)."""
    return torch.randn(1, k, d, n, generator=torch.Generator().manual_seed(seed))


def test_mean_kernel_matches_the_gaussian_closed_form():
    """x - y ~ N(0, 2 I_f) for independent standard samples: E exp(-‖x - y‖²/(2a)) = (1 + 2/a)^(-f/2)."""
    f = 2 * 4
    rep = kernel_report(gaussian_streams(2, 4), MMDConfig(align="none", scales=(1.0, 5.0, 20.0)))
    assert rep["features"] == f and rep["samples"] == 1024
    for a, m in zip(rep["scales"], rep["mean_kernel"]):
        assert m == pytest.approx((1 + 2 / a) ** (-f / 2), rel=0.08), a
    assert rep["median_sq_dist"] == pytest.approx(2 * f, rel=0.15)  # median of 2·χ²_8 ≈ 2·7.34
    assert not rep["all_saturated"]


def test_raw_distances_saturate_at_the_papers_width_and_normalised_ones_do_not():
    streams = gaussian_streams(4, 128, n=512)  # K·D = 512 as in the paper's codec
    raw = kernel_report(streams, MMDConfig(align="none"))
    assert raw["all_saturated"] and max(raw["mean_kernel"]) < 1e-3
    assert raw["median_sq_dist"] == pytest.approx(2 * 512, rel=0.05)
    norm = kernel_report(streams, MMDConfig(align="none", normalize_distance=True))
    # distances / f: E k = (1 + 2/(f a))^(-f/2) -> exp(-1/a)
    for a, m in zip(norm["scales"], norm["mean_kernel"]):
        assert m == pytest.approx(math.exp(-1 / a), rel=0.1, abs=1e-4), a
    assert not norm["all_saturated"] and norm["saturated"][0]  # a = 0.1: exp(-10), still saturated


def test_subsampling_is_seeded_and_bounded():
    streams = gaussian_streams(2, 4, n=3000)
    a, b = kernel_report(streams, max_samples=500), kernel_report(streams, max_samples=500)
    assert a == b and a["samples"] == 500
