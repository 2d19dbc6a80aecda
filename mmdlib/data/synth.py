"""Synthetic music: a seeded generator (the default training data; no files needed).

`synth_clip(seed, seconds)`: a diatonic chord progression in a random key (major or minor), a
melody (scale notes, mostly stepwise, snapped to chord tones on strong beats), a bass line (chord
roots in one of several patterns), optional drums (kick, snare, hi-hat) and several timbres
(additive harmonic wavetables with ADSR envelopes and vibrato), at a random tempo and loudness.
Notes are rendered all at once, as one flat ragged array of samples (no Python loop over samples),
then overlap-added with `np.bincount`. `SyntheticMusic` is a dataset of such clips, `1 n` float32
with peak <= 1, deterministic by (split, seed, index).
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.signal import butter, lfilter

SPLITS = ("train", "valid", "test")


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from any printable values, equal across runs and machines (unlike hash())."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass
class SynthConfig:
    sample_rate: int = 16000
    tempo_range: tuple[float, float] = (80.0, 160.0)  # beats per minute
    peak_range: tuple[float, float] = (0.25, 0.95)  # final peak |x|: the clip's loudness
    minor_prob: float = 0.35  # probability of a minor key
    drum_prob: float = 0.8  # probability that a clip has percussion
    n_harmonics: int = 16  # harmonics per note (those above 0.45 * sample_rate are dropped)
    vibrato_cents: tuple[float, float] = (5.0, 15.0)  # depth, for timbres that have vibrato
    vibrato_hz: tuple[float, float] = (4.0, 6.5)
    table_size: int = 1024  # samples per wavetable period (linear interpolation)

    @classmethod
    def paper(cls) -> SynthConfig:
        """32 kHz, the paper's sample rate."""
        return cls(sample_rate=32000)


@dataclass(frozen=True)
class Timbre:
    harmonics: tuple[float, ...]  # amplitude of harmonics 1, 2, ...
    attack: float  # s, linear rise
    decay: float  # s, exponential time constant from 1 down to `sustain`
    sustain: float  # level held while the note is on
    release: float  # s, linear fall after note off
    vibrato: bool


def _profile(fn) -> tuple[float, ...]:
    return tuple(float(fn(h)) for h in range(1, 33))


TIMBRES: dict[str, Timbre] = {
    "flute": Timbre(_profile(lambda h: math.exp(-1.1 * (h - 1))), 0.06, 0.2, 0.8, 0.12, True),
    "strings": Timbre(_profile(lambda h: 1 / h), 0.08, 0.3, 0.85, 0.2, True),  # sawtooth-ish
    "clarinet": Timbre(_profile(lambda h: 1 / h if h % 2 else 0.03 / h), 0.04, 0.2, 0.8, 0.08, True),
    "organ": Timbre(_profile(lambda h: {1: 1, 2: 0.6, 3: 0.4, 4: 0.3, 6: 0.2, 8: 0.15}.get(h, 0)),
                    0.01, 0.1, 1.0, 0.05, False),
    "pluck": Timbre(_profile(lambda h: h ** -1.3), 0.003, 0.25, 0.0, 0.05, False),
    "piano": Timbre(_profile(lambda h: h ** -1.8), 0.005, 0.6, 0.15, 0.15, False),
    "bass": Timbre(_profile(lambda h: h ** -1.6), 0.01, 0.3, 0.6, 0.06, False),
}
MELODY_TIMBRES = ("flute", "strings", "clarinet", "organ", "pluck", "piano")
CHORD_TIMBRES = ("strings", "organ", "piano", "pluck")
BASS_TIMBRES = ("bass", "pluck")

MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)
# chord roots as 0-based scale degrees (I-V-vi-IV is (0, 4, 5, 3))
MAJOR_PROGRESSIONS = ((0, 4, 5, 3), (0, 3, 4, 0), (5, 3, 0, 4), (0, 5, 3, 4), (1, 4, 0, 5), (0, 3, 5, 4))
MINOR_PROGRESSIONS = ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 3, 6, 2))
# drum patterns on a 16-step bar: (kick steps, snare steps, hi-hat steps)
DRUM_PATTERNS = (
    ((0, 8), (4, 12), tuple(range(0, 16, 2))),  # rock
    ((0, 4, 8, 12), (4, 12), (2, 6, 10, 14)),  # four on the floor, off-beat hats
    ((0, 10), (8,), tuple(range(0, 16, 2))),  # half time
    ((0, 6, 10), (4, 12), tuple(range(16))),  # break, 16th hats
    ((0, 7, 8), (4, 12), (0, 3, 4, 7, 8, 11, 12, 15)),  # shuffle-ish
)


class _Notes:
    """Note events of one voice, times in seconds."""

    def __init__(self) -> None:
        self.onset: list[float] = []
        self.dur: list[float] = []
        self.pitch: list[float] = []  # MIDI
        self.vel: list[float] = []

    def add(self, onset: float, dur: float, pitch: float, vel: float) -> None:
        self.onset.append(onset)
        self.dur.append(dur)
        self.pitch.append(pitch)
        self.vel.append(vel)


@functools.lru_cache(maxsize=8)
def _sine_basis(n_harmonics: int, table_size: int) -> np.ndarray:
    """`h k`: sin(2 pi h k / table_size), with one wrap-around column (k = table_size)."""
    h = np.arange(1, n_harmonics + 1)[:, None]
    k = np.arange(table_size + 1)[None]
    return np.sin(2 * np.pi * h * k / table_size).astype(np.float32)


def _render_notes(
    notes: _Notes, timbre: Timbre, n: int, rng: np.random.Generator, cfg: SynthConfig
) -> np.ndarray:
    """Sum of all notes of one voice: `n`. Each note reads its own band-limited wavetable."""
    if not notes.onset:
        return np.zeros(n, np.float32)
    sr, T = cfg.sample_rate, cfg.table_size
    onset = np.asarray(notes.onset)
    dur = np.asarray(notes.dur)
    f0 = 440.0 * 2.0 ** ((np.asarray(notes.pitch) - 69) / 12)  # m
    vel = np.asarray(notes.vel, np.float32)
    m = len(onset)

    # per-note wavetables `m k`, harmonics at or above 0.45 sr removed, unit RMS
    H = cfg.n_harmonics
    h = np.arange(1, H + 1)
    tilt = h ** rng.uniform(-0.3, 0.3)  # per-clip brightness
    amps = np.asarray(timbre.harmonics[:H]) * tilt * (h[None] * f0[:, None] < 0.45 * sr)  # m h
    amps /= np.sqrt((amps**2).sum(1, keepdims=True) / 2) + 1e-12
    tables = (amps.astype(np.float32) @ _sine_basis(H, T)).ravel()  # (m k)

    # flat ragged layout: the samples of note j are its local indices k0_j .. k1_j - 1
    start = np.round(onset * sr).astype(np.int64)
    length = np.ceil((dur + timbre.release) * sr).astype(np.int64)
    k0 = np.maximum(0, -start)  # skip what lies before the clip
    k1 = np.minimum(length, n - start)  # and after it
    keep = k1 > k0
    idx_note = np.repeat(np.nonzero(keep)[0], (k1 - k0)[keep])  # (m l)
    counts = (k1 - k0)[keep]
    first = np.cumsum(counts) - counts
    k = np.arange(len(idx_note)) - np.repeat(first, counts) + k0[idx_note]  # local sample index
    t = k.astype(np.float32) / sr

    # phase in cycles, with vibrato: f(t) = f0 (1 + d sin(2 pi r t))
    phase = t + rng.random(m).astype(np.float32)[idx_note] / f0[idx_note].astype(np.float32)
    if timbre.vibrato:
        depth = 2 ** (rng.uniform(*cfg.vibrato_cents) / 1200) - 1
        rate = rng.uniform(*cfg.vibrato_hz)
        phase += depth * (1 - np.cos(2 * np.pi * rate * t)) / (2 * np.pi * rate)
    phase *= f0.astype(np.float32)[idx_note]
    x = (phase - np.floor(phase)) * T
    i = np.minimum(x.astype(np.int64), T - 1)
    frac = x - i
    row = idx_note * (T + 1) + i
    wave = tables[row] * (1 - frac) + tables[row + 1] * frac

    # ADSR: linear attack, exponential decay to sustain, linear release after note off
    a, d, s, r = timbre.attack, timbre.decay, timbre.sustain, timbre.release
    env = np.minimum(t / a, 1) * (s + (1 - s) * np.exp(-np.maximum(t - a, 0) / d))
    env *= np.clip(1 - (t - dur.astype(np.float32)[idx_note]) / r, 0, 1)
    out = np.bincount(start[idx_note] + k, weights=wave * env * vel[idx_note], minlength=n)
    return out.astype(np.float32)


