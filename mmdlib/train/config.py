"""The training configurations and their presets: a codec's (CodecTrainConfig, which holds the codec's
architecture `model`, its `discriminator` and its `mmd` settings as objects) and an LM's (LMTrainConfig).
A preset is a named instance of the tree; `mmdlib.train.overrides.apply_overrides` changes any leaf of it
(`--set steps=600 mmd.align=none model.quantizer.n_q=8`). Kept apart from the loops (mmdlib.train.codec,
mmdlib.train.lm) as HF keeps configuration_*.py apart from modeling_*.py: the pipeline's configuration
(mmdlib.pipeline.params) holds these objects without importing the loops.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

from mmdlib.codec.discriminator import DiscriminatorConfig
from mmdlib.codec.model import CodecConfig, codec_preset
from mmdlib.mmd.loss import MMDConfig
from mmdlib.train.checkpoint import valid_seed


def check_device(device: str, who: str) -> None:
    """'cpu', 'cuda', 'cuda:N' or 'mps' ('cpu:N' too, as torch takes it); whether this machine has it is
    checked when training starts."""
    kind, _, index = device.partition(":") if isinstance(device, str) else ("", "", "")
    if kind not in ("cpu", "cuda", "mps") or (index and not (kind in ("cpu", "cuda") and index.isdigit())):
        raise ValueError(f"{who} device={device!r}: expected 'cpu', 'cuda', 'cuda:N' or 'mps'".lstrip())


@dataclass
class CodecTrainConfig:
    ALIASES: ClassVar[dict[str, str]] = {"mmd_align": "mmd.align"}  # short names of `--set` keys

    model: CodecConfig = field(default_factory=lambda: codec_preset("tiny"))  # the codec's architecture
    data: str = "synthetic"         # "synthetic" or a folder of audio files
    steps: int = 1200
    batch_size: int = 8
    segment_seconds: float = 1.0
    n_train_items: int = 4096       # synthetic clips in the training set (folder: crops per epoch)
    n_valid_items: int = 32
    lr: float = 1e-3
    lr_final: float = 1.0           # cosine decay from lr to lr·lr_final over `steps` (1.0: constant lr;
                                    # a run extended on resume follows the new schedule from there)
    betas: tuple[float, float] = (0.5, 0.9)
    # loss weights (plain weights, or targets of the balancer when `balancer=True`). The tiny
    # presets keep the commitment small: with w_commit=1 the SEANet encoder collapses onto a few
    # codes for hundreds of steps.
    w_l1: float = 1.0
    w_mel: float = 0.05
    w_adv: float = 4.0
    w_feat: float = 4.0
    w_commit: float = 0.01
    w_stft: float = 0.0             # multi-resolution linear STFT loss (0: off)
    w_spec: float = 0.0             # spectral codec: L1 between its predicted log-magnitude and the
                                    # input's (the decoder's own STFT; outside the balancer)
    w_advance: float = 0.0          # spectral codec with phase="advance": its predicted phase advance against
                                    # the input's (mmdlib.codec.spectral.spectral_losses)
    discriminator: DiscriminatorConfig | None = None  # MS-STFT discriminator: adversarial + feature matching
    balancer: bool = False
    # the independence loss, outside the balancer (paper: weight 1000, 32 batches, delay-aligned)
    mmd_weight: float = 0.0
    mmd_start: int = 400            # steps of reconstruction only before the MMD loss is on: from a
                                    # fresh encoder (tiny latent variance) it collapses the codebooks
    mmd_macro_batches: int = 4
    mmd: MMDConfig = field(default_factory=MMDConfig)
    eval_every: int = 200
    eval_visqol: int = 8            # validation clips scored with ViSQOL at the last evaluation (0: none)
    ckpt_every: int = 200
    seed: int = 0
    device: str = "cpu"
    amp: bool = False               # bf16 autocast of the forward pass (+ TF32 on CUDA); opt-in
    cache_dir: str | None = None    # on-disk cache of decoded audio (folder data)

    def __post_init__(self):
        if not 0 < self.lr_final <= 1:
            raise ValueError(f"training parameter lr_final={self.lr_final} must be in (0, 1]")
        if self.mmd_start < 0:
            raise ValueError(f"training parameter mmd_start={self.mmd_start} must be >= 0")
        if self.mmd_weight and self.mmd_start >= self.steps:
            raise ValueError(f"mmd_weight={self.mmd_weight:g} but mmd_start={self.mmd_start} >= steps={self.steps}: "
                             "the MMD loss would never be on; set mmd_start below steps (e.g. mmd_start="
                             f"{2 * self.steps // 3})")
        for name in ("steps", "batch_size", "mmd_macro_batches", "eval_every", "ckpt_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"training parameter {name}={getattr(self, name)} must be >= 1")
        if not valid_seed(self.seed):
            raise ValueError(f"training parameter seed={self.seed!r} must be an integer in 0..2**31-1")
        check_device(self.device, "training parameter")
        if self.segment_seconds <= 0:
            raise ValueError(f"training parameter segment_seconds={self.segment_seconds} must be > 0")
        if isinstance(self.model, dict):  # from a checkpoint or JSON
            self.model = CodecConfig.from_dict(self.model)
        if isinstance(self.discriminator, dict):
            self.discriminator = DiscriminatorConfig(**self.discriminator)
        if isinstance(self.mmd, dict):
            self.mmd = MMDConfig(**self.mmd)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


TRAIN_PRESETS: dict[str, CodecTrainConfig] = {
    # The tiny codec learns from its own spectra only: the L1 of its predicted log-magnitude (w_spec) and its
    # phase advances (w_advance). No loss on the waveform: a mel loss, even at weight 0.1, traded the notes for
    # the envelope, and the waveform L1 is meaningless for a phase the decoder builds itself (README, "The tiny
    # codec"). 2400 steps (about 12 minutes on 2 cores), lr decayed to a tenth.
    # MMD distances normalised by K·D: with raw distances (the reference's) the tiny encoder drove
    # the loss to ~0 while its codes got no less dependent (kernels saturate; see the README)
    "tiny": CodecTrainConfig(steps=2400, eval_every=400, ckpt_every=400, lr_final=0.1, w_l1=0.0, w_mel=0.0, w_spec=1.0,
                             w_advance=1.0, mmd=MMDConfig(normalize_distance=True)),
    # the former tiny codec (learned phase): multi-scale mel, its log-magnitude and a small waveform L1
    "tiny_learned": CodecTrainConfig(model=codec_preset("tiny_learned"), lr_final=0.1, w_l1=0.1, w_mel=1.0, w_spec=1.0,
                                     mmd=MMDConfig(normalize_distance=True)),
    "tiny_seanet": CodecTrainConfig(model=codec_preset("tiny_seanet"), lr_final=0.1, mmd=MMDConfig(normalize_distance=True)),
    # The paper's runs: its codec and losses, and the MMD of its ICML code (audiocraft PR 465, commit b56a208):
    # the codeword streams q_k and the reference's value (divided by the clips, not the samples: λ = 1000 on it
    # is ≈ 2·10⁶ on the MMD², mmdlib.mmd.reference). It standardised per codebook where the final commits (and
    # estimator="reference") standardise per feature: that difference is not reproduced.
    "paper": CodecTrainConfig(
        model=codec_preset("paper"), discriminator=DiscriminatorConfig.paper(), steps=200_000, batch_size=64,
        segment_seconds=1.0, n_train_items=100_000, n_valid_items=256, mmd_start=0, lr=3e-4, w_commit=1.0, w_l1=0.1,
        w_mel=2.0, w_adv=4.0, w_feat=4.0, balancer=True, mmd_macro_batches=32,
        mmd=MMDConfig(streams="codeword", estimator="reference"), eval_every=5000, ckpt_every=5000, device="cuda",
    ),
}


def train_preset(name: str, **overrides) -> CodecTrainConfig:
    if name not in TRAIN_PRESETS:
        raise ValueError(f"unknown training preset {name!r}; choose one of {sorted(TRAIN_PRESETS)}")
    fields = {f.name for f in dataclasses.fields(CodecTrainConfig)}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"unknown training parameter(s) {sorted(unknown)}")
    return dataclasses.replace(TRAIN_PRESETS[name], **overrides)


@dataclass
class LMTrainConfig:
    steps: int = 2000
    batch_size: int = 16         # per rank
    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    warmup: int = 100            # linear warm-up steps, then cosine down to min_lr_ratio * lr
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    seq_frames: int = 100        # random crops of this many frames
    eval_every: int = 200
    patience: int = 0            # early stopping: evaluations without a better held-out loss before
                                 # training stops (0: never); the best state is kept either way
    eval_batch_size: int = 16
    ckpt_every: int = 500
    seed: int = 0
    device: str = "cpu"
    amp: bool = False            # bf16 autocast of the forward pass (+ TF32 on CUDA); opt-in
    progress: bool = True        # tqdm bar (rank 0)

    def __post_init__(self):
        for name in ("steps", "batch_size", "seq_frames", "eval_every", "eval_batch_size", "ckpt_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"LM training parameter {name}={v!r} must be an integer >= 1")
        if not valid_seed(self.seed):
            raise ValueError(f"LM training parameter seed={self.seed!r} must be an integer in 0..2**31-1")
        check_device(self.device, "LM training parameter")
        if not isinstance(self.patience, int) or self.patience < 0:
            raise ValueError(f"LM training parameter patience={self.patience!r} must be an integer >= 0")
        if self.warmup < 0 or not (self.lr > 0) or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"LM training parameters: need warmup >= 0, lr > 0, 0 <= min_lr_ratio <= 1; "
                             f"got {self.warmup}, {self.lr}, {self.min_lr_ratio}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


LM_TRAIN_PRESETS: dict[str, LMTrainConfig] = {
    # Minutes on a 2-core CPU with the tiny LM: 2 s crops at 50 Hz.
    "tiny": LMTrainConfig(steps=2000, batch_size=16, lr=1e-3, warmup=100, seq_frames=100,
                          eval_every=200, ckpt_every=500),
    # GPU scale (MusicGen-like optimiser settings): 30 s crops at 50 Hz.
    "paper": LMTrainConfig(steps=200_000, batch_size=32, lr=1e-4, warmup=4000, seq_frames=1500,
                           eval_every=5000, ckpt_every=5000, device="cuda"),
}
