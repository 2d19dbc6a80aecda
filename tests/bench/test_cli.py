"""The benchmark entry point: help exits 0, an unknown name exits non-zero, small runs of `bench mmd`."""
import json
import subprocess
import sys

import torch

from mmdlib.bench import mmd as bench_mmd


def _bench(*args):
    return subprocess.run([sys.executable, "-m", "mmdlib.bench", *args], capture_output=True, text=True, timeout=120)


def test_bench_help_exits_zero_and_unknown_name_does_not():
    ok = _bench("--help")
    assert ok.returncode == 0 and "codec" in ok.stdout and "mmd" in ok.stdout
    bad = _bench("nope")
    assert bad.returncode != 0 and "usage" in bad.stderr


def test_bench_mmd_without_toy_draws_skips_the_variance_with_a_note(capsys):
    threads = torch.get_num_threads()
    try:
        result = bench_mmd.main(["--sizes", "64", "--impls", "exact", "--no-backward", "--toy-draws", "0",
                                 "--rff-n", "256", "--rff-features", "64", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert "skipped" in result["variance"] and "dependent" not in result["variance"]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["variance"]["draws"] == 0


def test_bench_lm_times_every_pattern_and_ends_with_json(capsys):
    from mmdlib.bench import lm as bench_lm

    threads = torch.get_num_threads()
    try:
        result = bench_lm.main(["--steps", "2", "--warmup", "1", "--seq-frames", "8", "--batch-size", "2",
                                "--patterns", "delay,flatten", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert result["flatten_seq_len"] == 4 * 8 and result["delay_seq_len"] == 8 + 3  # K·T and T + K − 1 steps
    assert result["delay_step_s"] > 0 and result["flatten_over_delay"] > 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
