"""Audio in: synthetic music (synth), folders of audio files as datasets (datasets), decoding and checks (audio)."""
