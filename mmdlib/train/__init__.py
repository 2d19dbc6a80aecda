"""Training: the codec and LM loops (codec, lm), checkpoints and exact resume (checkpoint), typed
`--set a.b=v` overrides (overrides)."""
