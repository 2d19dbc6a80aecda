"""The notebooks' result checks (mmdlib.pipeline.checks) pass on results like the committed run's and fail on
the broken results they exist to catch."""
import pytest

from mmdlib.pipeline import checks
from mmdlib.pipeline.checks import ResultCheckError

GOOD = {"codec_lambda0": {"chroma": 0.72, "fine_structure_r": 0.47, "visqol": 3.82, "usage_perplexity_ratio_min": 0.62,
                          "mmd": 0.0029},
        "codec_lambda100": {"chroma": 0.70, "fine_structure_r": 0.46, "visqol": 3.76, "usage_perplexity_ratio_min": 0.67,
                            "mmd": 0.0010}}


def test_codecs_pass_and_fail_on_a_codec_without_notes_or_a_loss_that_does_nothing():
    assert checks.codecs(GOOD, [0.0, 100.0]).startswith("checked: 2 codecs")
    envelope_only = {k: v | {"chroma": 0.49, "fine_structure_r": -0.06} for k, v in GOOD.items()}  # envelope noise's scores
    with pytest.raises(ResultCheckError, match="chroma = 0.490 below the floor 0.6"):
        checks.codecs(envelope_only, [0.0, 100.0])
    collapsed = GOOD | {"codec_lambda100": GOOD["codec_lambda100"] | {"usage_perplexity_ratio_min": 0.01}}
    with pytest.raises(ResultCheckError, match="usage_perplexity_ratio_min"):
        checks.codecs(collapsed, [0.0, 100.0])
    with pytest.raises(ResultCheckError, match="MMD² 0.0029 not below"):
        checks.codecs({"a": GOOD["codec_lambda0"], "b": GOOD["codec_lambda0"]}, [0.0, 100.0])
    with pytest.raises(ResultCheckError, match="nan"):
        checks.codecs({"a": GOOD["codec_lambda0"] | {"visqol": float("nan")}}, [0.0])
    assert checks.codecs({"a": GOOD["codec_lambda100"]}, [100.0])  # no λ = 0 codec: nothing to compare


def test_dependence_lm_bits_and_generation_checks():
    assert checks.dependence({"a": 0.061, "b": 0.049}, [0.0, 100.0])
    with pytest.raises(ResultCheckError, match="NMI"):
        checks.dependence({"a": 0.061, "b": 0.070}, [0.0, 100.0])
    bits = {"c0": {"parallel": 21.25, "delay": 22.55, "flatten": 20.60}}
    assert checks.lm_bits(bits) and checks.lm_bits({"c0": {"parallel": 21.0, "delay": 20.0}})  # no flatten: no check
    with pytest.raises(ResultCheckError, match="flatten 22.60 bits/frame not below parallel 21.25"):
        checks.lm_bits({"c0": bits["c0"] | {"flatten": 22.60}})
    steps, seconds = {"parallel": 200, "delay": 203, "flatten": 800}, {"parallel": 0.038, "flatten": 0.142}
    assert checks.generation(steps, seconds, n_q=4)
    with pytest.raises(ResultCheckError, match="not 4 x"):
        checks.generation(steps | {"flatten": 200}, seconds, n_q=4)
    with pytest.raises(ResultCheckError, match="not faster"):
        checks.generation(steps, {"parallel": 0.2, "flatten": 0.142}, n_q=4)


def test_report_check_finds_a_missing_piece_and_a_wrong_result():
    codecs = [{"codec": "codec_lambda0", "nmi_delay": 0.08, "mel_distance": 0.7, "chroma": 0.8},
              {"codec": "codec_lambda100", "nmi_delay": 0.05, "mel_distance": 0.7, "chroma": 0.8}]
    lms = [{"codec": c["codec"], "pattern": p, "bits_per_frame": b} for c in codecs
           for p, b in (("parallel", 20.0), ("delay", 20.5), ("flatten", 17.0), ("depth", 17.5))]
    good = {"codecs": codecs, "lms": lms}
    assert checks.report(good, [0.0, 100.0]).startswith("checked: the table is complete (2 codecs, 8 models)")
    with pytest.raises(checks.ResultCheckError, match="misses codec_lambda100 / delay bits"):
        checks.report({"codecs": codecs, "lms": [r | {"bits_per_frame": None} if r["pattern"] == "delay"
                                                  and r["codec"] == "codec_lambda100" else r for r in lms]}, [0.0, 100.0])
    with pytest.raises(checks.ResultCheckError, match="NMI"):
        checks.report({"codecs": codecs[::-1], "lms": lms}, [0.0, 100.0])  # λ = 100 now has the higher NMI
    with pytest.raises(checks.ResultCheckError, match="flatten 21.00"):
        checks.report({"codecs": codecs, "lms": [r | {"bits_per_frame": 21.0} if r["pattern"] == "flatten" else r
                                                  for r in lms]}, [0.0, 100.0])
