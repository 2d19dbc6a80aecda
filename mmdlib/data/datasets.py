"""Training data: audio folders, the dataset factory and batching (synthetic music: mmdlib.data.synth).

Every item is mono audio `c n` (c = 1) float32 with peak <= 1.

Audio folders (`AudioFolder`): every readable wav/flac/ogg/mp3 under a root, decoded, mono,
resampled, split train/valid/test by a hash of the file's relative path, cropped to fixed length.
`make_dataset("synthetic" | folder, split, ...)` builds either; `clip_batches` stacks clips.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from mmdlib.data.audio import AUDIO_EXTENSIONS, SILENCE_PEAK, AudioError, check_audio, decode_audio
from mmdlib.data.synth import SPLITS, SyntheticMusic, stable_seed


class SkippedAudioWarning(UserWarning):
    """Some files of an AudioFolder were unusable and left out."""


def file_split(relative_path: str, valid_fraction: float, test_fraction: float) -> str:
    """"train", "valid" or "test" from a hash of the path alone: adding files moves no others."""
    u = stable_seed("split", relative_path) / 2**63  # uniform in [0, 1)
    if u < test_fraction:
        return "test"
    if u < test_fraction + valid_fraction:
        return "valid"
    return "train"


def _cache_path(cache_dir: Path, path: Path, sample_rate: int) -> Path:
    st = path.stat()
    key = stable_seed(str(path.resolve()), st.st_mtime_ns, st.st_size, sample_rate)
    return cache_dir / f"{path.stem}-{sample_rate}-{key:016x}.npy"


def _decode_cached(path: Path, sample_rate: int, cache_dir: Path | None) -> np.ndarray:
    """decode_audio, through an .npy cache keyed by path, mtime, size and rate when cache_dir is
    set; cached arrays are memory-mapped (read-only), so they cost no RAM until cropped."""
    if cache_dir is None:
        return decode_audio(path, sample_rate)
    cached = _cache_path(cache_dir, path, sample_rate)
    if cached.exists():
        return np.load(cached, mmap_mode="r")
    wav = decode_audio(path, sample_rate)
    tmp = cached.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, wav)
    os.replace(tmp, cached)  # atomic: a concurrent reader never sees a partial file
    return np.load(cached, mmap_mode="r")


LEVEL_QUANTILE = 0.9999  # a file's robust peak: ignores the loudest 0.01 % of its samples


def robust_peak(wav: np.ndarray) -> float:
    """The LEVEL_QUANTILE quantile of |wav| (a strided subsample for long files): the level of the
    music, which a few clicks or overshooting samples do not move."""
    x = np.abs(np.asarray(wav[:: max(1, len(wav) // 2_000_000)], dtype=np.float32))
    return float(np.quantile(x, LEVEL_QUANTILE))


def not_a_file(path: Path) -> None:
    """AudioError for an entry with an audio extension that is no regular file."""
    if path.is_symlink() and not path.exists():
        raise AudioError(path, f"broken symbolic link (to {os.readlink(path)!r})")
    if path.is_dir():
        raise AudioError(path, "a directory, not an audio file")
    if not path.is_file():
        raise AudioError(path, "not a regular file (a pipe, socket or device): not read")


class AudioFolder(torch.utils.data.Dataset):
    """Fixed-length mono crops `1 n` (n = round(seconds * sample_rate)) of the audio files under
    `root` (recursive; .wav .flac .ogg .mp3, any case).

    - Split: by a hash of each file's path relative to root (see `file_split`); only the files of
      `split` are decoded.
    - Decoding happens at construction: mono downmix, resampling. Without cache_dir all decoded
      audio is held in RAM as float32 (4 bytes * sample_rate per second: 230 MB per hour at
      16 kHz). With cache_dir each file is stored once as .npy and memory-mapped afterwards.
    - Loudness: a file whose level exceeds full scale is scaled down by a per-file gain, 1 / its
      robust peak (the LEVEL_QUANTILE quantile of |x|, which a few clicks or decoder overshoots
      cannot move: a single 1e6 sample does not silence the music); items are then clipped to
      [-1, 1], so every item has peak <= 1. Files below full scale keep their level.
    - Unusable entries (unreadable, empty, NaN/inf, silent or constant after that gain, shorter
      than one crop; directories, broken links, pipes and other non-files with an audio
      extension) are skipped with a single SkippedAudioWarning listing each path and reason; a
      folder with none usable raises ValueError.
    - train: `items_per_epoch` random crops (default: as many as fit end to end in the split's
      audio), file chosen in proportion to its length, silent crops redrawn (up to 8 times);
      the crop of item i depends only on
      (seed, epoch, i): call `set_epoch(e)` for new crops each epoch.
    - valid/test: `eval_crops` evenly spaced crops per file (fewer for short files, silent ones
      dropped), fixed.
    """

    def __init__(
        self,
        root: str | Path,
        sample_rate: int,
        seconds: float,
        split: str = "train",
        seed: int = 0,
        valid_fraction: float = 0.1,
        test_fraction: float = 0.1,
        cache_dir: str | Path | None = None,
        items_per_epoch: int | None = None,
        eval_crops: int = 4,
    ):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if not (0 <= valid_fraction and 0 <= test_fraction and valid_fraction + test_fraction < 1):
            raise ValueError(f"need 0 <= valid_fraction, test_fraction and a sum < 1, got "
                             f"{valid_fraction}, {test_fraction}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"audio folder {str(self.root)!r} does not exist or is not a folder")
        self.sample_rate, self.seed, self.split, self.epoch = sample_rate, seed, split, 0
        self.n_samples = round(seconds * sample_rate)
        if self.n_samples <= 0:
            raise ValueError(f"seconds must be positive, got {seconds}")
        if cache_dir is not None:
            cache_dir = Path(cache_dir)
            cache_dir.mkdir(parents=True, exist_ok=True)

        entries = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
        splits = {p: file_split(p.relative_to(self.root).as_posix(), valid_fraction, test_fraction) for p in entries}
        paths = [p for p in entries if splits[p] == split]
        self.paths: list[Path] = []
        self.audio: list[np.ndarray] = []  # one `n` float32 array per usable file
        self.gains: list[float] = []  # 1 / robust peak for files louder than full scale, else 1
        skipped: list[AudioError] = []
        for p in paths:
            try:
                not_a_file(p)
                wav = _decode_cached(p, sample_rate, cache_dir)
                check_audio(wav, p, min_samples=self.n_samples)
                level = robust_peak(wav)
                if level < SILENCE_PEAK:
                    raise AudioError(p, f"silent apart from a few loud samples (clicks): robust peak {level:.2e} "
                                        f"< {SILENCE_PEAK:.0e}, peak {float(np.abs(wav).max()):.2e}")
                gain = min(1.0, 1.0 / level)
            except AudioError as e:
                skipped.append(e)
                continue
            self.paths.append(p)
            self.audio.append(wav)
            self.gains.append(gain)
        if skipped:
            lines = "\n".join(f"  {e.path}: {e.reason}" for e in skipped)
            warnings.warn(f"AudioFolder {str(self.root)!r} ({split}): skipped {len(skipped)} of "
                          f"{len(paths)} files:\n{lines}", SkippedAudioWarning, stacklevel=2)
        self.skipped = [(e.path, e.reason) for e in skipped]
        if not self.audio:
            counts = {s: sum(v == s for v in splits.values()) for s in SPLITS}
            hint = ("" if len(paths) else f"; files are split by a hash of their path (valid_fraction={valid_fraction}, "
                    f"test_fraction={test_fraction}): this folder's {len(entries)} audio entries fall "
                    + ", ".join(f"{n} in {s}" for s, n in counts.items())
                    + " — add files (about 10 or more) or change the fractions")
            raise ValueError(f"audio folder {str(self.root)!r} has no usable audio for split "
                             f"{split!r} ({len(paths)} candidate files, {len(skipped)} skipped){hint}")

        self.lengths = np.array([len(a) for a in self.audio])
        if split == "train":
            self.items_per_epoch = items_per_epoch or max(1, int(self.lengths.sum() // self.n_samples))
            self.crops: list[tuple[int, int]] = []
        else:  # fixed (file, offset) pairs
            self.crops = []
            for f, length in enumerate(self.lengths):
                offsets = np.linspace(0, length - self.n_samples, eval_crops).round().astype(int)
                self.crops += [(f, int(o)) for o in dict.fromkeys(offsets) if not self._silent(f, o)]

    @property
    def seconds_of_audio(self) -> float:
        return float(self.lengths.sum() / self.sample_rate)

    def set_epoch(self, epoch: int) -> None:
        """Select the training crops of `epoch` (no effect on valid/test)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.items_per_epoch if self.split == "train" else len(self.crops)

    def crop(self, index: int) -> tuple[int, int]:
        """(file index, start sample) of item `index` (for the current epoch if training)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        if self.split != "train":
            return self.crops[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        for _ in range(8):  # redraw silent crops (song intros, gaps), a few times at most
            f = int(rng.choice(len(self.lengths), p=self.lengths / self.lengths.sum()))
            start = int(rng.integers(0, self.lengths[f] - self.n_samples + 1))
            if not self._silent(f, start):
                break
        return f, start

    def _silent(self, f: int, start: int) -> bool:
        """Is this crop silent at the level the item will have (after the file's gain)?"""
        return self.gains[f] * float(np.abs(self.audio[f][start : start + self.n_samples]).max()) < SILENCE_PEAK

    def __getitem__(self, index: int) -> torch.Tensor:
        f, start = self.crop(index)
        x = np.array(self.audio[f][start : start + self.n_samples])
        if self.gains[f] != 1.0:
            x *= self.gains[f]
        np.clip(x, -1.0, 1.0, out=x)  # clicks above the robust peak
        return torch.from_numpy(x)[None]


def make_dataset(
    source: str,
    split: str,
    sample_rate: int,
    seconds: float,
    n_items: int,
    seed: int,
    cache_dir: str | Path | None = None,
) -> torch.utils.data.Dataset:
    """"synthetic" -> SyntheticMusic(n_items, ...); anything else is a folder -> AudioFolder
    (n_items = training items per epoch; valid/test have their fixed crops)."""
    if source == "synthetic":
        return SyntheticMusic(n_items, seconds, sample_rate, seed=seed, split=split)
    return AudioFolder(source, sample_rate, seconds, split=split, seed=seed, cache_dir=cache_dir,
                       items_per_epoch=n_items if split == "train" else None)


def clip_batches(ds, batch_size: int, n_items: int | None = None):
    """The first n_items clips of a dataset (all when None), stacked in batches `b 1 n` (in order)."""
    n = len(ds) if n_items is None else min(n_items, len(ds))
    for i in range(0, n, batch_size):
        yield torch.stack([ds[j] for j in range(i, min(i + batch_size, n))])
