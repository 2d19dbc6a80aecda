"""The notebook glue: parameter checks and their messages, run-dir layout, tokenisation, results."""
import dataclasses
import json
import math
import os

import pytest
import torch

from mmdlib.codec.model import Codec, CodecConfig
from mmdlib.codec.quantize import QuantizerConfig
from mmdlib.codec.seanet import SEANetConfig
from mmdlib.pipeline import layout, params, players, report, stages
from mmdlib.pipeline.params import PipelineError, check_params
from mmdlib.train.checkpoint import write_json
from mmdlib.train.config import LM_TRAIN_PRESETS, TRAIN_PRESETS, train_preset
from mmdlib.train.overrides import apply_overrides

SMALL = CodecConfig(
    sample_rate=16000,
    seanet=SEANetConfig(dim=8, n_filters=4, ratios=(8, 5, 4, 2), n_residual_layers=1),
    quantizer=QuantizerConfig(dim=8, n_q=3, codebook_size=16),
)


def test_defaults_resolve_to_the_preset(tmp_path):
    cfg = check_params("00_data", run_dir=str(tmp_path))
    tiny = params.PIPELINE_PRESETS["tiny"]
    assert cfg == dataclasses.replace(tiny, run_dir=str(tmp_path), fig_dir=f"{tmp_path}/figures")
    # None means "the preset's value"
    assert check_params("00_data", run_dir=str(tmp_path), lambdas=None, lm_steps=None).lm_train == tiny.lm_train


def test_unknown_preset_lists_the_presets():
    with pytest.raises(PipelineError, match=r"unknown preset 'big'; choose one of \['paper', 'smoke', 'tiny'\]"):
        check_params("00_data", preset="big")


def test_cuda_without_gpu_says_use_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(PipelineError, match=r"device='cuda' but torch sees no CUDA GPU.*-p device cpu"):
        check_params("00_data", device="cuda")
    with pytest.raises(PipelineError, match="no CUDA GPU"):
        check_params("00_data", preset="paper")  # the paper preset defaults to cuda


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cpu:x", 0])
def test_malformed_device(device):
    with pytest.raises(PipelineError, match="device="):
        check_params("00_data", device=device)


@pytest.mark.parametrize("given, expected", [
    ("0,100", (0.0, 100.0)), ("[0, 10]", (0.0, 10.0)), (100, (100.0,)), ([0, 1e3], (0.0, 1000.0)), ("5", (5.0,)),
])
def test_lambdas_accept_lists_scalars_and_strings(given, expected):
    assert check_params("00_data", lambdas=given).lambdas == expected


@pytest.mark.parametrize("given, message", [
    ("-1", "not a weight >= 0"), ("nan", "expected a finite number"), ("0,0", "twice"), ("a,b", "lambdas='a': expected a number"),
    ("[0,", "not a valid list"), ("", "empty"),
])
def test_bad_lambdas(given, message):
    with pytest.raises(PipelineError, match=message):
        check_params("00_data", lambdas=given)


def test_patterns():
    assert check_params("00_data", patterns="delay, flatten").patterns == ("delay", "flatten")
    with pytest.raises(PipelineError, match=r"patterns: unknown \['diagonal'\]; choose from \['parallel'"):
        check_params("00_data", patterns=["delay", "diagonal"])


@pytest.mark.parametrize("name, value", [("lm_steps", 0), ("codec_steps", -5), ("lm_steps", 1.5),
                                         ("n_gen", True), ("lm_steps", "many"), ("gen_seconds", 0.0)])
def test_bad_counts(name, value):
    with pytest.raises(PipelineError, match=name):
        check_params("00_data", **{name: value})


def test_bad_names_and_values(tmp_path):
    with pytest.raises(PipelineError, match=r"unknown parameter\(s\) \['stepz'\]"):
        check_params("00_data", stepz=3)
    with pytest.raises(PipelineError, match="notebook='06_x'"):
        check_params("06_x")
    with pytest.raises(PipelineError, match="align='diagonal'"):
        check_params("00_data", align="diagonal")
    with pytest.raises(PipelineError, match="neither 'synthetic' nor a folder.*get_supertux_music"):
        check_params("00_data", data=str(tmp_path / "nowhere"))
    with pytest.raises(PipelineError, match="seed="):
        check_params("00_data", seed=-1)
    with pytest.raises(PipelineError, match=r"seed=1180591620717411303424: expected an integer in 0\.\.2147483647"):
        check_params("00_data", seed=2**70)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):  # (root may write anywhere)
            with pytest.raises(PipelineError, match=r"run_dir=.*locked/run' cannot be written.*-p run_dir runs/mine"):
                check_params("00_data", run_dir=str(locked / "run"))
    finally:
        locked.chmod(0o700)
    interactive = check_params("00_data", run_dir=str(tmp_path / "r"))  # figures stay with the run's artifacts
    assert interactive.fig_path == tmp_path / "r" / "figures" and interactive.fig_path.is_dir()
    assert check_params("00_data", run_dir=str(tmp_path / "r"), fig_dir=str(tmp_path / "f")).fig_path == tmp_path / "f"
    with pytest.raises(PipelineError, match=r"fig_dir=.*cannot be written"):
        check_params("00_data", run_dir=str(tmp_path / "r"), fig_dir="/proc/forbidden")
    assert check_params("00_data", data=str(tmp_path)).data.source == str(tmp_path)


