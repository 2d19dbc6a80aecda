"""`mmdlib` (or `python -m mmdlib`): a codec on your own audio, music from a trained LM, training, benchmarks.

    mmdlib codec reconstruct song.ogg song_tiny.wav --codec runs/tiny/codec_lambda0
    mmdlib codec encode music/ --codec runs/tiny/codec_lambda0 --out codes/      # one .pt of codes per file
    mmdlib codec decode codes/ --codec runs/tiny/codec_lambda0 --out decoded/
    mmdlib generate --lm runs/tiny/lm/codec_lambda0/delay --seconds 4 --n 2 --out samples/
    mmdlib generate --lm runs/tiny/lm/codec_lambda0/delay --prompt song.ogg --seconds 4 --out samples/
    mmdlib train-codec --run-dir runs/my_codec --set steps=600      # python -m mmdlib.train_codec's options
    mmdlib train-lm --train train.pt --valid valid.pt --run-dir runs/my_lm --codec runs/my_codec
    mmdlib bench codec
    mmdlib metrics runs/my_codec --plot curves.png      # a training's evaluations so far (metrics.jsonl)

Audio in: any file soundfile reads (wav, flac, ogg, mp3), any sample rate and channel count: mixed
down to mono and resampled to the codec's rate (a note says so). A folder stands for its audio files.
Out: written under a temporary name, then renamed: a failure leaves no half-written file. A file
that cannot be used is named with the reason; in a folder it is skipped, listed, and the command
exits with status 1. An LM records the codec of its tokens (path, sha256); `generate` decodes with it
and refuses another codec.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import soundfile as sf
import torch

from mmdlib.codec.model import Codec, codec_file
from mmdlib.data.audio import AUDIO_EXTENSIONS, AudioError, load_audio, save_audio
from mmdlib.lm.model import TokenLM
from mmdlib.lm.sampling import generate
from mmdlib.train.checkpoint import file_record

CODES_SUFFIX = ".codes.pt"


class CLIError(Exception):
    """A bad argument or file: the message says which and what to do."""


def load_codec(path: str | Path, device: str = "cpu") -> tuple[Codec, dict]:
    try:
        p = codec_file(path)
    except FileNotFoundError as e:
        raise CLIError(f"--codec {e}") from None
    try:
        return Codec.load(p, map_location=device).to(device).eval(), file_record(p)
    except Exception as e:  # noqa: BLE001  (a corrupt or foreign file)
        raise CLIError(f"--codec {path}: {p} is not a codec file ({type(e).__name__}: {e})") from None


def audio_files(inputs: list[str], suffixes: tuple[str, ...] = AUDIO_EXTENSIONS) -> list[Path]:
    """The files named, folders replaced by their files with these suffixes (sorted)."""
    files = []
    for x in inputs:
        p = Path(x)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.name.lower().endswith(suffixes))
            if not found:
                raise CLIError(f"{p}: no {'/'.join(suffixes)} files in this folder")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise CLIError(f"{p}: no such file or folder")
    return files


def read_audio(path: Path, sample_rate: int) -> torch.Tensor:
    """`1 1 n` mono at sample_rate; a note on stderr when it was resampled or mixed down."""
    wav = load_audio(path, sample_rate)  # AudioError names the file and the reason
    info = sf.info(str(path))
    changes = ([f"mixed down from {info.channels} channels"] if info.channels > 1 else []) + (
        [f"resampled {info.samplerate} -> {sample_rate} Hz"] if info.samplerate != sample_rate else [])
    if changes:
        print(f"note: {path}: {', '.join(changes)}", file=sys.stderr)
    return wav[None]


def atomic(path: Path, write) -> None:
    """write(tmp) then rename tmp -> path: a failure leaves no file at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def for_each(files: list[Path], work) -> int:
    """work(file) for every file; a file that fails is skipped and listed. Returns the exit status."""
    skipped = []
    for f in files:
        try:
            work(f)
        except (AudioError, CLIError, ValueError) as e:
            if isinstance(e, AudioError):
                e = f"{e} (give an audio file: {', '.join(AUDIO_EXTENSIONS)}, not silent, no NaN)"
            if len(files) == 1:
                raise CLIError(str(e)) from None
            skipped.append(f"{f}: {e}")
            print(f"skipped {f}: {e}", file=sys.stderr)
    if skipped:
        print(f"{len(skipped)} of {len(files)} files skipped:\n  " + "\n  ".join(skipped), file=sys.stderr)
    return 1 if skipped else 0


@torch.no_grad()
def cmd_reconstruct(a) -> int:
    codec, _ = load_codec(a.codec, a.device)
    files, out = audio_files([a.input]), Path(a.output)
    as_folder = Path(a.input).is_dir() or out.is_dir() or a.output.endswith(os.sep)

    def work(f):
        wav = read_audio(f, codec.cfg.sample_rate).to(a.device)
        rec = codec.decode(codec.encode(wav))[..., : wav.shape[-1]].cpu()
        target = out / f"{f.stem}.wav" if as_folder else out
        atomic(target, lambda tmp: save_audio(tmp, rec[0].clamp(-1, 1), codec.cfg.sample_rate))
        print(f"{f} -> {target} ({wav.shape[-1] / codec.cfg.sample_rate:.2f} s at {codec.cfg.sample_rate} Hz)")

    return for_each(files, work)


