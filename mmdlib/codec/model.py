"""The RVQ audio codec: encoder -> residual vector quantizer -> decoder.

Two encoder/decoder pairs (`CodecConfig.arch`): the paper's SEANet (`mmdlib.codec.seanet`, convolutions at
the sample rate) and a frame-rate STFT encoder with an iSTFT decoder (`mmdlib.codec.spectral`, the
`tiny` preset: far less compute per second of audio on a CPU).

Shapes: audio `b c n`, latents `b d t`, codes `b k t`, residual streams `b k d t`
(t = n / hop_length frames at `frame_rate` Hz).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mmdlib.codec.quantize import QuantizerConfig, ResidualVQ
from mmdlib.codec.seanet import Decoder, Encoder, SEANetConfig
from mmdlib.codec.spectral import SpectralConfig, SpectralDecoder, SpectralEncoder

ARCHS = ("seanet", "spectral")


@dataclass
class CodecConfig:
    sample_rate: int = 16000
    seanet: SEANetConfig = field(default_factory=SEANetConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    arch: str = "seanet"            # which encoder/decoder: "seanet" (uses `seanet`) or "spectral"
    spectral: SpectralConfig = field(default_factory=SpectralConfig)

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"CodecConfig.arch={self.arch!r}: choose one of {ARCHS}")
        if self.net.dim != self.quantizer.dim:
            raise ValueError(f"{self.arch}.dim={self.net.dim} must equal quantizer.dim={self.quantizer.dim}")

    @property
    def net(self) -> SEANetConfig | SpectralConfig:
        """The config of the encoder/decoder pair in use."""
        return self.seanet if self.arch == "seanet" else self.spectral

    @property
    def hop_length(self) -> int:
        return self.net.hop_length

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CodecConfig:
        seanet = dict(d["seanet"], ratios=tuple(d["seanet"]["ratios"]))
        spectral = d.get("spectral", {})
        spectral = {k: tuple(v) if isinstance(v, list) else v for k, v in spectral.items()}
        return cls(d["sample_rate"], SEANetConfig(**seanet), QuantizerConfig(**d["quantizer"]),
                   d.get("arch", "seanet"), SpectralConfig(**spectral))


CODEC_PRESETS: dict[str, CodecConfig] = {
    # 16 kHz, 50 Hz latent frames, 4 x 256 codes (1.6 kbps): a frame-rate MLP encoder and an iSTFT decoder
    # (mmdlib.codec.spectral) that predicts the magnitude and the phase advance of every bin of a 640-point STFT
    # hopped by 320 (one frame per latent frame) and locks the bins of each partial: it carries the notes.
    # 8 x 50 = 400 vectors a batch for 256 codes: a code is dead below 0.5 uses (EMA)
    "tiny": CodecConfig(
        sample_rate=16000, arch="spectral", spectral=SpectralConfig(dim=64, hop=320, down=1, phase="advance"),
        quantizer=QuantizerConfig(dim=64, n_q=4, codebook_size=256, threshold_ema_dead_code=0.5),
    ),
    # The former tiny codec: the same MLPs, 2 STFT frames of hop 160 a latent frame and a learned phase. It
    # keeps the rhythm and the envelope, not the notes (README, "The tiny codec"); kept to compare against.
    "tiny_learned": CodecConfig(
        sample_rate=16000, arch="spectral", spectral=SpectralConfig(dim=64),
        quantizer=QuantizerConfig(dim=64, n_q=4, codebook_size=256, threshold_ema_dead_code=0.5),
    ),
    # The tiny codec before that: a small SEANet (hop 320). Its reconstructions are a tonal smear at this
    # budget (README, "The tiny codec"); kept to compare against.
    "tiny_seanet": CodecConfig(
        sample_rate=16000,
        seanet=SEANetConfig(dim=64, n_filters=16, ratios=(8, 5, 4, 2), n_residual_layers=1, lstm=0),
        quantizer=QuantizerConfig(dim=64, n_q=4, codebook_size=256, threshold_ema_dead_code=0.5),
    ),
    # The paper's codec: 32 kHz, ratios 8,5,4,4 (hop 640 -> 50 Hz), 64 filters, 4 x 2048 codes.
    "paper": CodecConfig(
        sample_rate=32000,
        seanet=SEANetConfig(dim=128, n_filters=64, ratios=(8, 5, 4, 4), n_residual_layers=1, lstm=2),
        quantizer=QuantizerConfig(dim=128, n_q=4, codebook_size=2048, quantizer_dropout=False),
    ),
}


def codec_preset(name: str) -> CodecConfig:
    if name not in CODEC_PRESETS:
        raise ValueError(f"unknown codec preset {name!r}; choose one of {sorted(CODEC_PRESETS)}")
    return dataclasses.replace(CODEC_PRESETS[name])


@dataclass
class CodecOutput:
    wav: torch.Tensor          # b c n, the reconstruction
    codes: torch.Tensor        # b k t
    streams: torch.Tensor      # b k d t, residual after each stage (quantized part detached)
    commit_loss: torch.Tensor  # scalar
    logmag: torch.Tensor | None = None   # spectral decoder: its predicted log-magnitude `b c f s`
    advance: torch.Tensor | None = None  # ... and phase advance `b c f s` (phase="advance"; spectral_losses)


def codec_file(path: str | Path) -> Path:
    """A codec file given as itself or as the run dir train_codec wrote (which holds codec.pt)."""
    p = Path(path)
    p = p / "codec.pt" if p.is_dir() else p
    if not p.is_file():
        raise FileNotFoundError(f"{path}: no codec there (give a codec.pt or the run dir `mmdlib train-codec` wrote)")
    return p


class Codec(nn.Module):
    def __init__(self, cfg: CodecConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.arch == "seanet":
            self.encoder, self.decoder = Encoder(cfg.seanet), Decoder(cfg.seanet)
        else:
            self.encoder, self.decoder = SpectralEncoder(cfg.spectral), SpectralDecoder(cfg.spectral)
        self.quantizer = ResidualVQ(cfg.quantizer)

    @property
    def hop_length(self) -> int:
        return self.cfg.hop_length

    @property
    def frame_rate(self) -> float:
        return self.cfg.frame_rate

    def _check(self, wav: torch.Tensor) -> torch.Tensor:
        if wav.dim() != 3 or wav.shape[1] != self.cfg.net.channels:
            raise ValueError(f"wav must be [b, {self.cfg.net.channels}, n], got {list(wav.shape)}")
        pad = -wav.shape[-1] % self.hop_length  # right-pad to whole frames
        return F.pad(wav, (0, pad))

    def forward(self, wav: torch.Tensor) -> CodecOutput:
        n = wav.shape[-1]
        z = self.encoder(self._check(wav))
        q = self.quantizer(z)
        if self.cfg.arch == "spectral":
            wav_hat, logmag, advance = self.decoder(q.quantized, return_spectra=True)
        else:
            wav_hat, logmag, advance = self.decoder(q.quantized), None, None
        # float32 audio under autocast
        return CodecOutput(wav_hat[..., :n].float(), q.codes, q.streams, q.commit_loss, logmag, advance)

    def encode_streams(self, wav: torch.Tensor, checkpoint: bool = False, streams: str = "residual") -> torch.Tensor:
        """The streams `b k d t` (`streams`: "residual", "input" or "codeword", see ResidualVQ.forward)
        with gradient to the encoder, quantizer buffers untouched.

        `checkpoint=True` recomputes encoder activations in backward (the macro-batch MMD)."""
        wav = self._check(wav)
        if checkpoint:
            z = torch.utils.checkpoint.checkpoint(self.encoder, wav, use_reentrant=False)
        else:
            z = self.encoder(wav)
        was_training = self.quantizer.training
        self.quantizer.eval()  # no EMA update, no restart: this is a second look at seen data
        try:
            return self.quantizer(z, streams=streams).streams
        finally:
            self.quantizer.train(was_training)

    @torch.no_grad()
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """`b c n -> b k t` (long)."""
        return self.quantizer.encode(self.encoder(self._check(wav)))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """`b k t -> b c (t hop)`."""
        if codes.dim() != 3:
            raise ValueError(f"codes must be [b, k, t], got {list(codes.shape)}")
        return self.decoder(self.quantizer.decode(codes))

    # -- checkpoints that carry their config ---------------------------------------------------
    def save(self, path: str | Path) -> None:
        """{"config": CodecConfig dict, "state": state_dict} at `path` (Codec.load reads it)."""
        torch.save({"config": self.cfg.to_dict(), "state": self.state_dict()}, path)

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> Codec:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"codec checkpoint {path} does not exist")
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
        if not isinstance(ckpt, dict) or not {"config", "state"} <= ckpt.keys():
            raise ValueError(f"{path} is not a codec checkpoint (no 'config' and 'state' entries: Codec.save writes them)")
        model = cls(CodecConfig.from_dict(ckpt["config"]))
        model.load_state_dict(ckpt["state"])
        return model.eval()