def test_missing_artifacts_name_the_notebook_to_run(tmp_path):
    with pytest.raises(PipelineError) as e:
        check_params("02_dependence", run_dir=str(tmp_path), lambdas="0,100")
    msg = str(e.value)
    assert str(tmp_path / "codec_lambda0" / "codec.pt") in msg
    assert str(tmp_path / "codec_lambda100" / "codec.pt") in msg
    assert "notebooks/01_train_codec.ipynb" in msg and "make run" in msg
    # with the codecs there, 03 passes and 04 asks for the language models
    for lam in (0, 100):
        (tmp_path / f"codec_lambda{lam}").mkdir()
        (tmp_path / f"codec_lambda{lam}" / "codec.pt").touch()
    check_params("03_train_lm", run_dir=str(tmp_path), lambdas="0,100")
    with pytest.raises(PipelineError, match=r"lm/codec_lambda0/delay/lm.pt +<- run notebooks/03_train_lm.ipynb"):
        check_params("04_generate", run_dir=str(tmp_path), lambdas="0,100", patterns="delay")
    check_params("00_data", run_dir=str(tmp_path / "fresh"))  # 00 and 01 need nothing
    check_params("01_train_codec", run_dir=str(tmp_path / "fresh"))


def test_layout(tmp_path):
    cfg = check_params("00_data", run_dir=str(tmp_path), lambdas="0,100,0.5")
    assert [layout.codec_name(x) for x in cfg.lambdas] == ["codec_lambda0", "codec_lambda100", "codec_lambda0.5"]
    assert layout.codec_name(100, "none") == "codec_lambda100_none"
    variants = {"codec.mmd.streams": "codeword", "codec.mmd.estimator": "reference", "align": "none"}
    assert apply_overrides(cfg, variants).layout.codec_name(1000) == "codec_lambda1000_codeword_reference_none"
    assert apply_overrides(cfg, {"codec.mmd.shuffle": "clip"}).layout.codec(100) == tmp_path / "codec_lambda100_clip"
    assert apply_overrides(cfg, variants).layout.codec(0) == tmp_path / "codec_lambda0"  # λ = 0: one for all
    assert layout.codec_name(0, "none") == "codec_lambda0"  # no MMD, so no alignment
    assert cfg.layout.codec(100) == tmp_path / "codec_lambda100"
    assert cfg.layout.tokens(0, "valid") == tmp_path / "tokens" / "codec_lambda0" / "valid.pt"
    assert cfg.layout.lm(100, "delay") == tmp_path / "lm" / "codec_lambda100" / "delay"
    assert cfg.layout.gen(0, "flatten") == tmp_path / "generate" / "codec_lambda0" / "flatten"
    assert cfg.layout.dependence(0) == tmp_path / "dependence" / "codec_lambda0.json"
    # relative paths are taken from the repository root, whatever the working directory
    assert check_params("00_data", run_dir="runs/x").run_path == params.ROOT / "runs" / "x"


def test_codec_and_lm_configs():
    cfg = check_params("00_data", lambdas="0,100", codec_steps=30, codec_mmd_start=20, lm_steps=40, lm_warmup=4,
                       align="none")
    c = cfg.codec_config(100)
    assert (c.steps, c.mmd_start, c.mmd_weight, c.mmd.align, c.eval_every) == (30, 20, 100.0, "none", 400)
    assert c.mmd.normalize_distance  # the preset's kernel, kept when the alignment changes

    paper = dataclasses.replace(params.PIPELINE_PRESETS["paper"], device="cpu").codec_config(1000)
    assert paper.steps == TRAIN_PRESETS["paper"].steps and paper.model == TRAIN_PRESETS["paper"].model
    lm_cfg, t = cfg.lm_configs("flatten", 3, 16)
    assert (lm_cfg.pattern, lm_cfg.n_q, lm_cfg.codebook_size) == ("flatten", 3, 16)
    assert (t.steps, t.warmup, t.ckpt_every, t.progress) == (40, 4, LM_TRAIN_PRESETS["tiny"].ckpt_every, False)


