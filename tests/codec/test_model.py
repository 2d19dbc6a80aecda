"""The codec: shapes, round trips, checkpoints that carry their config."""
import dataclasses

import pytest
import torch

from mmdlib.codec.model import Codec, CodecConfig, codec_preset
from mmdlib.codec.quantize import QuantizerConfig
from mmdlib.codec.seanet import SEANetConfig
from mmdlib.codec.spectral import SpectralConfig, istft, stft

ARCHS = ["seanet", "spectral", "spectral_advance"]


def small_config(arch: str = "seanet") -> CodecConfig:
    """A small codec of each kind; "spectral_advance" is the tiny preset's decoder (phase advances)."""
    advance = dict(hop=16, down=1, phase="advance") if arch == "spectral_advance" else dict(hop=4, down=2)
    return CodecConfig(
        sample_rate=8000,
        seanet=SEANetConfig(dim=16, n_filters=4, ratios=(4, 2), n_residual_layers=1),
        quantizer=QuantizerConfig(dim=16, n_q=3, codebook_size=32),
        arch=arch.removesuffix("_advance"),
        spectral=SpectralConfig(dim=16, n_fft=32, hidden=24, **advance),
    )


def test_presets():
    tiny, paper = codec_preset("tiny"), codec_preset("paper")
    assert (tiny.sample_rate, tiny.hop_length, tiny.frame_rate) == (16000, 320, 50)
    assert (tiny.spectral.n_fft, tiny.spectral.hop, tiny.spectral.phase) == (640, 320, "advance")
    assert (tiny.quantizer.n_q, tiny.net.dim) == (4, tiny.quantizer.dim)
    assert (paper.sample_rate, paper.seanet.ratios, paper.frame_rate) == (32000, (8, 5, 4, 4), 50)
    assert (paper.quantizer.n_q, paper.quantizer.codebook_size, paper.seanet.n_filters) == (4, 2048, 64)
    with pytest.raises(ValueError, match="unknown codec preset 'huge'"):
        codec_preset("huge")


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("n", [800, 801, 999])
def test_shapes_and_round_trip(n, arch):
    torch.manual_seed(0)
    codec = Codec(small_config(arch))
    wav = torch.randn(2, 1, n)
    out = codec(wav)  # training mode: k-means init on this batch
    t = -(-n // codec.hop_length)
    assert out.wav.shape == wav.shape
    assert out.codes.shape == (2, 3, t) and out.codes.dtype == torch.long
    assert out.streams.shape == (2, 3, 16, t)
    codec.eval()
    codes = codec.encode(wav)
    assert torch.equal(codes, codec(wav).codes)
    decoded = codec.decode(codes)
    assert decoded.shape == (2, 1, t * codec.hop_length)
    torch.testing.assert_close(decoded[..., :n], codec(wav).wav)


@pytest.mark.parametrize("arch", ARCHS)
def test_streams_carry_gradient_to_encoder_only(arch):
    torch.manual_seed(0)
    codec = Codec(small_config(arch))
    codec(torch.randn(2, 1, 800))  # initialise codebooks
    streams = codec.encode_streams(torch.randn(2, 1, 800), checkpoint=True)
    streams.pow(2).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in codec.encoder.parameters())
    assert all(p.grad is None for p in codec.decoder.parameters())


def test_encode_streams_leaves_quantizer_untouched():
    torch.manual_seed(0)
    codec = Codec(small_config())
    codec(torch.randn(2, 1, 800))
    before = {k: v.clone() for k, v in codec.quantizer.state_dict().items()}
    codec.encode_streams(torch.randn(2, 1, 800))
    assert codec.quantizer.training
    for k, v in codec.quantizer.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_round_trip(tmp_path, arch):
    torch.manual_seed(0)
    codec = Codec(small_config(arch))
    wav = torch.randn(1, 1, 800)
    codec(wav)
    codec.eval()
    codec.save(tmp_path / "codec.pt")
    loaded = Codec.load(tmp_path / "codec.pt")
    assert loaded.cfg == codec.cfg
    assert torch.equal(loaded.encode(wav), codec.encode(wav))
    torch.testing.assert_close(loaded(wav).wav, codec(wav).wav, rtol=0, atol=0)


def test_bad_inputs(tmp_path):
    codec = Codec(small_config())
    with pytest.raises(ValueError, match=r"wav must be \[b, 1, n\]"):
        codec(torch.randn(2, 800))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        Codec.load(tmp_path / "missing.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a codec checkpoint"):
        Codec.load(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="seanet.dim"):
        dataclasses.replace(small_config(), quantizer=QuantizerConfig(dim=8))
    with pytest.raises(ValueError, match="spectral.dim"):
        dataclasses.replace(small_config("spectral"), quantizer=QuantizerConfig(dim=8))
    with pytest.raises(ValueError, match="arch"):
        dataclasses.replace(small_config(), arch="wavenet")
    with pytest.raises(ValueError, match="n_fft"):
        SpectralConfig(n_fft=100, hop=160)


@pytest.mark.parametrize("n_fft,hop", [(640, 160), (32, 4), (64, 32)])
def test_istft_inverts_stft(n_fft, hop):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 40 * hop, generator=g, dtype=torch.float64)
    window = torch.hann_window(n_fft, dtype=torch.float64)
    spec = stft(x, n_fft, hop, window)
    assert spec.shape == (2, n_fft // 2 + 1, 40)  # "same" frames: n / hop
    torch.testing.assert_close(istft(spec, n_fft, hop, window), x, rtol=0, atol=1e-10)


def test_stft_frame_j_is_centred_on_its_hop():
    """Frame j covers [j h - (w - h) / 2, j h + (w + h) / 2): an impulse at sample j h + h / 2 is
    at the centre of frame j, so frame j holds the most energy."""
    n_fft, hop = 64, 16
    x = torch.zeros(1, 20 * hop, dtype=torch.float64)
    x[0, 7 * hop + hop // 2] = 1.0
    spec = stft(x, n_fft, hop, torch.hann_window(n_fft, dtype=torch.float64))
    assert int(spec.abs().pow(2).sum(1).argmax()) == 7


def test_spectral_codec_is_shift_equivariant_by_frames():
    """The frame-rate encoder and decoder commute with a shift by whole latent frames (away from
    the edges): delaying the input by one hop_length delays the latents by one frame and the
    reconstruction by hop_length samples."""
    from mmdlib.codec.spectral import SpectralDecoder, SpectralEncoder
    torch.manual_seed(0)
    cfg = SpectralConfig(dim=8, n_fft=32, hop=8, down=2, hidden=16)
    enc, dec, hop = SpectralEncoder(cfg), SpectralDecoder(cfg), cfg.hop_length
    x = torch.randn(1, 1, 40 * hop)
    z, z_late = enc(x), enc(torch.roll(x, hop, dims=-1))
    assert z.shape == (1, 8, 40)
    torch.testing.assert_close(z_late[..., 4:-4], z[..., 3:-5], rtol=1e-4, atol=1e-5)
    y, y_late = dec(z), dec(torch.roll(z, 1, dims=-1))
    torch.testing.assert_close(y_late[..., 6 * hop:-6 * hop], y[..., 5 * hop:-7 * hop], rtol=1e-4, atol=1e-5)
