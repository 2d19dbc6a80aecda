"""mmdlib: an independence-promoting (MMD) loss for codec language models, reproduced.

    from mmdlib import Codec, TokenLM, MMDConfig, mmd_independence, make_dataset, generate

The package has a folder per concept: data/ (synthetic music, audio folders), codec/ (the RVQ codec),
mmd/ (the independence loss and dependence diagnostics), lm/ (the token LM, sampling, depth head),
eval/ (metrics, FAD), train/ (the training loops, checkpoints, overrides), pipeline/ (the notebooks'
presets, stages, sweep, report), bench/ (`python -m mmdlib.bench NAME`); patterns.py and
distributed.py are shared by several of them.
"""
import os as _os

# OpenMP worker threads that wait by spinning (libgomp's default) hold every core they may use,
# so two trainings side by side (a notebook kernel and a CLI run) starve each other: measured at
# 2.24 s a step instead of 0.5 (README, "Sharing the CPU"). Passive waiting yields the core. Set
# before torch is imported (libgomp reads it once, when it loads); OMP_WAIT_POLICY=ACTIVE in the
# environment restores spinning.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from mmdlib.codec.model import Codec, CodecConfig  # noqa: E402
from mmdlib.data.datasets import make_dataset  # noqa: E402
from mmdlib.lm.model import LMConfig, TokenLM  # noqa: E402
from mmdlib.lm.sampling import generate  # noqa: E402
from mmdlib.mmd.loss import MMDConfig, mmd_independence  # noqa: E402
from mmdlib.patterns import make_pattern  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Codec", "CodecConfig", "LMConfig", "MMDConfig", "TokenLM", "generate", "make_dataset", "make_pattern",
           "mmd_independence"]
