"""The codec: shapes, round trips, checkpoints that carry their config."""
import dataclasses

import pytest
import torch

from mmdlib.codec import Codec, CodecConfig, codec_preset
from mmdlib.quantize import QuantizerConfig
from mmdlib.seanet import SEANetConfig


def small_config() -> CodecConfig:
    return CodecConfig(
        sample_rate=8000,
        seanet=SEANetConfig(dim=16, n_filters=4, ratios=(4, 2), n_residual_layers=1),
        quantizer=QuantizerConfig(dim=16, n_q=3, codebook_size=32),
    )


def test_presets():
    tiny, paper = codec_preset("tiny"), codec_preset("paper")
    assert (tiny.sample_rate, tiny.hop_length, tiny.frame_rate) == (16000, 320, 50)
    assert (paper.sample_rate, paper.seanet.ratios, paper.frame_rate) == (32000, (8, 5, 4, 4), 50)
    assert (paper.quantizer.n_q, paper.quantizer.codebook_size, paper.seanet.n_filters) == (4, 2048, 64)
    with pytest.raises(ValueError, match="unknown codec preset 'huge'"):
        codec_preset("huge")


@pytest.mark.parametrize("n", [800, 801, 999])
def test_shapes_and_round_trip(n):
    torch.manual_seed(0)
    codec = Codec(small_config())
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


def test_streams_carry_gradient_to_encoder_only():
    torch.manual_seed(0)
    codec = Codec(small_config())
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


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    codec = Codec(small_config())
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