@torch.no_grad()
def cmd_encode(a) -> int:
    codec, record = load_codec(a.codec, a.device)
    out = Path(a.out)

    def work(f):
        wav = read_audio(f, codec.cfg.sample_rate).to(a.device)
        codes = codec.encode(wav)[0].cpu()  # k t
        item = {"codes": codes, "codec": record, "sample_rate": codec.cfg.sample_rate,
                "n_samples": wav.shape[-1], "source": str(f)}
        target = out / f"{f.stem}{CODES_SUFFIX}"
        atomic(target, lambda tmp: torch.save(item, tmp))
        print(f"{f} -> {target} ({codes.shape[0]} x {codes.shape[1]} codes)")

    return for_each(audio_files(a.inputs), work)


@torch.no_grad()
def cmd_decode(a) -> int:
    codec, record = load_codec(a.codec, a.device)
    out = Path(a.out)

    def work(f):
        try:
            item = torch.load(f, map_location="cpu", weights_only=True)
            codes = item["codes"]
        except Exception as e:  # noqa: BLE001
            raise CLIError(f"not a codes file of `mmdlib codec encode` ({type(e).__name__}: {e})") from None
        if item.get("codec", {}).get("sha256") != record["sha256"]:
            raise CLIError(f"encoded by the codec {item.get('codec', {}).get('path')}, not by {record['path']}: "
                           "decode with the codec that encoded it (--codec)")
        wav = codec.decode(codes[None].to(a.device))[..., : item["n_samples"]].cpu()
        target = out / f"{f.name.removesuffix(CODES_SUFFIX).removesuffix('.pt')}.wav"
        atomic(target, lambda tmp: save_audio(tmp, wav[0].clamp(-1, 1), codec.cfg.sample_rate))
        print(f"{f} -> {target}")

    return for_each(audio_files(a.inputs, (".pt",)), work)


@torch.no_grad()
def cmd_generate(a) -> int:
    lm_path = Path(a.lm) / "lm.pt" if Path(a.lm).is_dir() else Path(a.lm)
    try:
        model = TokenLM.load(lm_path, a.device)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(f"--lm {a.lm}: {e}") from None
    recorded = getattr(model, "codec_record", None)
    if a.codec is None and recorded is None:
        raise CLIError(f"--lm {a.lm}: the LM does not record its codec (trained before codecs were recorded, or "
                       "by `train_lm` without --codec): give --codec")
    codec, record = load_codec(a.codec or recorded["path"], a.device)
    if recorded and record["sha256"] != recorded["sha256"]:
        raise CLIError(f"--codec {a.codec}: the LM was trained on the codes of {recorded['path']} "
                       f"(sha256 {recorded['sha256'][:12]}), not of this codec (sha256 {record['sha256'][:12]})")
    if (codec.cfg.quantizer.n_q, codec.cfg.quantizer.codebook_size) != (model.cfg.n_q, model.cfg.codebook_size):
        raise CLIError(f"--codec: {codec.cfg.quantizer.n_q} x {codec.cfg.quantizer.codebook_size} codes, the LM "
                       f"models {model.cfg.n_q} x {model.cfg.codebook_size}")
    if not a.seconds > 0 or a.n < 1:
        raise CLIError(f"--seconds {a.seconds} must be > 0 and --n {a.n} >= 1")
    prompt = None
    if a.prompt:
        try:
            wav = read_audio(Path(a.prompt), codec.cfg.sample_rate)[..., : round(a.prompt_seconds * codec.cfg.sample_rate)]
            prompt = codec.encode(wav.to(a.device))
        except AudioError as e:
            raise CLIError(f"--prompt {e}") from None
    t0 = 0 if prompt is None else prompt.shape[-1]
    n_frames = t0 + max(1, round(a.seconds * codec.frame_rate))
    if model.make_pattern(n_frames).n_steps > model.cfg.max_steps:
        raise CLIError(f"{n_frames} frames ({t0} of prompt) need more than the LM's {model.cfg.max_steps} steps "
                       f"({model.cfg.pattern} pattern): lower --seconds or --prompt-seconds")
    codes = generate(model, n_frames, batch_size=a.n, temperature=a.temperature, top_k=a.top_k, seed=a.seed,
                     prompt=prompt)
    wav = codec.decode(codes).cpu()[..., : round(n_frames / codec.frame_rate * codec.cfg.sample_rate)]
    out = Path(a.out)
    for i, w in enumerate(wav):
        atomic(out / f"sample{i}.wav", lambda tmp, w=w: save_audio(tmp, w.clamp(-1, 1), codec.cfg.sample_rate))
    info = {"lm": str(lm_path), "codec": record, "pattern": model.cfg.pattern, "seconds": a.seconds, "n": a.n,
            "prompt": a.prompt, "prompt_frames": t0, "frames": n_frames, "temperature": a.temperature,
            "top_k": a.top_k, "seed": a.seed}
    atomic(out / "generate.json", lambda tmp: tmp.write_text(json.dumps(info, indent=1)))
    print(f"{a.n} samples of {wav.shape[-1] / codec.cfg.sample_rate:.2f} s ({model.cfg.pattern} LM"
          + (f", continuing {t0} prompt frames" if t0 else "") + f") in {out}")
    return 0


