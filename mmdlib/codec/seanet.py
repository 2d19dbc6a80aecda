"""SEANet-style convolutional encoder and decoder.

The encoder maps audio `b c n` to latents `b d t` with t = n / hop, hop = prod(ratios); the
decoder mirrors it back. Each down-sampling block is a few dilated residual units followed by a
strided convolution that doubles the channels; the decoder uses transposed convolutions.
Convolutions are non-causal and "same"-padded, so n must be a multiple of hop (the codec pads).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn


@dataclass
class SEANetConfig:
    channels: int = 1            # audio channels (mono)
    dim: int = 64                # latent dimension d
    n_filters: int = 16          # channels of the first conv; doubled at each down-sampling
    ratios: tuple[int, ...] = (8, 5, 4, 2)  # encoder strides, first applied first
    n_residual_layers: int = 1   # residual units per block (dilations 1, 3, 9, ...)
    kernel_size: int = 7
    residual_kernel_size: int = 3
    last_kernel_size: int = 7
    lstm: int = 0                # LSTM layers on the latents (0: none)

    @property
    def hop_length(self) -> int:
        return math.prod(self.ratios)


class _Conv(nn.Conv1d):
    """Conv1d "same"-padded (asymmetrically if needed): n frames in, n / stride frames out."""

    def forward(self, x):
        total = (self.kernel_size[0] - 1) * self.dilation[0] - (self.stride[0] - 1)
        x = nn.functional.pad(x, (total // 2, total - total // 2))
        return super().forward(x)


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1, dilation: int = 1) -> nn.Conv1d:
    return _Conv(c_in, c_out, kernel, stride=stride, dilation=dilation)


class _Upsample(nn.Module):
    """Transposed conv (kernel 2r, stride r) trimmed to exactly t * r samples."""

    def __init__(self, c_in: int, c_out: int, ratio: int):
        super().__init__()
        self.ratio = ratio
        self.conv = nn.ConvTranspose1d(c_in, c_out, 2 * ratio, stride=ratio)

    def forward(self, x):  # b c t -> b c (t r)
        y = self.conv(x)
        left = self.ratio // 2
        return y[..., left : left + x.shape[-1] * self.ratio]


class ResidualUnit(nn.Module):
    def __init__(self, channels: int, kernel: int, dilation: int):
        super().__init__()
        hidden = channels // 2
        self.block = nn.Sequential(
            nn.ELU(), _conv(channels, hidden, kernel, dilation=dilation),
            nn.ELU(), _conv(hidden, channels, 1),
        )

    def forward(self, x):
        return x + self.block(x)


class LSTMBlock(nn.Module):
    """Residual LSTM over time: `b d t -> b d t`."""

    def __init__(self, dim: int, layers: int):
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, layers, batch_first=True)

    def forward(self, x):
        y, _ = self.lstm(x.transpose(1, 2))
        return x + y.transpose(1, 2)


def _residual_units(channels: int, cfg: SEANetConfig) -> list[nn.Module]:
    return [ResidualUnit(channels, cfg.residual_kernel_size, 3**j) for j in range(cfg.n_residual_layers)]


class Encoder(nn.Module):
    """`b c n -> b d t`."""

    def __init__(self, cfg: SEANetConfig):
        super().__init__()
        ch = cfg.n_filters
        layers: list[nn.Module] = [_conv(cfg.channels, ch, cfg.kernel_size)]
        for r in cfg.ratios:
            layers += _residual_units(ch, cfg)
            layers += [nn.ELU(), _conv(ch, 2 * ch, 2 * r, stride=r)]
            ch *= 2
        if cfg.lstm:
            layers.append(LSTMBlock(ch, cfg.lstm))
        layers += [nn.ELU(), _conv(ch, cfg.dim, cfg.last_kernel_size)]
        self.net = nn.Sequential(*layers)

    def forward(self, wav):
        return self.net(wav)


class Decoder(nn.Module):
    """`b d t -> b c n`, the mirror of the encoder."""

    def __init__(self, cfg: SEANetConfig):
        super().__init__()
        ch = cfg.n_filters * 2 ** len(cfg.ratios)
        layers: list[nn.Module] = [_conv(cfg.dim, ch, cfg.kernel_size)]
        if cfg.lstm:
            layers.append(LSTMBlock(ch, cfg.lstm))
        for r in reversed(cfg.ratios):
            layers += [nn.ELU(), _Upsample(ch, ch // 2, r)]
            ch //= 2
            layers += _residual_units(ch, cfg)
        layers += [nn.ELU(), _conv(ch, cfg.channels, cfg.last_kernel_size)]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z)
