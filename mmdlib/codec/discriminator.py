"""Multi-scale STFT discriminator (MS-STFT).

One small 2-D conv net per STFT resolution. Each sees the complex STFT of the audio as a
2-channel image (real, imag) `b 2 f t`, and is a stack of weight-normed convs with leaky ReLU:

    conv (2 -> filters)                          kernel (9, 3)
    conv (filters -> filters), per dilation d:   kernel (9, 3), stride (2, 1), dilation (1, d)
    conv (filters -> filters)                    kernel (3, 3)
    conv (filters -> 1)                          kernel (3, 3)       -> logits, no activation

Strides halve the frequency axis; dilations grow the receptive field in time. The hidden
activations (after leaky ReLU) are the features used by the feature-matching loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm


@dataclass
class DiscriminatorConfig:
    filters: int = 32
    n_ffts: tuple[int, ...] = (1024, 512, 256)  # one sub-discriminator each; hop = n_fft // 4
    dilations: tuple[int, ...] = (1, 2, 4)  # time dilations of the strided conv blocks
    negative_slope: float = 0.2  # leaky ReLU

    @classmethod
    def tiny(cls) -> DiscriminatorConfig:
        """CPU-sized: 3 scales, 16 filters."""
        return cls(filters=16, n_ffts=(1024, 512, 256))

    @classmethod
    def paper(cls) -> DiscriminatorConfig:
        """EnCodec-sized MS-STFT: 5 scales, 32 filters."""
        return cls(filters=32, n_ffts=(2048, 1024, 512, 256, 128))


def _conv(c_in: int, c_out: int, kernel: tuple[int, int], stride=(1, 1), dilation=(1, 1)) -> nn.Module:
    padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))  # "same" for stride 1
    return weight_norm(nn.Conv2d(c_in, c_out, kernel, stride=stride, dilation=dilation, padding=padding))


class STFTDiscriminator(nn.Module):
    """One resolution: audio `b 1 n` -> (logits `b 1 f' t`, features list of `b filters f_l t`)."""

    def __init__(self, n_fft: int, cfg: DiscriminatorConfig):
        super().__init__()
        self.n_fft, self.hop = n_fft, n_fft // 4
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        c = cfg.filters
        layers = [_conv(2, c, (9, 3))]
        layers += [_conv(c, c, (9, 3), stride=(2, 1), dilation=(1, d)) for d in cfg.dilations]
        layers += [_conv(c, c, (3, 3))]
        self.layers = nn.ModuleList(layers)
        self.out = _conv(c, 1, (3, 3))
        self.act = nn.LeakyReLU(cfg.negative_slope)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        x = x.reshape(-1, x.shape[-1])  # (b c) n, c = 1
        spec = torch.stft(
            x, n_fft=self.n_fft, hop_length=self.hop, window=self.window, center=True,
            pad_mode="reflect" if x.shape[-1] > self.n_fft // 2 else "constant",
            normalized=True, return_complex=True,
        )  # b f t, normalised by 1/sqrt(n_fft) so all scales see similar magnitudes
        h = torch.stack([spec.real, spec.imag], dim=1)  # b 2 f t
        feats = []
        for layer in self.layers:
            h = self.act(layer(h))
            feats.append(h)
        return self.out(h), feats


class MultiScaleSTFTDiscriminator(nn.Module):
    """Audio `b 1 n` -> (logits: one `b 1 f' t` map per scale, features: per scale, a list of maps)."""

    def __init__(self, cfg: DiscriminatorConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or DiscriminatorConfig()
        if cfg.filters < 1 or not cfg.n_ffts or any(w < 8 for w in cfg.n_ffts):
            raise ValueError(f"DiscriminatorConfig: need filters >= 1 and n_ffts >= 8, got {cfg}")
        self.discriminators = nn.ModuleList(STFTDiscriminator(w, cfg) for w in cfg.n_ffts)

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[list[Tensor]]]:
        if x.dim() != 3 or x.shape[1] != 1:
            raise ValueError(f"MultiScaleSTFTDiscriminator: expected mono audio [b, 1, n], got {tuple(x.shape)}")
        logits, features = [], []
        for d in self.discriminators:
            lg, ft = d(x)
            logits.append(lg)
            features.append(ft)
        return logits, features
