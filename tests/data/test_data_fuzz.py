"""A fuzz folder of bad and odd entries: every one's fate (used, and how loud; or skipped, and why)."""
import os
import warnings

import numpy as np
import pytest
import soundfile as sf

from mmdlib.data.datasets import AudioFolder, SkippedAudioWarning

SR = 16000


def tone(seconds=1.0, sr=SR, amp=0.5, freq=440.0, channels=1):
    t = np.arange(round(seconds * sr)) / sr
    x = amp * np.sin(2 * np.pi * freq * t)
    return np.stack([x * (1 - 0.1 * c) for c in range(channels)], axis=1) if channels > 1 else x


def build(folder):
    """Writes the entries; returns {name: ("used", expected peak of its items) | ("skipped", reason)}."""
    fate = {}
    rng = np.random.default_rng(0)

    def wav(name, x, sr=SR, subtype="FLOAT", fmt=None, **expect):
        sf.write(folder / name, np.asarray(x, dtype=np.float64), sr, subtype=subtype, format=fmt)
        fate[name] = expect["fate"]

    # usable files, odd but valid: formats, depths, rates, channels, names, levels
    for i, (subtype, sr) in enumerate([("PCM_16", 16000), ("PCM_24", 44100), ("PCM_U8", 8000), ("FLOAT", 96000),
                                       ("DOUBLE", 22050), ("PCM_32", 48000)]):
        wav(f"depth{i}_{subtype}.wav", tone(sr=sr), sr, subtype=subtype, fate=("used", 0.5))
    for ch in (2, 6):
        wav(f"channels{ch}.wav", tone(channels=ch), fate=("used", None))
    wav("flac_file.flac", tone(), subtype="PCM_16", fmt="FLAC", fate=("used", 0.5))
    wav("vorbis.ogg", tone(), subtype="VORBIS", fmt="OGG", fate=("used", None))
    wav("ÜNÏCÖDE ♪ name.wav", tone(), fate=("used", 0.5))
    wav("UPPER.WAV", tone(), fate=("used", 0.5))
    wav("quiet.wav", tone(amp=0.01), fate=("used", 0.01))
    wav("loud_float.wav", tone(amp=3.0), fate=("used", 1.0))              # scaled to full scale
    one_click = tone(amp=0.3)
    one_click[SR // 2] = 1e6
    wav("one_click.wav", one_click, fate=("used", 0.3))                    # the music keeps its level
    clicks = tone(amp=0.2)
    clicks[rng.choice(len(clicks), 1, replace=False)] = -50.0
    wav("negative_click.wav", clicks, fate=("used", 0.2))
    overshoot = np.clip(tone(amp=1.05), -1.02, 1.02)
    wav("overshoot.wav", overshoot, fate=("used", 1.0))
    wav("dc_plus_tone.wav", tone(amp=0.3) + 0.2, fate=("used", None))
    wav("noise.wav", rng.uniform(-0.5, 0.5, SR), fate=("used", None))
    wav("exactly_one_crop.wav", tone(seconds=0.5), fate=("used", 0.5))
    sub = folder / "nested" / "deeper"
    sub.mkdir(parents=True)
    sf.write(sub / "inside.wav", tone(), SR, subtype="FLOAT")
    fate["nested/deeper/inside.wav"] = ("used", 0.5)

    # unusable audio
    wav("zeros.wav", np.zeros(SR), fate=("skipped", "silent"))
    wav("near_silent.wav", tone(amp=1e-6), fate=("skipped", "silent"))
    wav("dc_only.wav", np.full(SR, 0.3), fate=("skipped", "constant"))
    wav("dc_negative.wav", np.full(SR, -0.7), fate=("skipped", "constant"))
    silent_click = np.zeros(SR)
    silent_click[100] = 1e6
    wav("silence_and_a_click.wav", silent_click, fate=("skipped", "clicks"))
    nan = tone()
    nan[10] = np.nan
    wav("nan.wav", nan, fate=("skipped", "NaN"))
    inf = tone()
    inf[10] = np.inf
    wav("inf.wav", inf, fate=("skipped", "NaN or inf"))
    wav("too_short.wav", tone(seconds=0.1), fate=("skipped", "too short"))
    wav("one_sample.wav", tone(seconds=1 / SR), fate=("skipped", "too short"))
    for i, junk in enumerate([b"", b"RIFF", b"RIFF\x00\x00\x00\x00WAVEfmt ", bytes(rng.integers(0, 256, 4096, dtype=np.uint8)),
                              b"OggS" + bytes(200), b"fLaC" + bytes(100), b"ID3" + bytes(300), b"<html>not audio</html>"]):
        for ext in (".wav", ".ogg", ".flac", ".mp3") if i < 2 else (".wav",):
            name = f"junk{i}{ext}"
            (folder / name).write_bytes(junk)
            fate[name] = ("skipped", "")
    good = folder / "depth0_PCM_16.wav"
    for cut in (44, 100, 1000):  # truncated copies of a good file
        name = f"truncated{cut}.wav"
        (folder / name).write_bytes(good.read_bytes()[:cut])
        fate[name] = ("skipped", "")
    wrong_ext = folder / "text_named.mp3"
    wrong_ext.write_text("hello")
    fate["text_named.mp3"] = ("skipped", "")

    # entries that are not files
    (folder / "a_directory.wav").mkdir()
    fate["a_directory.wav"] = ("skipped", "a directory")
    os.symlink(folder / "does_not_exist.wav", folder / "broken_link.wav")
    fate["broken_link.wav"] = ("skipped", "broken symbolic link")
    os.symlink(folder / "depth0_PCM_16.wav", folder / "good_link.wav")
    fate["good_link.wav"] = ("used", 0.5)
    if hasattr(os, "mkfifo"):
        os.mkfifo(folder / "pipe.wav")
        fate["pipe.wav"] = ("skipped", "not a regular file")

    # ignored: no audio extension
    (folder / "notes.txt").write_text("not audio")
    (folder / "README").write_text("not audio")
    return fate


def test_fuzz_folder_every_entry_has_its_fate(tmp_path):
    fate = build(tmp_path)
    assert len(fate) >= 50
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = AudioFolder(tmp_path, SR, 0.5, split="valid", valid_fraction=0.999, test_fraction=0, eval_crops=2)
    ours = [w for w in caught if issubclass(w.category, SkippedAudioWarning)]
    assert len(ours) == 1
    skipped = {os.path.relpath(p, tmp_path): reason for p, reason in ds.skipped}
    used = {p.relative_to(tmp_path).as_posix(): i for i, p in enumerate(ds.paths)}
    assert set(skipped) | set(used) == set(fate), "every audio entry is either used or listed"
    assert not set(skipped) & set(used)
    message = str(ours[0].message)
    for name, (what, detail) in fate.items():
        if what == "skipped":
            assert name in skipped, f"{name} should be skipped ({detail})"
            assert detail in skipped[name], f"{name}: {skipped[name]!r} should say {detail!r}"
            assert name in message
            continue
        assert name in used, f"{name} should be used, was skipped: {skipped.get(name)}"
        f = used[name]
        items = [i for i, (g, _) in enumerate(ds.crops) if g == f]
        assert items, f"{name}: no crop"
        assert max(float(ds[i].abs().max()) for i in items) <= 1.0  # clicks clipped
        level = max(float(ds[i].abs().quantile(0.999)) for i in items)  # the music's level
        if detail is not None:
            assert level == pytest.approx(detail, rel=0.03, abs=2e-3), name


def test_too_few_files_for_the_split_says_why(tmp_path):
    for i in range(3):
        sf.write(tmp_path / f"f{i}.wav", tone(), SR)
    splits = {}
    for split in ("train", "valid", "test"):
        try:
            AudioFolder(tmp_path, SR, 0.5, split=split)
            splits[split] = "ok"
        except ValueError as e:
            splits[split] = str(e)
    failed = [m for m in splits.values() if m != "ok"]
    assert failed and all("split by a hash of their path" in m and "add files" in m for m in failed)
