"""`python -m mmdlib.bench codec` end to end on a codec checkpoint: every key the codec issue asks for, and
the metric check of its anchor row (envelope-shaped noise: no notes) holding on real clips."""
import pytest
import torch

from mmdlib.bench import codec as bench_codec
from mmdlib.codec.model import Codec, codec_preset
from mmdlib.eval.anchors import opus_available


@pytest.mark.slow  # ViSQOL on 2 clips x 4 rows (+ numba's first compilation)
def test_bench_codec_scores_a_checkpoint(tmp_path, capsys):
    torch.manual_seed(0)
    codec = Codec(codec_preset("tiny"))
    codec(torch.randn(2, 1, 16000) * 0.1)  # k-means initialisation: an untrained but working codec
    codec.save(tmp_path / "codec.pt")
    result = bench_codec.main(["--checkpoint", str(tmp_path / "codec.pt"), "--clips", "2"])
    for key in ("visqol", "mel_distance", "fine_structure_r", "chroma", "kbps", "usage_perplexity_ratio_min"):
        assert key in result, key
    assert result["kbps"] == pytest.approx(1.6)
    # the metric check: no notes in envelope-shaped noise, whatever ViSQOL says
    assert abs(result["envelope_noise_fine_structure_r"]) < 0.2 and result["envelope_noise_chroma"] < 0.65
    if opus_available():
        assert result["opus_6kbps_chroma"] > 0.8 and result["opus_6kbps_fine_structure_r"] > result["fine_structure_r"]
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("{")  # last line: the JSON