def test_the_notebooks_train_what_the_command_line_trains():
    """No setting is rewritten behind the user's back: the tiny notebooks' λ = 100 codec is
    `python -m mmdlib.train_codec --set steps=1200 eval_every=400 mmd_start=800 mmd_weight=100`, and a run
    too short for its mmd_start is refused instead of silently moved."""
    tiny = check_params("00_data")
    assert tiny.codec_config(100) == apply_overrides(
        train_preset("tiny"), ["steps=1200", "eval_every=400", "mmd_start=800", "mmd_weight=100"])
    with pytest.raises(PipelineError, match=r"mmd_start=800 >= steps=30: the MMD loss would never be on"):
        check_params("00_data", codec_steps=30).codec_config(100)
    assert check_params("00_data", codec_steps=30).codec_config(0).steps == 30  # no MMD: fine
    with pytest.raises(PipelineError, match=r"codec_mmd_start=-1: expected an integer >= 0"):
        check_params("00_data", codec_mmd_start=-1)


def test_tokenise_shapes_and_cache(tmp_path, monkeypatch):
    cfg = check_params("00_data", run_dir=str(tmp_path), clip_seconds=0.4, n_token_train=3, n_token_valid=2)
    torch.manual_seed(0)
    codec = Codec(SMALL).eval()
    (tmp_path / "codec_lambda0").mkdir()
    codec.save(tmp_path / "codec_lambda0" / "codec.pt")
    ds = stages.dataset(cfg, "train", 3)
    codes = stages.tokenize(codec, ds, batch_size=2)
    assert codes.shape == (3, 3, round(0.4 * 16000) // codec.hop_length) and codes.dtype == torch.long
    assert 0 <= codes.min() and codes.max() < 16

    train = stages.tokens(cfg, 0, "train")
    assert torch.equal(train, codes)
    assert stages.tokens(cfg, 0, "valid").shape == (2, 3, codes.shape[-1])
    assert stages.tokens(cfg, 0, "test").shape == (2, 3, codes.shape[-1])  # as many clips as valid, other ones
    assert not torch.equal(stages.tokens(cfg, 0, "test"), stages.tokens(cfg, 0, "valid"))
    # the second call reads the cache ...
    monkeypatch.setattr(stages, "tokenize", lambda *a, **k: pytest.fail("should have used the cache"))
    assert torch.equal(stages.tokens(cfg, 0, "train"), codes)
    # ... unless the data parameters changed
    with pytest.raises(pytest.fail.Exception):
        stages.tokens(apply_overrides(cfg, {"n_token_train": 4}), 0, "train")
    with pytest.raises(PipelineError, match="split='holdout'"):
        stages.tokens(cfg, 0, "holdout")


def test_results_table_from_artifacts(tmp_path):
    cfg = check_params("00_data", run_dir=str(tmp_path), lambdas="0,100", patterns="delay")
    for lam, nmi in ((0, 0.4), (100, 0.1)):
        hist = [{"step": 10, "sisnr_db": 3.0, "mel_distance": 1.0, "usage_perplexity_ratio_min": 0.5,
                 "nmi_lag0": nmi, "nmi_delay": nmi / 2, "mmd": 0.01, "seconds": 5.0}]
        write_json(cfg.layout.codec(lam) / "metrics.json", {"config": {}, "history": hist})
    write_json(cfg.layout.lm(0, "delay") / "metrics.json",
                  {"bits_per_frame": 12.5, "best_step": 40, "train_config": {"steps": 40}})
    res = report.collect_results(cfg)
    assert [r["codec"] for r in res["codecs"]] == ["codec_lambda0", "codec_lambda100"]
    assert res["codecs"][1]["nmi_delay"] == 0.05 and res["codecs"][1]["p_value_delay"] is None
    assert res["lms"][0]["bits_per_frame"] == 12.5 and res["lms"][1]["bits_per_frame"] is None
    md = report.results_markdown(res)
    assert "| codec_lambda0 | delay | 12.50 | – | – | 40 | – |" in md  # missing artifacts show as –, never invented
    md_path, json_path = report.write_results(dataclasses.replace(cfg, fig_dir=str(tmp_path / "fig")), res)
    assert md_path.read_text() == md and json.loads(json_path.read_text())["lms"] == res["lms"]


def test_players_embed_ogg():
    wav = torch.sin(torch.arange(8000) / 10.0)[None] * 0.5
    html = players.players_table({"row": {"a": wav, "b": wav}, "other": {"a": wav}}, 16000).data
    assert html.count("<audio") == 3 and "data:audio/ogg;base64," in html
    assert players.audio_bytes(wav, 16000)[:4] == b"OggS"
    assert math.isclose(len(players.audio_bytes(wav, 16000, "wav")), 44 + 2 * 8000, abs_tol=64)


def test_lm_run_resumes_and_refuses_other_configs(tmp_path):
    cfg = check_params("00_data", run_dir=str(tmp_path), clip_seconds=0.4, n_token_train=4, n_token_valid=2,
                       lm_steps=2, lm_seq_frames=10, lm_eval_every=1)
    torch.manual_seed(0)
    (tmp_path / "codec_lambda0").mkdir()
    Codec(SMALL).save(tmp_path / "codec_lambda0" / "codec.pt")
    first = stages.train_lm_run(cfg, 0, "delay")
    assert not first["resumed"] and [r["step"] for r in first["history"] if "valid_bits_per_frame" in r] == [1, 2]
    assert stages.train_lm_run(cfg, 0, "delay")["resumed"]  # finished: reloaded, not retrained
    # a checkpoint without metrics.json (interrupted, or trained by `torchrun -m mmdlib.train_lm`) is resumed
    (cfg.layout.lm(0, "delay") / "metrics.json").unlink()
    again = stages.train_lm_run(cfg, 0, "delay")
    assert again["valid_bits_per_frame"] == first["valid_bits_per_frame"]
    with pytest.raises(PipelineError, match="another configuration"):
        stages.train_lm_run(apply_overrides(cfg, {"lm_steps": 3}), 0, "delay")
    (cfg.layout.lm(0, "delay") / "metrics.json").unlink()
    with pytest.raises(PipelineError, match="another LM or training configuration"):
        stages.train_lm_run(apply_overrides(cfg, {"lm_steps": 3}), 0, "delay")
    # the token cache is a plain tensor, readable by the train_lm command line
    assert torch.load(cfg.layout.tokens(0, "train")).shape == (4, 3, 20)


def test_notebook_params_reads_the_parameters_cell(tmp_path):
    """The notebook's globals: preset and PipelineConfig fields are taken (None keeps the preset's
    value), anything else in the namespace is not a parameter."""
    ns = {"preset": "smoke", "run_dir": str(tmp_path), "lambdas": "0,10", "codec_steps": None, "In": [], "x": 1}
    P = params.notebook_params("00_data", ns)
    smoke = params.PIPELINE_PRESETS["smoke"]
    assert (P.lambdas, P.codec, P.run_dir, P.generate) == ((0.0, 10.0), smoke.codec, str(tmp_path), smoke.generate)
    with pytest.raises(PipelineError, match="seed=-1"):
        params.notebook_params("00_data", ns | {"seed": -1})


def test_depth_parameters_are_checked():
    with pytest.raises(PipelineError, match="gap_patterns: \\['flatten'\\] are not factorised"):
        check_params("00_data", gap_patterns="flatten")
    with pytest.raises(PipelineError, match="lm_patience=-1"):
        check_params("00_data", lm_patience=-1)
    with pytest.raises(PipelineError, match="depth head parameter hidden=0"):
        check_params("00_data", **{"depth.hidden": 0})
    cfg = check_params("00_data", patterns="delay,flatten")
    assert cfg.gap_models() == ["delay"] and cfg.models() == ["delay", "flatten"]
    assert check_params("00_data").models() == ["parallel", "delay", "flatten", "depth"]


def test_the_tree_has_no_preset_names_and_takes_dotted_paths():
    """PipelineConfig holds its sub-configs as objects (no `*_preset` strings, no copies of their
    fields); a flat notebook name and its dotted path are the same override."""
    names = [f.name for f in dataclasses.fields(params.PipelineConfig)]
    assert not [n for n in names if n.endswith("_preset")]
    for group in ("codec", "lm", "lm_train", "depth", "data", "generate", "dependence"):
        assert dataclasses.is_dataclass(getattr(params.PIPELINE_PRESETS["tiny"], group))
    assert set(names) & set(params.PipelineConfig.ALIASES) == {"data"}  # aliases are paths (data: data.source)
    flat = check_params("00_data", codec_steps=30, lm_steps=7, align="none")
    dotted = check_params("00_data", **{"codec.steps": 30, "lm_train.steps": 7, "codec.mmd.align": "none"})
    assert flat == dotted and flat.codec.steps == 30 and flat.layout.variant == "none"
    assert check_params("00_data", **{"codec.model.quantizer.n_q": 2}).codec_config(0).model.quantizer.n_q == 2
    with pytest.raises(PipelineError, match="unknown parameter 'modle' of CodecTrainConfig"):
        check_params("00_data", **{"codec.modle.n_q": 2})
