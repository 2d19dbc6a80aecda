"""The codec training loop: exact resume after an interruption, bad parameters."""
import dataclasses
import json
import math

import pytest
import torch

from mmdlib.codec.discriminator import DiscriminatorConfig
from mmdlib.codec.model import Codec, CodecConfig
from mmdlib.codec.quantize import QuantizerConfig
from mmdlib.codec.seanet import SEANetConfig
from mmdlib.codec.spectral import SpectralConfig
from mmdlib.mmd.loss import MMDConfig
from mmdlib.mmd.saturation import SATURATED
from mmdlib.train.codec import check_kernels, learning_rate, train_codec
from mmdlib.train.config import train_preset

# the tiny preset's architecture (spectral), small
SMALL = CodecConfig(
    sample_rate=16000, arch="spectral", spectral=SpectralConfig(dim=8, hidden=32, hop=320, down=1, phase="advance"),
    quantizer=QuantizerConfig(dim=8, n_q=3, codebook_size=16),
)
SMALL_SEANET = CodecConfig(
    sample_rate=16000,
    seanet=SEANetConfig(dim=8, n_filters=4, ratios=(8, 5, 4, 2), n_residual_layers=1),
    quantizer=QuantizerConfig(dim=8, n_q=3, codebook_size=16),
)


def config(**kw):
    base = dict(steps=7, mmd_start=1, batch_size=2, segment_seconds=0.2, n_train_items=8, n_valid_items=2,
                eval_every=3, ckpt_every=2, mmd_weight=10.0, mmd_macro_batches=3,
                mmd=MMDConfig(block_size=64))
    return train_preset("tiny", **(dict(model=SMALL) | base | kw))


@pytest.mark.parametrize("discriminator", [False, True])
def test_resume_reproduces_uninterrupted_run(tmp_path, discriminator):
    cfg = config(discriminator=DiscriminatorConfig.tiny() if discriminator else None)
    full = train_codec(cfg, tmp_path / "full", progress=False)
    # MMD macro-batches are steps 1-3 and 4-6; interrupted after step 4 (mid macro-batch), resumed
    train_codec(cfg, tmp_path / "cut", stop_at=5, progress=False)
    resumed = train_codec(cfg, tmp_path / "cut", progress=False)
    assert resumed["last_losses"] == full["last_losses"]
    assert "mmd" in full["last_losses"]
    assert resumed["history"] == [
        {k: v for k, v in h.items() if k != "seconds"} | {"seconds": r["seconds"]}
        for h, r in zip(full["history"], resumed["history"])
    ]
    a, b = Codec.load(tmp_path / "full" / "codec.pt"), Codec.load(tmp_path / "cut" / "codec.pt")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_same_seed_same_numbers(tmp_path):
    cfg = config(steps=3, mmd_weight=0.0)
    one = train_codec(cfg, tmp_path / "a", progress=False)
    two = train_codec(cfg, tmp_path / "b", progress=False)
    assert one["last_losses"] == two["last_losses"]


def test_resume_refuses_other_config(tmp_path):
    train_codec(config(steps=2), tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"another configuration: train\.lr: 0\.001 in the checkpoint, 0\.0005 now"):
        train_codec(config(steps=2, lr=5e-4), tmp_path, progress=False)
    # raising the step count extends the run instead
    out = train_codec(config(steps=3), tmp_path, progress=False)
    assert [h["step"] for h in out["history"]] == [2, 3]
    assert torch.load(tmp_path / "checkpoint.pt.prev", weights_only=False)["step"] == 2
    # a finished run started again trains nothing and returns its saved results, wherever its data cache is
    again = train_codec(config(steps=3, cache_dir=str(tmp_path / "cache")), tmp_path, progress=False)
    assert again["history"] == out["history"] and again["last_losses"] == {}
    # but it cannot be cut back below its last step
    with pytest.raises(ValueError, match=r"checkpoint\.pt is at step 3, past steps=2"):
        train_codec(config(steps=2), tmp_path, progress=False)


def test_bad_parameters():
    with pytest.raises(ValueError, match="unknown training preset 'big'"):
        train_preset("big")
    with pytest.raises(ValueError, match="unknown training parameter"):
        train_preset("tiny", stepz=3)


