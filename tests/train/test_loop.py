"""restore / save over named state (mmdlib.train.loop), shared by both training loops."""
import random

import pytest
import torch

from mmdlib.train.checkpoint import CheckpointError
from mmdlib.train.loop import restore, save

CONFIG = {"model": {"dim": 2}, "train": {"lr": 1.0, "steps": 5}}


def parts():
    model = torch.nn.Linear(2, 2)
    return model, torch.optim.SGD(model.parameters(), lr=1.0)


def test_save_then_restore_named_state_rng_and_extras(tmp_path):
    path = tmp_path / "checkpoint.pt"
    assert restore(path, "lm", CONFIG, 5, model=None) == (0, [], {})  # no checkpoint: a fresh run
    model, opt = parts()
    model(torch.randn(1, 2)).sum().backward()
    opt.step()
    torch.manual_seed(3)
    random.seed(3)
    save(path, "lm", 2, [{"step": 2}], CONFIG, extras={"best": {"step": 1}}, model=model, optimizer=opt, scheduler=None)
    expected = torch.rand(3), random.random()  # what the RNGs draw next
    other, other_opt = parts()
    step, history, extras = restore(path, "lm", CONFIG, 5, model=other, optimizer=other_opt, scheduler=None)
    assert (step, history, extras) == (2, [{"step": 2}], {"best": {"step": 1}})
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    assert other_opt.state_dict() == opt.state_dict()
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]
    assert torch.load(path, weights_only=False)["scheduler"] is None
    with pytest.raises(CheckpointError, match=r"train\.lr: 1\.0 in the checkpoint, 2\.0 now"):
        restore(path, "lm", {**CONFIG, "train": {"lr": 2.0, "steps": 5}}, 5, model=other)
    with pytest.raises(CheckpointError, match="past steps=1"):
        restore(path, "lm", CONFIG, 1, model=other)
    with pytest.raises(CheckpointError, match="not a train_codec one"):
        restore(path, "codec", CONFIG, 5, model=other)
