"""Codec training losses: reconstruction, adversarial, and the gradient balancer.

Audio is `b c n` (c = 1 channel, n samples). Every loss returns a scalar averaged over the batch.

- `l1_wave`: L1 between waveforms.
- `MultiScaleMelLoss`: L1 on mel magnitudes + L2 on log-mels, over several STFT window sizes.
- `MultiResolutionSTFTLoss`: spectral convergence + L1 on log magnitudes of linear-frequency STFTs,
  which see what a mel scale blurs (e.g. partials between harmonics at high frequencies).
- `hinge_d_loss`, `hinge_g_loss`, `feature_matching_loss`: adversarial terms for a discriminator
  returning one logit map and one list of feature maps per sub-discriminator.
- `LossBalancer`: combines the generator losses either as a plain weighted sum, or by rescaling
  each loss's gradient w.r.t. the decoded waveform so that its norm is proportional to its weight.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn


def _check_pair(x_hat: Tensor, x: Tensor, name: str) -> None:
    if x_hat.shape != x.shape:
        raise ValueError(f"{name}: x_hat has shape {tuple(x_hat.shape)} but x has {tuple(x.shape)}")
    if x.dim() != 3:
        raise ValueError(f"{name}: expected audio [b, c, n], got shape {tuple(x.shape)}")


def l1_wave(x_hat: Tensor, x: Tensor) -> Tensor:
    """Mean absolute error between waveforms `b c n` -> scalar."""
    _check_pair(x_hat, x, "l1_wave")
    return (x_hat - x).abs().mean()


# ----------------------------------------------------------------------------------------------
# Multi-scale mel


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int) -> Tensor:
    """Triangular (HTK) mel filterbank [n_fft // 2 + 1, m] with m <= n_mels.

    With a small n_fft the STFT bins are coarser than the low mel bands and some triangles would
    contain no bin at all (an all-zero filter, which torchaudio warns about). We lower the number
    of bands until every filter covers at least one bin, so m may be smaller than n_mels.
    """
    n_freqs = n_fft // 2 + 1
    for m in range(min(n_mels, n_freqs), 0, -1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fb = torchaudio.functional.melscale_fbanks(
                n_freqs, f_min=0.0, f_max=sample_rate / 2, n_mels=m,
                sample_rate=sample_rate, norm=None, mel_scale="htk",
            )
        if bool((fb.max(dim=0).values > 0).all()):
            return fb
    raise ValueError(f"mel_filterbank: no usable mel band for n_fft={n_fft}")


class MultiScaleMelLoss(nn.Module):
    """Multi-scale mel reconstruction loss.

    For each window size w in `n_ffts` (hop w // 4, Hann window), with M_w(x) = mel(|STFT_w(x)|):

        loss_w = l1_weight  * mean |M_w(x_hat) - M_w(x)|
               + log_weight * mean (log(M_w(x_hat) + eps) - log(M_w(x) + eps))^2

    and the loss is the mean of loss_w over the scales ("normalised per scale": every term is a
    mean over its own elements, so scales with more bins/frames do not dominate). The L1 term is
    level dependent (loud parts matter more), the log term is not (quiet details matter too).

    The default windows 2^6..2^11 span ~4 ms to ~128 ms at 16 kHz. Filterbanks and windows are
    buffers computed once; `n_mels` is lowered per scale where needed (see `mel_filterbank`).
    The gradient is finite everywhere, but zero at an exactly silent x_hat (|z| at z = 0).
    """

    def __init__(
        self,
        sample_rate: int,
        n_ffts: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048),
        n_mels: int = 64,
        l1_weight: float = 1.0,
        log_weight: float = 1.0,
        eps: float = 1e-5,
    ):
        super().__init__()
        if sample_rate <= 0:
            raise ValueError(f"MultiScaleMelLoss: sample_rate must be positive, got {sample_rate}")
        if not n_ffts or any(w < 4 for w in n_ffts):
            raise ValueError(f"MultiScaleMelLoss: n_ffts must be a non-empty tuple of ints >= 4, got {n_ffts}")
        self.sample_rate = sample_rate
        self.n_ffts = tuple(int(w) for w in n_ffts)
        self.l1_weight, self.log_weight, self.eps = l1_weight, log_weight, eps
        for w in self.n_ffts:
            self.register_buffer(f"window_{w}", torch.hann_window(w), persistent=False)
            self.register_buffer(f"fbank_{w}", mel_filterbank(w, n_mels, sample_rate), persistent=False)

    def mels(self, x: Tensor) -> list[Tensor]:
        """Mel magnitude spectrograms of `b c n` audio, one per scale: [(b c), m_w, frames_w]."""
        if x.dim() != 3:
            raise ValueError(f"MultiScaleMelLoss: expected audio [b, c, n], got shape {tuple(x.shape)}")
        x = x.reshape(-1, x.shape[-1])  # (b c) n
        out = []
        for w in self.n_ffts:
            spec = torch.stft(
                x, n_fft=w, hop_length=w // 4, win_length=w, window=getattr(self, f"window_{w}"),
                center=True, pad_mode="reflect" if x.shape[-1] > w // 2 else "constant",
                return_complex=True,
            ).abs()  # (b c) f frames
            fb = getattr(self, f"fbank_{w}")  # f m
            out.append(torch.einsum("bft,fm->bmt", spec, fb))
        return out

    def forward(self, x_hat: Tensor, x: Tensor) -> Tensor:
        """x_hat, x: `b c n` -> scalar loss."""
        _check_pair(x_hat, x, "MultiScaleMelLoss")
        total = x.new_zeros(())
        for m_hat, m in zip(self.mels(x_hat), self.mels(x)):
            l1 = (m_hat - m).abs().mean()
            log = (torch.log(m_hat + self.eps) - torch.log(m + self.eps)).pow(2).mean()
            total = total + self.l1_weight * l1 + self.log_weight * log
        return total / len(self.n_ffts)


class MultiResolutionSTFTLoss(nn.Module):
    """Linear-frequency STFT magnitude loss over several resolutions.

    For each window w in `n_ffts` (hop w // 4, Hann), with S = |STFT_w(x)|, Ŝ = |STFT_w(x_hat)|:

        loss_w = ||Ŝ - S||_F / ||S||_F  +  mean |log(Ŝ + eps) - log(S + eps)|

    (spectral convergence, level independent, and log-magnitude L1), averaged over the scales.
    A mel scale merges the bins between high harmonics, so a decoder can fill them with buzz
    at no mel cost; these bins keep their own term here.
    """

    def __init__(self, n_ffts: tuple[int, ...] = (256, 512, 1024, 2048), eps: float = 1e-5):
        super().__init__()
        if not n_ffts or any(w < 16 for w in n_ffts):
            raise ValueError(f"MultiResolutionSTFTLoss: n_ffts must be ints >= 16, got {n_ffts}")
        self.n_ffts, self.eps = tuple(int(w) for w in n_ffts), eps
        for w in self.n_ffts:
            self.register_buffer(f"window_{w}", torch.hann_window(w), persistent=False)

    def forward(self, x_hat: Tensor, x: Tensor) -> Tensor:
        _check_pair(x_hat, x, "MultiResolutionSTFTLoss")
        total = x.new_zeros(())
        for w in self.n_ffts:
            kw = dict(n_fft=w, hop_length=w // 4, window=getattr(self, f"window_{w}"), return_complex=True)
            s_hat = torch.stft(x_hat.reshape(-1, x.shape[-1]), **kw).abs()
            s = torch.stft(x.reshape(-1, x.shape[-1]), **kw).abs()
            sc = torch.linalg.norm(s_hat - s) / torch.linalg.norm(s).clamp_min(self.eps)
            total = total + sc + (torch.log(s_hat + self.eps) - torch.log(s + self.eps)).abs().mean()
        return total / len(self.n_ffts)


# ----------------------------------------------------------------------------------------------
# Adversarial
#
# A discriminator returns `logits: list[Tensor]` (one map per sub-discriminator) and
# `features: list[list[Tensor]]` (per sub-discriminator, its hidden activations). Each loss is a
# mean over elements of each map, then a mean over sub-discriminators.


def _check_lists(a: list, b: list, name: str) -> None:
    if len(a) == 0 or len(a) != len(b):
        raise ValueError(f"{name}: expected two non-empty lists of equal length, got {len(a)} and {len(b)}")


def hinge_d_loss(real_logits: list[Tensor], fake_logits: list[Tensor]) -> Tensor:
    """Discriminator hinge loss: mean_k [ mean relu(1 - D_k(x)) + mean relu(1 + D_k(x_hat)) ].

    Pass fake logits computed on a detached x_hat so the generator gets no gradient here.
    """
    _check_lists(real_logits, fake_logits, "hinge_d_loss")
    terms = [F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real_logits, fake_logits)]
    return torch.stack(terms).mean()


def hinge_g_loss(fake_logits: list[Tensor]) -> Tensor:
    """Generator hinge loss: mean_k mean relu(1 - D_k(x_hat))."""
    if len(fake_logits) == 0:
        raise ValueError("hinge_g_loss: fake_logits is empty")
    return torch.stack([F.relu(1 - f).mean() for f in fake_logits]).mean()


def feature_matching_loss(
    real_feats: list[list[Tensor]], fake_feats: list[list[Tensor]], eps: float = 1e-8
) -> Tensor:
    """Relative L1 between discriminator features of real and generated audio.

    For sub-discriminator k and layer l:  mean |f_real - f_fake| / (mean |f_real| + eps),
    with f_real detached (a target); the result is the mean over all (k, l) pairs, so it is
    about 1 when the generated features are unrelated to the real ones and 0 when they match.
    """
    _check_lists(real_feats, fake_feats, "feature_matching_loss")
    terms = []
    for k, (rs, fs) in enumerate(zip(real_feats, fake_feats)):
        _check_lists(rs, fs, f"feature_matching_loss (discriminator {k})")
        for r, f in zip(rs, fs):
            r = r.detach()
            terms.append((r - f).abs().mean() / (r.abs().mean() + eps))
    return torch.stack(terms).mean()


# ----------------------------------------------------------------------------------------------
# Loss balancer


class LossBalancer:
    """Backpropagates a dict of generator losses that all depend on one `output` (x_hat).

    balance=False ("plain"): `sum_i w_i * loss_i` then `.backward()`. Note this also fills the
    discriminator's .grad through adversarial losses; zero them before the discriminator step.

    balance=True: each loss's gradient is taken w.r.t. `output` only, g_i = d loss_i / d output,
    and rescaled so that its norm is a fixed share of `total_norm`:

        G = sum_i  total_norm * (w_i / sum_j w_j) * g_i / ema(||g_i||)

    then `output.backward(G)` carries G into the model that produced `output`. ||g_i|| is the
    per-item L2 norm averaged over the batch (dim 0), and ema is a bias-corrected exponential
    moving average (decay `ema_decay`; its first value is the first norm itself). So the weights
    say how much of the update each loss gets, whatever the losses' natural scales, and
    multiplying a loss by a constant changes nothing. The discriminator gets no gradient.

    Every loss passed must depend on `output`; losses that do not (quantizer commitment, the
    MMD term, which the paper applies outside the balancer) are backpropagated separately. The
    weights are normalised over the losses present in the call, so a subset may be passed.
    """

    def __init__(
        self,
        weights: dict[str, float],
        ema_decay: float = 0.999,
        total_norm: float = 1.0,
        balance: bool = True,
        eps: float = 1e-12,
    ):
        if not weights or any(w < 0 for w in weights.values()):
            raise ValueError(f"LossBalancer: weights must be a non-empty dict of non-negative floats, got {weights}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"LossBalancer: ema_decay must be in [0, 1), got {ema_decay}")
        self.weights = dict(weights)
        self.ema_decay, self.total_norm, self.balance, self.eps = ema_decay, total_norm, balance, eps
        self._norm_sum: dict[str, float] = {}  # decayed sum of norms
        self._count: dict[str, float] = {}  # decayed count, for bias correction

    def _ema(self, name: str, value: float) -> float:
        d = self.ema_decay
        self._norm_sum[name] = d * self._norm_sum.get(name, 0.0) + value
        self._count[name] = d * self._count.get(name, 0.0) + 1.0
        return self._norm_sum[name] / self._count[name]

    def state_dict(self) -> dict:
        return {"norm_sum": dict(self._norm_sum), "count": dict(self._count)}

    def load_state_dict(self, state: dict) -> None:
        self._norm_sum, self._count = dict(state["norm_sum"]), dict(state["count"])

    def _check(self, losses: dict[str, Tensor]) -> dict[str, float]:
        if not losses:
            raise ValueError("LossBalancer: losses is empty")
        unknown = sorted(set(losses) - set(self.weights))
        if unknown:
            raise ValueError(f"LossBalancer: losses {unknown} have no weight (known: {sorted(self.weights)})")
        for k, v in losses.items():
            if not torch.isfinite(v).all():
                raise ValueError(f"LossBalancer: loss '{k}' is not finite ({float(v.detach())})")
        return {f"loss/{k}": float(v.detach()) for k, v in losses.items()}

    def combine(self, losses: dict[str, Tensor], output: Tensor) -> tuple[Tensor, dict[str, float]]:
        """The balanced gradient G w.r.t. `output` (see the class doc) and stats, no backward.

        Lets the caller run one backward for G and the terms outside the balancer together:
        `torch.autograd.backward([output, other_loss], [G, torch.ones_like(other_loss)])`."""
        stats = self._check(losses)
        w_sum = sum(self.weights[k] for k in losses)
        if w_sum <= 0:
            raise ValueError(f"LossBalancer: weights of {sorted(losses)} sum to zero")
        combined = torch.zeros_like(output)
        for k, v in losses.items():
            (g,) = torch.autograd.grad(v, output, retain_graph=True, allow_unused=True)
            if g is None:
                raise ValueError(f"LossBalancer: loss '{k}' does not depend on output")
            norm = float(g.reshape(g.shape[0], -1).norm(dim=1).mean())
            ema = self._ema(k, norm)
            combined += (self.total_norm * self.weights[k] / w_sum / (ema + self.eps)) * g
            stats[f"grad_norm/{k}"], stats[f"ema_norm/{k}"] = norm, ema
        return combined, stats

    def backward(self, losses: dict[str, Tensor], output: Tensor) -> dict[str, float]:
        """Backpropagate `losses` into the graph of `output`.

        Returns stats: `loss/<name>` (value) for every loss, plus in balanced mode
        `grad_norm/<name>` (this step's norm) and `ema_norm/<name>`.
        """
        if not self.balance:
            stats = self._check(losses)
            sum(self.weights[k] * v for k, v in losses.items()).backward()
            return stats
        combined, stats = self.combine(losses, output)
        output.backward(combined)
        return stats
