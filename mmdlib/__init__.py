"""mmdlib: an independence-promoting (MMD) loss for codec language models, reproduced."""
import os as _os

# OpenMP worker threads that wait by spinning (libgomp's default) hold every core they may use,
# so two trainings side by side (a notebook kernel and a CLI run) starve each other: measured at
# 2.24 s a step instead of 0.5 (README, "Sharing the CPU"). Passive waiting yields the core. Set
# before torch is imported (libgomp reads it once, when it loads); OMP_WAIT_POLICY=ACTIVE in the
# environment restores spinning.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
