"""mmdlib: an independence-promoting (MMD) loss for codec language models, reproduced."""

__version__ = "0.1.0"
