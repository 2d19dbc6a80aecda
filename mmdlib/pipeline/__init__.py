"""The notebooks' pipeline: parameters and presets (params), run folders (layout), the stages, the λ sweep
(mmdlib.experiment), the report, plots, audio players and the checks of key results (checks)."""
