"""Each notebook's key results, checked where it computes them, so that nbval fails on a wrong result
and not only on an exception (nbval ignores the outputs of the cells that print trained numbers).

The floors are what any working codec or LM of this repository clears, at any preset, and what a
broken one does not: envelope-shaped noise with no notes scores chroma ≈ 0.5 and fine-structure
r ≈ 0 (README, "The tiny codec"), a collapsed codebook a usage near 0, a joint (flatten) LM that
is not below a factorised one on the same codes has not learnt the codes' dependence. Each check
raises `ResultCheckError` naming the result, its value and the floor.
"""
from __future__ import annotations

CODEC_FLOORS = {"chroma": 0.6, "fine_structure_r": 0.25, "visqol": 3.0, "usage_perplexity_ratio_min": 0.1}


class ResultCheckError(AssertionError):
    pass


def _fail(what: str) -> None:
    raise ResultCheckError(f"result check failed: {what} (mmdlib/pipeline/checks.py)")


def _below_baseline(values: list[float], lambdas: list[float], what: str) -> None:
    """Each λ > 0 value below the λ = 0 one (when the run has a λ = 0 codec); `values` in the order of `lambdas`."""
    by_lam = dict(zip(lambdas, values))
    for lam, v in by_lam.items():
        if lam > 0 and 0.0 in by_lam and not v < by_lam[0.0]:
            _fail(f"λ = {lam:g}: {what} {v:.4g} not below λ = 0's {by_lam[0.0]:.4g}")


def codecs(finals: dict[str, dict], lambdas: list[float]) -> str:
    """01: every codec's last evaluation clears the floors; a λ > 0 codec ends with a lower MMD² than
    the λ = 0 one (the loss acts on what it optimises). `finals`: {codec name: final metrics}, in the
    order of `lambdas`."""
    for name, final in finals.items():
        for key, floor in CODEC_FLOORS.items():
            if key in final and not final[key] >= floor:
                _fail(f"{name}: {key} = {final[key]:.3f} below the floor {floor}")
    _below_baseline([final["mmd"] for final in finals.values()], lambdas, "MMD²")
    return f"checked: {len(finals)} codecs clear {sorted(CODEC_FLOORS)}; MMD² lower with λ > 0"


def dependence(nmi_delay: dict[str, float], lambdas: list[float]) -> str:
    """02: the delay-aligned NMI of a λ > 0 codec's codes is below the λ = 0 codec's (claim 1, one seed)."""
    _below_baseline(list(nmi_delay.values()), lambdas, "NMI(delay)")
    return "checked: NMI(delay) lower with λ > 0"


def lm_bits(bits: dict[str, dict[str, float]]) -> str:
    """03: on every codec the joint (flatten) LM has fewer held-out bits per frame than each factorised
    one (parallel, delay): `bits` is {codec: {pattern: bits per frame}}."""
    for codec, per in bits.items():
        if "flatten" not in per:
            continue
        for pattern, b in per.items():
            if pattern in ("parallel", "delay") and not per["flatten"] < b:
                _fail(f"{codec}: flatten {per['flatten']:.2f} bits/frame not below {pattern} {b:.2f}")
    return "checked: flatten below parallel and delay on every codec"


def generation(steps: dict[str, int], seconds: dict[str, float], n_q: int) -> str:
    """04: flatten takes K steps per frame and parallel one (`steps` per pattern), and parallel
    generates faster than flatten (`seconds` per audio second, mean over codecs)."""
    if "flatten" in steps and "parallel" in steps:
        if steps["flatten"] != n_q * steps["parallel"]:
            _fail(f"flatten took {steps['flatten']} steps, not {n_q} x parallel's {steps['parallel']}")
        if not seconds["parallel"] < seconds["flatten"]:
            _fail(f"parallel {seconds['parallel']:.3f} s per audio s not faster than flatten {seconds['flatten']:.3f}")
    return "checked: flatten takes K steps a frame and is slower than parallel"


def report(results: dict, lambdas: list[float]) -> str:
    """05: the collected table is complete (every codec's dependence and quality, every LM's bits: a
    notebook that did not run, or an artifact lost, leaves a None) and its numbers still say what 02
    and 03 checked: NMI(delay) lower with λ > 0, flatten below parallel and delay on every codec."""
    missing = [f"{r['codec']} {k}" for r in results["codecs"] for k in ("nmi_delay", "mel_distance", "chroma")
               if r.get(k) is None]
    missing += [f"{r['codec']} / {r['pattern']} bits" for r in results["lms"] if r.get("bits_per_frame") is None]
    if missing:
        _fail(f"the results table misses {', '.join(missing)}")
    dependence({r["codec"]: r["nmi_delay"] for r in results["codecs"]}, lambdas)
    bits: dict[str, dict[str, float]] = {}
    for r in results["lms"]:
        bits.setdefault(r["codec"], {})[r["pattern"]] = r["bits_per_frame"]
    lm_bits(bits)
    return (f"checked: the table is complete ({len(results['codecs'])} codecs, {len(results['lms'])} models); "
            "NMI(delay) lower with λ > 0; flatten below parallel and delay")
