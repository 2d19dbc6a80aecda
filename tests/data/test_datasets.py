"""Tests for mmdlib.data.audio and mmdlib.data.datasets (synthetic music, audio folders)."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mmdlib.data import datasets as data_mod
from mmdlib.data.audio import AudioError, load_audio, save_audio
from mmdlib.data.datasets import AudioFolder, SkippedAudioWarning, file_split, make_dataset
from mmdlib.data.synth import TIMBRES, SynthConfig, SyntheticMusic, _Notes, _render_notes, synth_clip

SR = 16000


def sine(freq: float, seconds: float, sr: int, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(round(seconds * sr)) / sr)).astype(np.float32)


# ---------------------------------------------------------------------------------- synthetic


def test_synth_deterministic_by_seed():
    a, b, c = synth_clip(3, 1.0), synth_clip(3, 1.0), synth_clip(4, 1.0)
    assert a.shape == (1, SR) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 0.1


@pytest.mark.parametrize("seconds", [0.5, 2.0])
def test_synth_clips_are_valid_audio(seconds):
    cfg = SynthConfig()
    for seed in range(12):
        x = synth_clip(seed, seconds, cfg)
        assert x.shape == (1, round(seconds * SR))
        assert torch.isfinite(x).all()
        peak = x.abs().max().item()
        assert cfg.peak_range[0] - 1e-6 <= peak <= cfg.peak_range[1] + 1e-6 <= 1
        assert x.pow(2).mean().sqrt() > 0.01 * peak  # not silent, not one lone click


def test_synth_is_tonal_not_noise():
    """Music is a few strong spectral lines: low spectral flatness, most energy below 4 kHz."""
    flat, low = [], []
    for seed in range(8):
        x = synth_clip(seed, 2.0)[0].numpy().astype(np.float64)
        power = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2 + 1e-20
        freqs = np.fft.rfftfreq(len(x), 1 / SR)
        band = (freqs > 50) & (freqs < 4000)
        flat.append(np.exp(np.log(power[band]).mean()) / power[band].mean())
        low.append(power[freqs < 4000].sum() / power.sum())
    noise = np.abs(np.fft.rfft(np.random.default_rng(0).standard_normal(2 * SR))) ** 2
    noise_flat = np.exp(np.log(noise).mean()) / noise.mean()
    assert noise_flat > 0.5
    assert max(flat) < 0.15 and np.median(flat) < 0.05, flat  # drums add some noise
    assert min(low) > 0.8, low


def test_single_note_is_harmonic_and_band_limited():
    """A 440 Hz 'strings' note: lines at k * 440 Hz, nothing between them or above 0.45 sr."""
    notes = _Notes()
    notes.add(0.0, 1.0, 69, 1.0)  # A4
    cfg = SynthConfig()
    x = _render_notes(notes, TIMBRES["strings"], 2 * SR, np.random.default_rng(0), cfg)
    seg = x[SR // 2 : SR // 2 + 8000].astype(np.float64)  # sustain part: 0.5 s, 2 Hz bins
    db = 10 * np.log10(np.abs(np.fft.rfft(seg * np.hanning(len(seg)))) ** 2 + 1e-20)
    freqs = np.fft.rfftfreq(len(seg), 1 / SR)
    ref = db.max()
    assert abs(freqs[db.argmax()] - 440) <= 2
    for k in range(1, 17):
        f = 440 * k
        at = db[np.abs(freqs - f) <= 4].max()
        if f < 0.45 * SR:
            assert at > ref - 40, (k, at - ref)  # harmonic present (1/k amplitude)
        else:
            assert at < ref - 60, (k, at - ref)  # removed: no aliasing
    between = db[np.abs(((freqs + 220) % 440) - 220) > 60]  # away from every harmonic
    assert between.max() < ref - 40


def test_clarinet_has_weak_even_harmonics():
    notes = _Notes()
    notes.add(0.0, 1.0, 57, 1.0)  # A3, 220 Hz
    x = _render_notes(notes, TIMBRES["clarinet"], SR, np.random.default_rng(1), SynthConfig())
    spec = np.abs(np.fft.rfft(x[4000:12000] * np.hanning(8000)))
    freqs = np.fft.rfftfreq(8000, 1 / SR)

    def amp(k):
        return spec[np.abs(freqs - 220 * k) <= 4].max()

    assert all(amp(k + 1) < 0.2 * amp(k) for k in (1, 3, 5))  # even ones far below odd ones


def test_synth_sample_rate_and_rejects_bad_length():
    x = synth_clip(0, 0.25, SynthConfig.paper())
    assert x.shape == (1, 8000)
    with pytest.raises(ValueError, match="seconds"):
        synth_clip(0, 0.0)


def test_synthetic_dataset_splits_are_disjoint_and_deterministic():
    splits = {s: SyntheticMusic(2000, 0.1, SR, seed=0, split=s) for s in ("train", "valid", "test")}
    seeds = {s: {d.item_seed(i) for i in range(len(d))} for s, d in splits.items()}
    assert all(len(v) == 2000 for v in seeds.values())
    assert not (seeds["train"] & seeds["valid"] or seeds["train"] & seeds["test"]
                or seeds["valid"] & seeds["test"])
    other_seed = SyntheticMusic(2000, 0.1, SR, seed=1, split="train")
    assert not seeds["train"] & {other_seed.item_seed(i) for i in range(2000)}
    again = SyntheticMusic(2000, 0.1, SR, seed=0, split="train")
    assert torch.equal(again[5], splits["train"][5])
    assert again.item_seed(np.int64(5)) == again.item_seed(torch.tensor(5)) == again.item_seed(5)
    assert not torch.equal(splits["train"][5], splits["valid"][5])
    assert splits["train"][0].shape == (1, 1600)
    with pytest.raises(IndexError):
        splits["train"][2000]
    with pytest.raises(ValueError, match="split"):
        SyntheticMusic(10, 0.1, SR, split="dev")


# ---------------------------------------------------------------------------------- audio I/O


def test_save_load_round_trip(tmp_path):
    x = sine(440, 0.5, SR)
    save_audio(tmp_path / "a.wav", torch.from_numpy(x)[None], SR)
    save_audio(tmp_path / "b.wav", x, SR, subtype="FLOAT")
    a, b = load_audio(tmp_path / "a.wav", SR), load_audio(tmp_path / "b.wav", SR)
    assert a.shape == b.shape == (1, len(x)) and a.dtype == torch.float32
    assert np.abs(a[0].numpy() - x).max() <= 1 / 32768 + 1e-7  # 16-bit quantisation
    assert np.array_equal(b[0].numpy(), x)
    with pytest.raises(ValueError, match="mono"):
        save_audio(tmp_path / "c.wav", np.zeros((2, 10)), SR)


def test_load_downmixes_and_resamples(tmp_path):
    stereo = np.stack([sine(1000, 1.0, 22050), sine(1000, 1.0, 22050, amp=0.3)], axis=1)
    sf.write(tmp_path / "s.flac", stereo, 22050)
    x = load_audio(tmp_path / "s.flac", SR)
    assert x.shape == (1, SR)  # 1 s at 22050 -> 16000 samples
    spec = np.abs(np.fft.rfft(x[0].numpy()))
    assert abs(np.argmax(spec) - 1000) <= 1  # 1 Hz bins: the tone stays at 1 kHz
    assert abs(x[0, 4000:12000].abs().max().item() - 0.4) < 0.01  # mean of the channels
    sf.write(tmp_path / "long.wav", sine(300, 2.5, 44100), 44100)
    assert load_audio(tmp_path / "long.wav", SR).shape == (1, 40000)


def write_bad_files(folder: Path) -> dict[str, str]:
    """Writes one unusable file per failure mode; returns {file name: expected reason word}."""
    sf.write(folder / "nan.wav", np.array([0.1, np.nan, 0.2] * 8000, np.float32), SR, subtype="FLOAT")
    sf.write(folder / "inf.wav", np.array([0.1, np.inf] * 8000, np.float32), SR, subtype="FLOAT")
    sf.write(folder / "silent.wav", np.zeros(SR, np.float32), SR)
    sf.write(folder / "short.wav", sine(440, 0.1, SR), SR)
    sf.write(folder / "noframes.wav", np.zeros(0, np.float32), SR)
    (folder / "empty.wav").write_bytes(b"")
    (folder / "text.wav").write_text("this is not audio\n" * 50)
    garbage = np.random.default_rng(0).integers(0, 256, 4000, np.uint8).tobytes()
    (folder / "corrupt.ogg").write_bytes(b"OggS" + garbage)
    (folder / "corrupt.flac").write_bytes(b"fLaC" + garbage)
    return {"nan.wav": "NaN", "inf.wav": "NaN or inf", "silent.wav": "silent", "short.wav": "too short",
            "noframes.wav": "empty", "empty.wav": "unreadable", "text.wav": "unreadable",
            "corrupt.ogg": "unreadable", "corrupt.flac": "unreadable"}


def test_load_audio_errors_name_file_and_reason(tmp_path):
    expected = write_bad_files(tmp_path)
    for name, reason in expected.items():
        with pytest.raises(AudioError, match=reason) as info:
            load_audio(tmp_path / name, SR, min_samples=SR // 2)
        assert name in str(info.value) and isinstance(info.value, ValueError)


# ---------------------------------------------------------------------------------- folders


@pytest.fixture
def music_folder(tmp_path) -> Path:
    root = tmp_path / "music"
    (root / "sub" / "deeper").mkdir(parents=True)
    sf.write(root / "good.wav", np.stack([sine(220, 3.0, 22050)] * 2, axis=1), 22050)
    sf.write(root / "sub" / "tone.FLAC", sine(330, 2.0, SR), SR)
    sf.write(root / "sub" / "deeper" / "clip.ogg", sine(550, 1.5, 32000), 32000)
    (root / "notes.txt").write_text("ignored: not an audio extension")
    return root


def test_folder_skips_bad_files_with_one_warning(music_folder):
    expected = write_bad_files(music_folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = AudioFolder(music_folder, SR, 0.5, valid_fraction=0, test_fraction=0)
    ours = [w for w in caught if issubclass(w.category, SkippedAudioWarning)]
    assert len(ours) == 1
    message = str(ours[0].message)
    for name, reason in expected.items():
        line = next(x for x in message.splitlines() if x.strip().split(":")[0].endswith(name))
        assert reason in line
    assert "good.wav" not in message and "notes.txt" not in message
    assert sorted(p.name for p in ds.paths) == ["clip.ogg", "good.wav", "tone.FLAC"]
    assert len(ds.skipped) == len(expected)
    assert ds.lengths.tolist() == [3 * SR, 3 * SR // 2, 2 * SR]  # resampled to 16 kHz
    x = ds[0]
    assert x.shape == (1, SR // 2) and x.dtype == torch.float32 and torch.isfinite(x).all()


def test_folder_scales_files_that_exceed_full_scale(tmp_path):
    sf.write(tmp_path / "loud.wav", sine(440, 1.0, SR, amp=2.0), SR, subtype="FLOAT")
    sf.write(tmp_path / "ok.wav", sine(440, 1.0, SR, amp=0.5), SR, subtype="FLOAT")
    ds = AudioFolder(tmp_path, SR, 1.0, split="valid", valid_fraction=0.999, test_fraction=0, eval_crops=1)
    peaks = {p.name: ds[i].abs().max().item() for i, p in enumerate(ds.paths)}
    assert peaks["loud.wav"] == pytest.approx(1.0, abs=1e-6)
    assert peaks["ok.wav"] == pytest.approx(0.5, abs=1e-3)


def test_folder_without_usable_audio_raises(tmp_path):
    with pytest.raises(ValueError, match="nowhere"):
        AudioFolder(tmp_path / "nowhere", SR, 1.0)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match="empty_dir"):
        AudioFolder(tmp_path / "empty_dir", SR, 1.0)
    (tmp_path / "bad_dir").mkdir()
    write_bad_files(tmp_path / "bad_dir")
    with pytest.warns(SkippedAudioWarning), pytest.raises(ValueError, match="bad_dir"):
        AudioFolder(tmp_path / "bad_dir", SR, 1.0, valid_fraction=0, test_fraction=0)


def test_training_crops_are_seeded(music_folder):
    kw = dict(valid_fraction=0, test_fraction=0, items_per_epoch=20)
    a, b = AudioFolder(music_folder, SR, 0.25, seed=0, **kw), AudioFolder(music_folder, SR, 0.25, seed=0, **kw)
    c = AudioFolder(music_folder, SR, 0.25, seed=1, **kw)
    assert len(a) == 20
    crops = [a.crop(i) for i in range(20)]
    assert crops == [b.crop(i) for i in range(20)]
    assert all(torch.equal(a[i], b[i]) for i in range(20))
    assert crops != [c.crop(i) for i in range(20)]
    assert len(set(crops)) == 20  # random offsets, not a few repeated ones
    assert len({f for f, _ in crops}) == 3
    a.set_epoch(1)
    assert crops != [a.crop(i) for i in range(20)]
    a.set_epoch(0)
    assert crops == [a.crop(i) for i in range(20)]
    for f, start in crops:
        assert 0 <= start <= a.lengths[f] - a.n_samples
    # default epoch size: as many crops as fit end to end in 6.5 s of audio
    assert len(AudioFolder(music_folder, SR, 0.25, valid_fraction=0, test_fraction=0)) == 26


def test_silent_crops_are_avoided(tmp_path):
    x = np.zeros(4 * SR, np.float32)
    x[SR : 2 * SR] = sine(440, 1.0, SR)  # only the 2nd second is audible
    sf.write(tmp_path / "gaps.wav", x, SR, subtype="FLOAT")
    train = AudioFolder(tmp_path, SR, 0.25, valid_fraction=0, test_fraction=0, items_per_epoch=50)
    audible = sum(train[i].abs().max().item() > 0.1 for i in range(50))
    assert audible >= 45  # a single draw is audible with p ~ 0.3; 8 draws: ~ 0.94
    valid = AudioFolder(tmp_path, SR, 0.25, split="valid", valid_fraction=0.999, test_fraction=0, eval_crops=13)
    # 13 offsets 5000 samples apart; kept: those overlapping the audible second [16000, 32000)
    assert [start for _, start in valid.crops] == [15000, 20000, 25000, 30000]


def test_eval_crops_are_fixed(music_folder):
    # all files in one split: fractions chosen so that every file is "valid"
    ds = AudioFolder(music_folder, SR, 0.5, split="valid", valid_fraction=0.999, test_fraction=0, eval_crops=3)
    assert len(ds.paths) == 3 and len(ds) == 9
    ds.set_epoch(5)
    assert ds.crop(0) == (0, 0) and ds.crop(2) == (0, ds.lengths[0] - ds.n_samples)
    again = AudioFolder(music_folder, SR, 0.5, split="valid", valid_fraction=0.999, test_fraction=0,
                        eval_crops=3, seed=7)
    assert all(torch.equal(ds[i], again[i]) for i in range(len(ds)))


def test_file_split_is_stable_and_proportional():
    names = [f"album{i // 10}/track{i}.ogg" for i in range(5000)]
    splits = [file_split(n, 0.1, 0.2) for n in names]
    assert abs(splits.count("test") / 5000 - 0.2) < 0.02
    assert abs(splits.count("valid") / 5000 - 0.1) < 0.02
    assert splits == [file_split(n, 0.1, 0.2) for n in names]  # a function of the path alone
    # growing the valid fraction only moves files from train to valid
    grown = [file_split(n, 0.15, 0.2) for n in names]
    assert all(g == s or (s, g) == ("train", "valid") for s, g in zip(splits, grown))


def test_cache_round_trip(music_folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    kw = dict(valid_fraction=0, test_fraction=0, items_per_epoch=8)
    plain = AudioFolder(music_folder, SR, 0.5, **kw)
    first = AudioFolder(music_folder, SR, 0.5, cache_dir=cache, **kw)
    assert len(list(cache.glob("*.npy"))) == 3
    monkeypatch.setattr(data_mod, "decode_audio", lambda *a: pytest.fail("decoded despite cache"))
    second = AudioFolder(music_folder, SR, 0.5, cache_dir=cache, **kw)
    for a, b, c in zip(plain.audio, first.audio, second.audio):
        assert np.array_equal(a, b) and np.array_equal(b, c)
    assert all(torch.equal(plain[i], second[i]) for i in range(8))
    monkeypatch.undo()
    # a changed file gets a new cache entry
    sf.write(music_folder / "good.wav", sine(440, 2.0, SR), SR)
    third = AudioFolder(music_folder, SR, 0.5, cache_dir=cache, **kw)
    assert len(list(cache.glob("*.npy"))) == 4 and third.lengths[0] == 2 * SR


def test_make_dataset(music_folder):
    syn = make_dataset("synthetic", "valid", SR, 0.5, 7, seed=3)
    assert isinstance(syn, SyntheticMusic) and len(syn) == 7 and syn[0].shape == (1, SR // 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean folder must not warn
        fol = make_dataset(str(music_folder), "train", SR, 0.5, 11, seed=3)
    assert isinstance(fol, AudioFolder) and len(fol) == 11
