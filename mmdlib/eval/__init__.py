"""Scores: audio metrics (metrics), a codec's evaluation (codec), FAD (fad), the Opus anchors (anchors)."""