@functools.lru_cache(maxsize=8)
def _drum_filters(sample_rate: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    nyq = sample_rate / 2
    snare = butter(2, [1000 / nyq, min(5000, 0.8 * nyq) / nyq], "bandpass")
    hat = butter(2, min(7000, 0.7 * nyq) / nyq, "highpass")
    return snare, hat


def _place(hits: np.ndarray, onsets: np.ndarray, n: int) -> np.ndarray:
    """Overlap-add `h l` hit sounds starting at sample `onsets` (`h`, may be < 0): `n`."""
    h, L = hits.shape
    pos = onsets[:, None] + np.arange(L)[None]
    ok = (pos >= 0) & (pos < n)
    return np.bincount(pos[ok], weights=hits[ok], minlength=n).astype(np.float32)


def _render_drums(
    kicks: list[tuple[float, float]],
    snares: list[tuple[float, float]],
    hats: list[tuple[float, float]],
    n: int,
    rng: np.random.Generator,
    sr: int,
) -> np.ndarray:
    """Kick = sine swept down in pitch, snare = band-passed noise + a tone, hat = high-passed
    noise; each list holds (onset s, velocity). Returns `n`."""
    out = np.zeros(n, np.float32)
    (bs, as_), (bh, ah) = _drum_filters(sr)
    if kicks:
        t = np.arange(int(0.35 * sr), dtype=np.float32) / sr
        f_hi, f_lo, tau_f = rng.uniform(100, 170), rng.uniform(40, 60), rng.uniform(0.02, 0.05)
        phase = f_lo * t + (f_hi - f_lo) * tau_f * (1 - np.exp(-t / tau_f))  # cycles
        kick = np.sin(2 * np.pi * phase) * np.exp(-t / rng.uniform(0.08, 0.2))
        kick *= np.minimum(t / 0.002, 1)
        on, v = np.asarray(kicks).T
        out += _place(v[:, None] * kick[None], np.round(on * sr).astype(np.int64), n)
    if snares:
        on, v = np.asarray(snares).T
        t = np.arange(int(0.25 * sr), dtype=np.float32) / sr
        noise = lfilter(bs, as_, rng.standard_normal((len(on), len(t)), dtype=np.float32), axis=1)
        tone = 0.4 * np.sin(2 * np.pi * rng.uniform(160, 220) * t)
        hit = (1.5 * noise + tone) * np.exp(-t / rng.uniform(0.05, 0.1))
        out += _place(v[:, None] * hit, np.round(on * sr).astype(np.int64), n)
    if hats:
        on, v = np.asarray(hats).T
        t = np.arange(int(0.12 * sr), dtype=np.float32) / sr
        noise = lfilter(bh, ah, rng.standard_normal((len(on), len(t)), dtype=np.float32), axis=1)
        hit = 2.0 * noise * np.exp(-t / rng.uniform(0.015, 0.04))
        out += _place(v[:, None] * hit, np.round(on * sr).astype(np.int64), n)
    return out


def synth_clip(seed: int, seconds: float, cfg: SynthConfig | None = None) -> torch.Tensor:
    """A seeded clip of synthetic polyphonic music: `1 n`, n = round(seconds * sample_rate),
    float32, peak in cfg.peak_range. Equal seeds give equal audio."""
    cfg = cfg or SynthConfig()
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    rng = np.random.default_rng(seed)
    sr = cfg.sample_rate
    n = round(seconds * sr)

    # key, tempo, form
    minor = rng.random() < cfg.minor_prob
    scale = MINOR if minor else MAJOR
    progs = MINOR_PROGRESSIONS if minor else MAJOR_PROGRESSIONS
    prog = progs[rng.integers(len(progs))]
    tonic = int(rng.integers(-5, 7))  # semitones from C, keys centred on C
    step_s = 60.0 / rng.uniform(*cfg.tempo_range) / 4  # one 16th note
    chord_steps = 16 if rng.random() < 0.7 else 8
    first = int(rng.integers(chord_steps * len(prog)))  # clips start anywhere in the loop
    n_steps = math.ceil(seconds / step_s) + 1
    steps = range(first, first + n_steps)

    def time(j: int) -> float:
        return (j - first) * step_s

    def midi(degree: int, base: int) -> int:  # scale degree (any int) -> MIDI pitch
        return base + tonic + 12 * (degree // 7) + scale[degree % 7]

    def chord_root(j: int) -> int:
        return prog[(j // chord_steps) % len(prog)]

    def chord_tones(j: int) -> list[int]:
        r = chord_root(j)
        return [r, r + 2, r + 4]

    # melody: mostly stepwise walk over the scale, chord tones on strong beats
    melody = _Notes()
    durations = (1, 2, 2, 2, 3, 4, 4, 6, 8) if rng.random() < 0.5 else (2, 4, 4, 4, 6, 8, 8, 12)
    moves, move_p = (-2, -1, 0, 1, 2, -3, 3, -4, 4), (0.12, 0.28, 0.08, 0.28, 0.12, 0.04, 0.04, 0.02, 0.02)
    legato = rng.uniform(0.6, 0.95)
    rest_prob = rng.uniform(0.0, 0.2)
    lo, hi = 7, 17  # melody range in scale degrees: about G3..B5
    degree = int(rng.integers(lo, hi - 4))
    j = first - int(rng.integers(0, 8))
    while j < first + n_steps:
        d = int(rng.choice(durations))
        if rng.random() >= rest_prob:
            degree += int(rng.choice(moves, p=move_p))
            degree = 2 * lo - degree if degree < lo else (2 * hi - degree if degree > hi else degree)
            if j % 4 == 0 and rng.random() < 0.7:  # strong beat: nearest chord tone
                tones = [t + 7 * o for t in chord_tones(j) for o in range(4)]
                degree = min(tones, key=lambda c: abs(c - degree))
            melody.add(time(j), d * step_s * legato, midi(degree, 48), rng.uniform(0.6, 1.0))
        j += d

    # chords: held pads, rhythmic stabs or arpeggios
    chords = _Notes()
    style = rng.choice(["pad", "stabs", "arpeggio"])
    arp_every = 2 if step_s > 0.1 else 4
    for j in steps:
        tones = [midi(t, 48) for t in chord_tones(j)]
        if style == "pad" and (j % chord_steps == 0 or j == first):
            left = chord_steps - j % chord_steps
            for p in tones:
                chords.add(time(j), left * step_s, p, rng.uniform(0.5, 0.7))
        elif style == "stabs" and j % 4 == 2:
            for p in tones:
                chords.add(time(j), 1.5 * step_s, p, rng.uniform(0.5, 0.8))
        elif style == "arpeggio" and j % arp_every == 0:
            p = (tones + [tones[0] + 12])[(j // arp_every) % 4]
            chords.add(time(j), arp_every * step_s * 0.9, p, rng.uniform(0.5, 0.8))

    # bass: roots (and octaves / fifths) of the chords
    bass = _Notes()
    pattern = rng.choice(["whole", "quarters", "octaves", "root_fifth", "syncopated"])
    for j in steps:
        r, pos = chord_root(j), j % chord_steps
        root = midi(r, 36) - (12 if midi(r, 36) > 50 else 0)
        vel = rng.uniform(0.7, 1.0)
        if pattern == "whole" and (pos == 0 or j == first):
            bass.add(time(j), (chord_steps - pos) * step_s * 0.95, root, vel)
        elif pattern == "quarters" and pos % 4 == 0:
            bass.add(time(j), 3.5 * step_s, root, vel)
        elif pattern == "octaves" and pos % 2 == 0:
            bass.add(time(j), 1.6 * step_s, root + 12 * ((pos // 2) % 2), vel)
        elif pattern == "root_fifth" and pos % 4 == 0:
            fifth = root + (scale[(r + 4) % 7] - scale[r % 7]) % 12
            bass.add(time(j), 3.5 * step_s, root if pos % 8 == 0 else fifth, vel)
        elif pattern == "syncopated" and pos % 16 in (0, 3, 6, 8, 11, 14):
            bass.add(time(j), 2.5 * step_s, root + (12 if pos % 16 == 6 else 0), vel)

    # drums
    kicks, snares, hats = [], [], []
    if rng.random() < cfg.drum_prob:
        k_steps, s_steps, h_steps = DRUM_PATTERNS[rng.integers(len(DRUM_PATTERNS))]
        for j in steps:
            b = j % 16
            if b in k_steps or (b % 2 == 0 and rng.random() < 0.04):
                kicks.append((time(j), rng.uniform(0.8, 1.0)))
            if b in s_steps:
                snares.append((time(j), rng.uniform(0.8, 1.0)))
            elif rng.random() < 0.05:  # ghost note
                snares.append((time(j), rng.uniform(0.2, 0.4)))
            if b in h_steps:
                hats.append((time(j), rng.uniform(0.5, 0.7) + 0.3 * (b % 4 == 0)))

    # mix with random voice gains, then normalise to a random peak
    voices = [
        (melody, TIMBRES[MELODY_TIMBRES[rng.integers(len(MELODY_TIMBRES))]], rng.uniform(0.5, 1.0)),
        (chords, TIMBRES[CHORD_TIMBRES[rng.integers(len(CHORD_TIMBRES))]], rng.uniform(0.2, 0.4)),
        (bass, TIMBRES[BASS_TIMBRES[rng.integers(len(BASS_TIMBRES))]], rng.uniform(0.5, 0.9)),
    ]
    mix = np.zeros(n, np.float32)
    for notes, timbre, gain in voices:
        mix += gain * _render_notes(notes, timbre, n, rng, cfg)
    mix += rng.uniform(0.3, 0.7) * _render_drums(kicks, snares, hats, n, rng, sr)
    peak = float(np.abs(mix).max())
    if peak < 1e-6:  # cannot happen with the parameters above; guard against silence anyway
        raise RuntimeError(f"synth_clip(seed={seed}) produced silence")
    mix *= rng.uniform(*cfg.peak_range) / peak
    return torch.from_numpy(mix)[None]


class SyntheticMusic(torch.utils.data.Dataset):
    """`n_items` synthetic clips; item i is synth_clip(stable_seed(split, seed, i)), so the
    splits draw from disjoint seeds (up to 63-bit hash collisions). Items are `1 n`."""

    def __init__(
        self,
        n_items: int,
        seconds: float,
        sample_rate: int = 16000,
        seed: int = 0,
        split: str = "train",
        cfg: SynthConfig | None = None,
    ):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if n_items <= 0:
            raise ValueError(f"n_items must be positive, got {n_items}")
        self.n_items, self.seconds, self.seed, self.split = n_items, seconds, seed, split
        self.cfg = cfg or SynthConfig(sample_rate=sample_rate)
        if self.cfg.sample_rate != sample_rate:
            raise ValueError(f"sample_rate {sample_rate} != cfg.sample_rate {self.cfg.sample_rate}")

    def __len__(self) -> int:
        return self.n_items

    def item_seed(self, index: int) -> int:
        return stable_seed(self.split, int(self.seed), int(index))  # int(): np.int64 reprs differ

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < self.n_items:
            raise IndexError(f"index {index} out of range for {self.n_items} items")
        return synth_clip(self.item_seed(index), self.seconds, self.cfg)