def cmd_metrics(a) -> int:
    """The evaluations a training appended to run_dir/metrics.jsonl so far (it may still run): a table of
    the last ones, and with --plot a figure of every numeric key over the steps."""
    path = Path(a.run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise CLIError(f"{path}: no evaluations yet (a codec or LM training writes one line per evaluation)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by_step = {r["step"]: r for r in rows}  # a resumed run re-evaluates: keep the last line of a step
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k != "step" and isinstance(rows[-1].get(k), float)]
    keys = [k for k in keys if not a.keys or k in a.keys]
    for step, r in list(by_step.items())[-a.last:]:
        print(f"step {step}: " + ", ".join(f"{k} {r[k]:.4g}" for k in keys if r.get(k) is not None))
    if a.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8), squeeze=False)
        for ax, k in zip(axes[0], keys):
            pts = [(s, r[k]) for s, r in sorted(by_step.items()) if r.get(k) is not None]
            ax.plot(*zip(*pts), "o-", ms=3)
            ax.set(title=k, xlabel="step")
            ax.grid(alpha=0.3)
        fig.suptitle(str(Path(a.run_dir)), fontsize=9)
        fig.tight_layout()
        atomic(Path(a.plot), lambda tmp: fig.savefig(tmp, dpi=110))
        print(f"plot of {len(keys)} metrics over {len(by_step)} evaluations: {a.plot}")
    return 0


PASSTHROUGH = {"train-codec": ("mmdlib.train.codec", "python -m mmdlib.train_codec"),
               "train-lm": ("mmdlib.train.lm", "python -m mmdlib.train_lm"),
               "bench": ("mmdlib.bench.__main__", "python -m mmdlib.bench")}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmdlib", description=__doc__.split("\n\n")[0],
                                epilog="mmdlib COMMAND --help: its options", formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    codec = sub.add_parser("codec", help="encode, decode or reconstruct audio files with a trained codec")
    csub = codec.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = csub.add_parser("reconstruct", help="IN OUT: audio through the codec (files, or a folder into a folder)")
    c.add_argument("input")
    c.add_argument("output")
    c.set_defaults(run=cmd_reconstruct)
    c = csub.add_parser("encode", help="IN...: codes (+ the codec's hash) into --out, one .codes.pt per file")
    c.add_argument("inputs", nargs="+")
    c.add_argument("--out", required=True)
    c.set_defaults(run=cmd_encode)
    c = csub.add_parser("decode", help="IN...: .codes.pt files (or folders of them) back to wav into --out")
    c.add_argument("inputs", nargs="+")
    c.add_argument("--out", required=True)
    c.set_defaults(run=cmd_decode)
    for c in csub.choices.values():
        c.add_argument("--codec", required=True, help="a codec.pt or the run dir that holds one")
        c.add_argument("--device", default="cpu")
    g = sub.add_parser("generate", help="music from a trained LM: N wavs of S seconds (or a prompt's continuation)")
    g.add_argument("--lm", required=True, help="an lm.pt or the LM run dir that holds one")
    g.add_argument("--codec", help="default: the codec the LM recorded (another one is refused)")
    g.add_argument("--seconds", type=float, default=4.0, help="seconds to generate (after the prompt)")
    g.add_argument("--n", type=int, default=1)
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=50)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--prompt", help="an audio file: its opening's codes start every sample, the LM continues them")
    g.add_argument("--prompt-seconds", type=float, default=3.0, help="how much of the prompt's opening (default 3 s)")
    g.add_argument("--out", required=True)
    g.add_argument("--device", default="cpu")
    g.set_defaults(run=cmd_generate)
    m = sub.add_parser("metrics", help="RUN_DIR: the evaluations of a training so far (metrics.jsonl), --plot FILE")
    m.add_argument("run_dir")
    m.add_argument("--plot", help="a .png with every metric over the steps")
    m.add_argument("--keys", nargs="*", help="only these metrics (default: every numeric one)")
    m.add_argument("--last", type=int, default=5, help="evaluations printed (default 5)")
    m.set_defaults(run=cmd_metrics)
    for name, (_, what) in PASSTHROUGH.items():  # listed here, run by main() with their own parsers
        sub.add_parser(name, help=f"the same as `{what}` (its options follow)", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in PASSTHROUGH:  # their own parsers take every argument, --help included
        import importlib

        importlib.import_module(PASSTHROUGH[argv[0]][0]).main(argv[1:])
        return 0
    a = parser().parse_args(argv)
    try:
        return a.run(a)
    except CLIError as e:
        print(f"mmdlib {a.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
