"""`--set KEY=VALUE`: typed by the config's fields, nested settings keep their preset's values."""
import pytest

from mmdlib.codec.discriminator import DiscriminatorConfig
from mmdlib.train.codec import main as train_codec_main
from mmdlib.train.config import train_preset
from mmdlib.train.overrides import apply_overrides


def test_values_are_typed_by_the_fields():
    base = train_preset("tiny")
    cfg = apply_overrides(base, ["steps=1e3", "mmd_weight=100", "lr=3e-4", "discriminator=paper",
                                 "betas=[0.8,0.99]", "cache_dir=none", "data=some/folder", "model.quantizer.n_q=8"])
    assert (cfg.steps, cfg.mmd_weight, cfg.lr, cfg.discriminator) == (1000, 100.0, 3e-4, DiscriminatorConfig.paper())
    assert cfg.model.quantizer.n_q == 8 and cfg.model.quantizer.codebook_size == base.model.quantizer.codebook_size
    assert apply_overrides(cfg, ["discriminator=none"]).discriminator is None
    assert type(cfg.steps) is int and type(cfg.mmd_weight) is float
    assert cfg.betas == (0.8, 0.99) and cfg.cache_dir is None and cfg.data == "some/folder"
    assert base.steps == train_preset("tiny").steps != 1000  # a copy


def test_nested_settings_keep_the_preset():
    base = train_preset("tiny")
    assert base.mmd.normalize_distance  # the tiny preset's kernel
    for item in ("mmd_align=none", "mmd.align=none"):
        cfg = apply_overrides(base, [item])
        assert cfg.mmd.align == "none" and cfg.mmd.normalize_distance  # not rebuilt from defaults
    cfg = apply_overrides(base, ["mmd.scales=[1,10]", "mmd.groups=[[0,1],[2,3]]"])
    assert cfg.mmd.scales == (1.0, 10.0) and cfg.mmd.groups == [[0, 1], [2, 3]]


@pytest.mark.parametrize("item,match", [
    ("mmd_weight=nan", "finite number"), ("mmd_weight=inf", "finite number"), ("mmd_weight=abc", "a number"),
    ("steps=1.5", "integer"), ("steps=ten", "integer"), ("seed=1e30", "integer"),
    ("stepz=3", r"unknown parameter 'stepz'.*'steps'"), ("mmd=3", "group of settings"),
    ("mmd.aling=none", "unknown parameter 'aling' of MMDConfig"), ("steps", "KEY=VALUE"),
    ("discriminator=maybe", r"none or one of \['paper', 'tiny'\]"), ("balancer=maybe", "true or false"),
    ("discriminator.n_filters=8", "off \\(None\\)"), ("mmd.align=sideways", "align"),
])
def test_bad_values_are_refused_by_name(item, match):
    with pytest.raises(ValueError, match=match):
        apply_overrides(train_preset("tiny"), [item])


def test_the_command_line_reports_a_bad_override(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train_codec_main(["--run-dir", str(tmp_path), "--set", "mmd_weight=nan"])
    assert e.value.code == 2 and "mmd_weight='nan': expected a finite number" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing started


def test_items_are_checked_together_whatever_their_order():
    """The config's checks see the final combination: steps=2 with mmd_weight before mmd_start is fine."""
    cfg = apply_overrides(train_preset("tiny"), ["steps=2", "mmd_weight=10", "mmd_start=1", "mmd.align=none"])
    assert (cfg.steps, cfg.mmd_weight, cfg.mmd_start, cfg.mmd.align, cfg.mmd.normalize_distance) == (2, 10.0, 1, "none", True)
    with pytest.raises(ValueError, match=r"mmd_start=400 >= steps=2: the MMD loss would never be on"):
        apply_overrides(train_preset("tiny"), ["steps=2", "mmd_weight=10"])


def test_python_values_are_checked_against_the_type():
    """The notebooks pass Python values: a scalar where a tuple is expected, an int for a float, a
    whole config; a bool is not an integer."""
    base = train_preset("tiny")
    cfg = apply_overrides(base, {"betas": 0.5, "lr": 1, "mmd.scales": [1, 10]})
    assert cfg.betas == (0.5,) and cfg.lr == 1.0 and type(cfg.lr) is float and cfg.mmd.scales == (1.0, 10.0)
    with pytest.raises(ValueError, match="steps=True: expected an integer"):
        apply_overrides(base, {"steps": True})


def test_both_command_lines_take_set_device_and_seed(tmp_path, capsys):
    """--device and --seed as the docs show them, and --set for train_lm too (model.* is the LM's
    architecture), all through the one parser."""
    import torch

    from mmdlib.train.lm import main as train_lm_main

    with pytest.raises(SystemExit) as e:
        train_codec_main(["--run-dir", str(tmp_path / "c"), "--device", "gpu"])
    assert e.value.code == 2 and "device" in capsys.readouterr().err
    codes = torch.randint(0, 16, (4, 2, 24), generator=torch.Generator().manual_seed(0))
    torch.save(codes, tmp_path / "train.pt")
    history = train_lm_main(["--train", str(tmp_path / "train.pt"), "--valid", str(tmp_path / "train.pt"),
                             "--run-dir", str(tmp_path / "lm"), "--codebook-size", "16", "--seed", "3",
                             "--set", "steps=2", "seq_frames=16", "eval_every=2", "warmup=1", "progress=false",
                             "model.dim=32", "model.n_layers=1"])
    assert [r["step"] for r in history] == [1, 2]
    saved = torch.load(tmp_path / "lm" / "lm.pt")
    assert saved["config"]["dim"] == 32 and saved["config"]["n_layers"] == 1
    with pytest.raises(SystemExit) as e:
        train_lm_main(["--train", str(tmp_path / "train.pt"), "--valid", str(tmp_path / "train.pt"),
                       "--run-dir", str(tmp_path / "lm2"), "--set", "model.dimm=3"])
    assert e.value.code == 2 and "unknown parameter 'dimm' of LMConfig" in capsys.readouterr().err
