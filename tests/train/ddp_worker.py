"""One small training for tests/train/test_ddp.py, run either as a rank of a torchrun world or as a single
process that trains on the concatenation of those ranks' batches (the run DDP must equal):

    torchrun --nproc_per_node 2 tests/train/ddp_worker.py codec RUN_DIR      # 2 ranks, batch b each
    python tests/train/ddp_worker.py codec RUN_DIR --concat 2                 # 1 process, batch 2b

Exact equality needs the two quantizer steps that read rank 0's data alone switched off (k-means
init and dead-code restarts: under DDP they sample rank 0's vectors and broadcast them) and one
MMD macro-batch per step (with M > 1 the pooled samples come in another order, so the shuffle pairs
other samples: the same estimator, another draw).
"""
import dataclasses
import sys

import torch

from mmdlib.codec.model import CodecConfig
from mmdlib.codec.quantize import QuantizerConfig
from mmdlib.codec.spectral import SpectralConfig
from mmdlib.lm.model import lm_config
from mmdlib.train import codec as tc
from mmdlib.train import lm as tl
from mmdlib.train.config import LMTrainConfig, train_preset

CODEC = CodecConfig(sample_rate=16000, arch="spectral", spectral=SpectralConfig(dim=8, hidden=32),
                    quantizer=QuantizerConfig(dim=8, n_q=3, codebook_size=16, kmeans_init=False,
                                              threshold_ema_dead_code=0.0))
B = 2  # per rank


def codec_run(run_dir: str, concat: int) -> None:
    cfg = train_preset("tiny", steps=3, batch_size=B * max(1, concat), segment_seconds=0.2, n_train_items=8,
                       n_valid_items=2, eval_every=3, ckpt_every=3, mmd_weight=100.0, mmd_start=1,
                       mmd_macro_batches=1, eval_visqol=0, model=CODEC)
    if concat:
        one_rank = tc.get_batch

        def get_batch(ds, cfg, step, rank):
            part = dataclasses.replace(cfg, batch_size=cfg.batch_size // concat)
            return torch.cat([one_rank(ds, part, step, r) for r in range(concat)])
        tc.get_batch = get_batch
    tc.train_codec(cfg, run_dir, progress=False)


def lm_run(run_dir: str, concat: int) -> None:
    g = torch.Generator().manual_seed(0)
    train, valid = torch.randint(0, 16, (8, 4, 40), generator=g), torch.randint(0, 16, (4, 4, 40), generator=g)
    cfg = LMTrainConfig(steps=3, batch_size=B * max(1, concat), seq_frames=16, warmup=1, eval_every=3,
                        ckpt_every=3, progress=False)
    if concat:
        one_rank = tl.get_batch

        def get_batch(tokens, labels, step, cfg, rank, world):
            part = dataclasses.replace(cfg, batch_size=cfg.batch_size // concat)
            codes = [one_rank(tokens, labels, step, part, r, concat)[0] for r in range(concat)]
            return torch.cat(codes), None
        tl.get_batch = get_batch
    tl.train_lm(train, valid, lm_config("small", n_q=4, codebook_size=16, dim=32), cfg, run_dir)


if __name__ == "__main__":
    kind, run_dir = sys.argv[1], sys.argv[2]
    concat = int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[3] == "--concat" else 0
    {"codec": codec_run, "lm": lm_run}[kind](run_dir, concat)
    from mmdlib.distributed import cleanup
    cleanup()
