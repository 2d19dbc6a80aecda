"""The `mmdlib` command: a codec on a user's files, generation from an LM, bad input."""
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from mmdlib import cli
from mmdlib.codec.model import Codec, codec_preset
from mmdlib.lm.model import TokenLM, lm_config
from mmdlib.train.checkpoint import file_record
from mmdlib.train.lm import save_model


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An (untrained) tiny codec and a small delay LM that records it, and a second codec."""
    root = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    for name in ("codec", "other"):
        (root / name).mkdir()
        Codec(codec_preset("tiny")).save(root / name / "codec.pt")
    (root / "lm").mkdir()
    lm_cfg = lm_config("small", pattern="delay", dim=32, n_layers=1)
    save_model(root / "lm" / "lm.pt", lm_cfg, TokenLM(lm_cfg), None, file_record(root / "codec" / "codec.pt"))
    return root


def _stereo_44k(path, seconds=1.3):
    t = np.arange(round(44100 * seconds)) / 44100
    x = 0.3 * np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)], axis=1)
    sf.write(path, x, 44100)


def test_help_lists_the_subcommands():
    out = subprocess.run([sys.executable, "-m", "mmdlib", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for name in ("codec", "generate", "train-codec", "train-lm", "bench"):
        assert name in out.stdout


def test_reconstruct_a_stereo_44k_file_keeps_its_duration_at_the_codec_rate(runs, tmp_path, capsys):
    _stereo_44k(tmp_path / "song.wav")
    assert cli.main(["codec", "reconstruct", str(tmp_path / "song.wav"), str(tmp_path / "out.wav"),
                     "--codec", str(runs / "codec")]) == 0
    info = sf.info(str(tmp_path / "out.wav"))
    assert info.samplerate == 16000 and info.channels == 1 and info.frames == round(1.3 * 16000)
    err = capsys.readouterr().err
    assert "mixed down from 2 channels" in err and "resampled 44100 -> 16000 Hz" in err


def test_encode_then_decode_is_reconstruct_and_a_foreign_codec_is_refused(runs, tmp_path, capsys):
    _stereo_44k(tmp_path / "a.wav", 0.8)
    codec = str(runs / "codec")
    assert cli.main(["codec", "encode", str(tmp_path / "a.wav"), "--codec", codec, "--out", str(tmp_path / "codes")]) == 0
    item = torch.load(tmp_path / "codes" / "a.codes.pt", weights_only=True)
    assert item["codes"].shape[0] == 4 and item["codec"]["sha256"] == file_record(runs / "codec" / "codec.pt")["sha256"]
    assert cli.main(["codec", "decode", str(tmp_path / "codes"), "--codec", codec, "--out", str(tmp_path / "dec")]) == 0
    assert cli.main(["codec", "reconstruct", str(tmp_path / "a.wav"), str(tmp_path / "rec.wav"), "--codec", codec]) == 0
    np.testing.assert_array_equal(sf.read(tmp_path / "dec" / "a.wav")[0], sf.read(tmp_path / "rec.wav")[0])
    assert cli.main(["codec", "decode", str(tmp_path / "codes"), "--codec", str(runs / "other"),
                     "--out", str(tmp_path / "dec2")]) == 2
    assert "decode with the codec that encoded it" in capsys.readouterr().err and not (tmp_path / "dec2" / "a.wav").exists()


def test_generate_writes_n_clips_of_s_seconds_and_continues_a_prompt(runs, tmp_path):
    assert cli.main(["generate", "--lm", str(runs / "lm"), "--seconds", "0.5", "--n", "3", "--out", str(tmp_path / "g")]) == 0
    wavs = sorted((tmp_path / "g").glob("sample*.wav"))
    assert len(wavs) == 3 and all(sf.info(str(w)).frames == 8000 for w in wavs)
    assert json.loads((tmp_path / "g" / "generate.json").read_text())["codec"]["path"].endswith("codec/codec.pt")
    _stereo_44k(tmp_path / "prompt.wav", 0.4)
    assert cli.main(["generate", "--lm", str(runs / "lm"), "--seconds", "0.2", "--prompt", str(tmp_path / "prompt.wav"),
                     "--out", str(tmp_path / "p")]) == 0
    info = json.loads((tmp_path / "p" / "generate.json").read_text())
    assert info["prompt_frames"] == 20 and info["frames"] == 30 and sf.info(str(tmp_path / "p" / "sample0.wav")).frames == 9600


def test_generate_refuses_a_codec_the_lm_was_not_trained_on(runs, tmp_path, capsys):
    assert cli.main(["generate", "--lm", str(runs / "lm"), "--codec", str(runs / "other"), "--out", str(tmp_path)]) == 2
    assert "the LM was trained on the codes of" in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_a_corrupt_file_gets_a_clear_error_and_leaves_no_output(runs, tmp_path, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really a wav file")
    assert cli.main(["codec", "reconstruct", str(bad), str(tmp_path / "out.wav"), "--codec", str(runs / "codec")]) == 2
    err = capsys.readouterr().err
    assert "bad.wav" in err and "unreadable" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.wav"]  # no output, no partial file
    # in a folder: the corrupt file is skipped and listed, the others are written, exit status 1
    (tmp_path / "music").mkdir()
    bad.rename(tmp_path / "music" / "bad.wav")
    _stereo_44k(tmp_path / "music" / "good.wav", 0.5)
    assert cli.main(["codec", "reconstruct", str(tmp_path / "music"), str(tmp_path / "rec"), "--codec", str(runs / "codec")]) == 1
    assert "1 of 2 files skipped" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "rec").iterdir()) == ["good.wav"]
    assert cli.main(["codec", "encode", str(tmp_path / "nope.wav"), "--codec", str(runs / "codec"), "--out", str(tmp_path)]) == 2
    assert cli.main(["codec", "encode", str(tmp_path / "music"), "--codec", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "no codec there" in capsys.readouterr().err


def test_metrics_prints_and_plots_a_running_training(tmp_path, capsys):
    lines = [{"step": 20, "mel_distance": 1.0, "chroma": 0.5}, {"step": 40, "mel_distance": 0.8, "chroma": 0.6},
             {"step": 40, "mel_distance": 0.7, "chroma": 0.65}]  # step 40 again: a resumed run
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert cli.main(["metrics", str(tmp_path), "--plot", str(tmp_path / "c.png")]) == 0
    out = capsys.readouterr().out
    assert "step 40: mel_distance 0.7, chroma 0.65" in out and "step 20" in out and (tmp_path / "c.png").stat().st_size
    assert cli.main(["metrics", str(tmp_path / "none")]) == 2


def test_a_long_prompt_is_cut_to_its_opening_and_too_long_a_request_is_refused(runs, tmp_path, capsys):
    _stereo_44k(tmp_path / "long.wav", 5.0)
    assert cli.main(["generate", "--lm", str(runs / "lm"), "--seconds", "0.2", "--prompt", str(tmp_path / "long.wav"),
                     "--prompt-seconds", "0.5", "--out", str(tmp_path / "p")]) == 0
    assert json.loads((tmp_path / "p" / "generate.json").read_text())["prompt_frames"] == 25
    assert cli.main(["generate", "--lm", str(runs / "lm"), "--seconds", "100", "--out", str(tmp_path / "q")]) == 2
    assert "lower --seconds" in capsys.readouterr().err and not (tmp_path / "q").exists()


def test_train_and_bench_pass_their_arguments_through(capsys):
    assert cli.main(["bench", "--help"]) == 0 and "usage: python -m mmdlib.bench" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:  # train-codec's own parser: its --help
        cli.main(["train-codec", "--help"])
    assert e.value.code == 0 and "--run-dir" in capsys.readouterr().out