def test_learning_rate_schedule():
    cfg = train_preset("tiny", steps=101, lr=1e-3, lr_final=0.1)
    assert learning_rate(cfg, 0) == pytest.approx(1e-3)
    assert learning_rate(cfg, 50) == pytest.approx(0.55e-3)  # halfway: the mean of the two ends
    assert learning_rate(cfg, 100) == pytest.approx(1e-4)
    lrs = [learning_rate(cfg, s) for s in range(101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert learning_rate(train_preset("tiny", lr_final=1.0), 777) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="lr_final"):
        train_preset("tiny", lr_final=0.0)


def test_fork_from_shared_prefix_equals_run_from_scratch(tmp_path):
    from mmdlib.train.codec import fork_checkpoint

    cfg = config(steps=6, mmd_start=3, mmd=MMDConfig(block_size=64, align="none"))  # MMD at steps 3-5
    scratch = train_codec(cfg, tmp_path / "scratch", progress=False)
    base = config(steps=6, mmd_start=3, mmd_weight=0.0)  # the λ = 0 run, stopped at mmd_start
    train_codec(base, tmp_path / "base", stop_at=3, progress=False)
    fork_checkpoint(tmp_path / "base" / "checkpoint.pt", cfg, tmp_path / "fork")
    forked = train_codec(cfg, tmp_path / "fork", progress=False)
    assert forked["last_losses"] == scratch["last_losses"] and "mmd" in forked["last_losses"]
    a, b = Codec.load(tmp_path / "scratch" / "codec.pt"), Codec.load(tmp_path / "fork" / "codec.pt")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    # only the MMD settings may differ, and only before mmd_start
    with pytest.raises(ValueError, match="lr"):
        fork_checkpoint(tmp_path / "base" / "checkpoint.pt", config(steps=6, mmd_start=3, lr=5e-4), tmp_path / "x")
    train_codec(base, tmp_path / "base", stop_at=5, progress=False)
    with pytest.raises(ValueError, match="after mmd_start"):
        fork_checkpoint(tmp_path / "base" / "checkpoint.pt", cfg, tmp_path / "y")


def test_seanet_codec_trains_with_its_preset_and_refuses_the_spectral_loss(tmp_path):
    cfg = train_preset("tiny_seanet", steps=2, batch_size=2, segment_seconds=0.2, n_train_items=4, n_valid_items=2,
                       eval_every=2, ckpt_every=2)
    out = train_codec(dataclasses.replace(cfg, model=SMALL_SEANET), tmp_path / "a", progress=False)
    assert out["final"]["step"] == 2 and torch.isfinite(torch.tensor(out["final"]["mel_distance"]))
    with pytest.raises(ValueError, match="w_spec=1.0, w_advance=1.0 need a spectral codec"):
        train_codec(config(steps=2, model=SMALL_SEANET), tmp_path / "b", progress=False)


@pytest.mark.slow  # the paper's codec, on CPU: ~30 s
def test_paper_preset_runs_its_whole_path_on_cpu(tmp_path):
    """SEANet with LSTM, 4 x 2048 codes at 32 kHz, MS-STFT discriminator, gradient balancer and the
    ICML code's MMD (the reference's value of the codeword streams) from step 0: one step, evaluated and
    checkpointed."""
    cfg = train_preset("paper", steps=1, batch_size=2, segment_seconds=0.5, device="cpu", n_train_items=4,
                       n_valid_items=2, eval_every=1, ckpt_every=1, mmd_macro_batches=1, mmd_weight=1000.0,
                       eval_visqol=0)
    assert cfg.discriminator and cfg.balancer and cfg.mmd_start == 0 and not cfg.mmd.normalize_distance
    assert (cfg.mmd.streams, cfg.mmd.estimator) == ("codeword", "reference")
    out = train_codec(cfg, tmp_path, progress=False)
    final = out["final"]
    assert final["step"] == 1 and all(math.isfinite(final[k]) for k in ("train_mmd", "train_adv", "train_feat", "mel_distance"))
    codec = Codec.load(tmp_path / "codec.pt")
    assert (codec.cfg.sample_rate, codec.cfg.quantizer.codebook_size, codec.cfg.seanet.lstm) == (32000, 2048, 2)
    # the saturation check of the MMD's kernels at step 0: raw distances on K·D = 4 × 128 features
    kernels = json.loads((tmp_path / "mmd_kernels.json").read_text())
    assert kernels["step"] == 0 and kernels["features"] == 512 and not kernels["normalize_distance"]
    # a Gaussian kernel's mean over the same pairs grows with its variance and stays below 1 while the
    # codewords differ; raw distances (median > 1) put the smallest scales near 0
    means, median = kernels["mean_kernel"], kernels["median_sq_dist"]
    assert median > 1 and all(a < b < 1 for a, b in zip(means, means[1:])) and means[0] < 0.05
    assert kernels["saturated"] == [m < SATURATED or m > 1 - SATURATED for m in means]


def test_all_saturated_kernels_are_reported_with_a_warning(tmp_path):
    streams = torch.randn(1, 4, 128, 300, generator=torch.Generator().manual_seed(0))  # K·D = 512, raw distances
    with pytest.warns(UserWarning, match=r"every kernel scale is saturated .* all far apart .* mmd\.normalize_distance=true"):
        report = check_kernels(streams, MMDConfig(), 7, tmp_path / "k.json")
    assert json.loads((tmp_path / "k.json").read_text()) == report and report["step"] == 7
    flat = streams[..., :1].expand_as(streams) + 1e-4 * streams  # samples all alike
    with pytest.warns(UserWarning, match=r"all alike: the residual streams barely vary"):
        check_kernels(flat, MMDConfig(standardize=False), 0, tmp_path / "flat.json")


@pytest.mark.parametrize("codec_cfg,discriminator", [(SMALL, False), (SMALL_SEANET, True)])
def test_amp_trains_in_bf16_autocast_on_cpu(tmp_path, codec_cfg, discriminator):
    """amp=True: bf16 autocast of the forward pass (CPU here; TF32 too on CUDA), finite losses; the
    quantizer's codes and the MMD stay float32."""
    spectral = codec_cfg.arch == "spectral"
    cfg = config(steps=4, amp=True, model=codec_cfg, discriminator=DiscriminatorConfig.tiny() if discriminator else None,
                 w_spec=float(spectral), w_advance=float(spectral), w_mel=0.0 if spectral else 1.0)
    out = train_codec(cfg, tmp_path, progress=False)
    assert all(math.isfinite(v) for v in out["last_losses"].values()) and "mmd" in out["last_losses"]
    codec = Codec.load(tmp_path / "codec.pt")
    x = torch.randn(2, 1, 3200)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o = codec(x)
    assert o.wav.dtype == torch.float32 and o.streams.dtype == torch.float32


class _Unmoved(torch.Tensor):
    """A batch that has not been through `.to(device)` (which returns a plain tensor)."""

    def to(self, *args, **kwargs):
        return self.as_subclass(torch.Tensor).to(*args, **kwargs)


def test_resume_mid_macro_batch_moves_the_pending_batches_to_the_device(tmp_path, monkeypatch):
    """On resume the pending MMD macro-batch is rebuilt from `get_batch` (on the CPU): every batch must
    reach the encoder through `.to(device)` (on CUDA the resume crashed). A device spy on CPU."""
    import mmdlib.train.codec as tc
    cfg = config()
    train_codec(cfg, tmp_path, stop_at=5, progress=False)  # step 5: mid macro-batch 4-6
    get_batch, encode = tc.get_batch, Codec.encode_streams
    seen = []
    monkeypatch.setattr(tc, "get_batch", lambda *a: get_batch(*a).as_subclass(_Unmoved))
    monkeypatch.setattr(Codec, "encode_streams", lambda self, wav, **kw: seen.append(type(wav)) or encode(self, wav, **kw))
    train_codec(cfg, tmp_path, progress=False)
    assert seen and all(t is torch.Tensor for t in seen), seen


@pytest.mark.parametrize("mmd", [MMDConfig(block_size=64, streams="codeword"), MMDConfig(block_size=64, streams="input"),
                                 MMDConfig(block_size=64, shuffle="clip"), MMDConfig(estimator="reference")])
def test_every_mmd_variant_trains_and_reaches_the_encoder(tmp_path, mmd):
    """The stream variants, the within-clip shuffle and the reference's value as the training loss:
    the MMD step runs and its gradient moves the encoder (λ = 0 and λ > 0 runs part after mmd_start)."""
    cfg = config(steps=3, mmd_start=1, mmd_macro_batches=2, eval_every=3, ckpt_every=3, mmd=mmd)
    with_mmd = train_codec(cfg, tmp_path / "on", progress=False)
    train_codec(dataclasses.replace(cfg, mmd_weight=0.0), tmp_path / "off", progress=False)
    assert math.isfinite(with_mmd["last_losses"]["mmd"])
    on, off = (torch.load(tmp_path / d / "codec.pt")["state"] for d in ("on", "off"))
    enc = [k for k in on if k.startswith("encoder.")]
    assert any(not torch.equal(on[k], off[k]) for k in enc)


def test_every_evaluation_is_appended_to_metrics_jsonl_as_it_happens(tmp_path):
    """A 60-step run evaluated every 30 steps, interrupted at step 59 (as a kill would): its evaluations
    are already in run_dir/metrics.jsonl, one line each, before the run ends (no metrics.json yet)."""
    cfg = config(steps=60, eval_every=20, ckpt_every=30, mmd_start=40)
    train_codec(cfg, tmp_path, stop_at=59, progress=False)
    assert not (tmp_path / "metrics.json").exists()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [20, 40] and all(math.isfinite(x["mel_distance"]) for x in lines)
    assert "mel_clips" not in lines[0] and "train_spec" in lines[0]  # the scalars, lists left out
    train_codec(cfg, tmp_path, progress=False)  # resumed from its checkpoint at step 59: appends step 60
    steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [20, 40, 60]


def test_tensorboard_logs_the_evaluations_a_reconstruction_and_its_spectrogram(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train_codec(config(steps=4, eval_every=2, ckpt_every=2, mmd_start=2), tmp_path, progress=False, tensorboard=True)
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"audio": 0, "images": 0}).Reload()
    tags = acc.Tags()
    assert [e.step for e in acc.Scalars("codec/mel_distance")] == [2, 4]
    assert {"audio/original", "audio/reconstruction"} <= set(tags["audio"])
    assert [e.step for e in acc.Audio("audio/reconstruction")] == [2, 4] and acc.Audio("audio/original")[0].sample_rate == 16000
    assert {"spectrogram/original", "spectrogram/reconstruction"} <= set(tags["images"])
