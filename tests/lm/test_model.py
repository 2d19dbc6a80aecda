import dataclasses
import math
import os

import pytest
import torch

from mmdlib.lm.model import (
    KVCache,
    LMConfig,
    TokenLM,
    bits_per_codebook,
    evaluate_bits_per_frame,
    lm_config,
    nll_sum,
    sequence_nll,
    windows,
)
from mmdlib.lm.sampling import generate, sample_logits
from mmdlib.patterns import PATTERNS
from mmdlib.train.checkpoint import CheckpointError, RunDirLocked, run_lock, use_previous
from mmdlib.train.config import LMTrainConfig
from mmdlib.train.lm import get_batch, lr_factor, train_lm

V = 11


def small_lm(pattern: str, n_q: int = 3, **kw) -> TokenLM:
    torch.manual_seed(0)
    cfg = LMConfig(n_q=n_q, codebook_size=V, pattern=pattern, dim=32, n_layers=2, n_heads=2,
                   max_steps=256, **kw)
    return TokenLM(cfg).eval()


def random_inputs(model: TokenLM, T: int, b: int = 2, seed: int = 0):
    pat = model.make_pattern(T)
    codes = torch.randint(0, V, (b, model.cfg.n_q, T), generator=torch.Generator().manual_seed(seed))
    seq = pat.build(codes, model.cfg.pad)
    return pat, codes, seq, model.shift_right(seq)


@pytest.mark.parametrize("name", PATTERNS)
def test_causal_masking(name):
    """Changing the input at step p changes no logits before p (and does change step p)."""
    model = small_lm(name)
    pat, _, _, inp = random_inputs(model, T=5)
    with torch.no_grad():
        ref = model(inp, pat)
        for p in [1, pat.n_steps // 2, pat.n_steps - 1]:
            changed = inp.clone()
            changed[:, :, p] = (changed[:, :, p] + 1) % V
            out = model(changed, pat)
            assert torch.equal(out[:, :, :p], ref[:, :, :p])
            assert not torch.allclose(out[:, :, p], ref[:, :, p])
        # through the pattern: the logits predicting code (k, t) never depend on (k, t) itself
        # or on any code predicted at the same or a later step
        pat, codes, _, _ = random_inputs(model, T=5)
        ref = model(model.shift_right(pat.build(codes, V)), pat)
        for k, t in [(0, 0), (model.cfg.n_q - 1, 2), (1, 4)]:
            changed = codes.clone()
            changed[:, k, t] = (changed[:, k, t] + 1) % V
            out = model(model.shift_right(pat.build(changed, V)), pat)
            s = int(pat.step_of()[k, t])
            assert torch.equal(out[:, :, : s + 1], ref[:, :, : s + 1])


@pytest.mark.parametrize("name", PATTERNS)
def test_kv_cache_matches_full_forward(name):
    model = small_lm(name, n_classes=3)
    pat, _, _, inp = random_inputs(model, T=6)
    cond = torch.tensor([0, 2])
    with torch.no_grad():
        full = model(inp, pat, cond=cond)
        for chunk in [1, 3]:  # one step at a time, and chunks of 3 steps (masked within the chunk)
            cache = KVCache(model.cfg, 2, pat.n_steps, "cpu")
            inc = torch.cat([model(inp[..., s : s + chunk], pat, start=s, cache=cache, cond=cond)
                             for s in range(0, pat.n_steps, chunk)], dim=2)
            assert (inc - full).abs().max() < 1e-4


@pytest.mark.parametrize("name", PATTERNS)
def test_greedy_generation_is_consistent_with_full_forward(name):
    """Generated codes (KV cache, greedy) are the argmax of the full forward on themselves."""
    model = small_lm(name)
    codes = generate(model, n_frames=5, batch_size=2, temperature=0)
    assert codes.shape == (2, 3, 5) and codes.min() >= 0 and codes.max() < V
    pat = model.make_pattern(5)
    seq = pat.build(codes, model.cfg.pad)
    with torch.no_grad():
        best = model(model.shift_right(seq), pat).argmax(-1)
    assert torch.equal(best[:, pat.valid], seq[:, pat.valid])


@pytest.mark.parametrize("name", ["delay", "flatten"])
def test_sampling_determinism(name):
    model = small_lm(name)
    a = generate(model, 8, batch_size=2, seed=3, top_k=5, top_p=0.9)
    b = generate(model, 8, batch_size=2, seed=3, top_k=5, top_p=0.9)
    c = generate(model, 8, batch_size=2, seed=4, top_k=5, top_p=0.9)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_top_k_top_p_support():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(2000, -1)
    gen = torch.Generator().manual_seed(0)
    assert set(sample_logits(logits, top_k=2, generator=gen).unique().tolist()) == {0, 1}
    assert set(sample_logits(logits, top_p=0.7, generator=gen).unique().tolist()) == {0, 1}
    assert set(sample_logits(logits, top_p=0.85, generator=gen).unique().tolist()) == {0, 1, 2}
    assert sample_logits(logits, temperature=0).eq(0).all()


def test_classifier_free_guidance_runs_and_changes_samples():
    model = small_lm("delay", n_classes=4)
    cond = torch.tensor([1, 2])
    plain = generate(model, 6, batch_size=2, seed=0, cond=cond)
    guided = generate(model, 6, batch_size=2, seed=0, cond=cond, cfg_coef=3.0)
    assert guided.shape == plain.shape and not torch.equal(plain, guided)
    with pytest.raises(ValueError, match="n_classes"):
        generate(small_lm("delay"), 6, cfg_coef=3.0)


@pytest.mark.parametrize("name", PATTERNS)
def test_bits_per_frame_accounting(name):
    """Equal to a cross-entropy computed code by code from the pattern's (k, t) -> cell map."""
    model = small_lm(name)
    pat, codes, _, inp = random_inputs(model, T=4, b=3, seed=1)
    with torch.no_grad():
        logp = model(inp, pat).log_softmax(-1)                      # [b, j, s, v]
    per_k = [0.0] * model.cfg.n_q
    for s, step in enumerate(pat.steps):
        for k, t in step:
            j = int((pat.frame[:, s] == t).logical_and(pat.codebook[:, s] == k).nonzero())
            per_k[k] -= logp[:, j, s, codes[:, k, t]].diagonal().sum().item()
    want = sum(per_k) / math.log(2) / (3 * 4)
    assert evaluate_bits_per_frame(model, codes, batch_size=2) == pytest.approx(want, rel=1e-5)
    by_k = bits_per_codebook(model, codes, batch_size=2)          # where the bits go, codebook by codebook
    assert by_k.tolist() == pytest.approx([n / math.log(2) / (3 * 4) for n in per_k], rel=1e-5)
    # analytic value: an all-zero head predicts uniformly, K log2(v) bits per frame
    with torch.no_grad():
        model.heads.zero_()
    assert evaluate_bits_per_frame(model, codes) == pytest.approx(3 * math.log2(V), rel=1e-6)


def test_get_batch_is_a_function_of_step_and_covers_items():
    tokens = torch.arange(6 * 2 * 10).view(6, 2, 10)
    cfg = LMTrainConfig(batch_size=3, seq_frames=4)
    a, _ = get_batch(tokens, None, 5, cfg, rank=0, world=1)
    b, _ = get_batch(tokens, None, 5, cfg, rank=0, world=1)
    assert torch.equal(a, b) and a.shape == (3, 2, 4)
    assert (a[:, :, 1:] - a[:, :, :-1]).eq(1).all()               # contiguous crops
    items = torch.cat([get_batch(tokens, None, s, cfg, 0, 1)[0][:, 0, 0] // 20 for s in (0, 1)])
    assert sorted(items.tolist()) == list(range(6))               # one epoch = every item once
    r0 = get_batch(tokens, None, 0, cfg, 0, 2)[0][:, 0, 0] // 20
    r1 = get_batch(tokens, None, 0, cfg, 1, 2)[0][:, 0, 0] // 20
    assert set(r0.tolist()).isdisjoint(r1.tolist())               # ranks see disjoint shards


def test_lr_schedule():
    cfg = LMTrainConfig(steps=100, warmup=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1) and lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(55, cfg) == pytest.approx(0.55) and lr_factor(100, cfg) == pytest.approx(0.1)


def tiny_setup(pattern="delay", dropout=0.0):
    gen = torch.Generator().manual_seed(0)
    tr = torch.randint(0, 16, (4, 2, 24), generator=gen)
    va = torch.randint(0, 16, (2, 2, 24), generator=gen)
    lm_cfg = LMConfig(n_q=2, codebook_size=16, pattern=pattern, dim=64, n_layers=2, n_heads=2,
                      max_steps=128, dropout=dropout)
    return tr, va, lm_cfg


@pytest.mark.parametrize("name", ["delay", "flatten"])
def test_overfits_tiny_token_set(name, tmp_path):
    tr, va, lm_cfg = tiny_setup(name)
    cfg = LMTrainConfig(steps=120, batch_size=4, lr=3e-3, warmup=10, seq_frames=24, eval_every=1000,
                        ckpt_every=1000, progress=False)
    model, hist = train_lm(tr, va, lm_cfg, cfg, tmp_path)
    assert hist[0]["loss"] == pytest.approx(math.log(16), abs=0.2)
    assert max(r["loss"] for r in hist[-5:]) < 0.3
    assert evaluate_bits_per_frame(model, tr) < 0.2 * 2 * math.log2(16)  # memorised the items
    assert (tmp_path / "checkpoint.pt").exists()
    assert [r["step"] for r in hist] == list(range(1, 121))
    assert [r["step"] for r in hist if "valid_bits_per_frame" in r] == [120]


def test_resume_is_exact(tmp_path):
    tr, va, lm_cfg = tiny_setup("delay", dropout=0.2)  # dropout: the RNG state must be restored
    cfg = LMTrainConfig(steps=8, batch_size=2, lr=3e-3, warmup=2, seq_frames=12, eval_every=4,
                        ckpt_every=3, progress=False)
    _, full = train_lm(tr, va, lm_cfg, cfg, tmp_path / "a")
    _, first = train_lm(tr, va, lm_cfg, cfg, tmp_path / "b", stop_after=5)  # checkpoints at 3, 5
    assert [r["step"] for r in first] == [1, 2, 3, 4, 5]
    _, resumed = train_lm(tr, va, lm_cfg, cfg, tmp_path / "b")
    assert resumed == full  # losses, learning rates and valid bits/frame, bit for bit


def test_bad_inputs(tmp_path):
    tr, va, lm_cfg = tiny_setup()
    cfg = LMTrainConfig(steps=1, batch_size=2, seq_frames=30, progress=False)
    with pytest.raises(ValueError, match="seq_frames"):
        train_lm(tr, va, lm_cfg, cfg, tmp_path)
    with pytest.raises(ValueError, match="tokens_train"):
        train_lm(tr.float(), va, lm_cfg, cfg, tmp_path)
    with pytest.raises(ValueError, match="pattern"):
        LMConfig(pattern="spiral")
    with pytest.raises(ValueError, match="max_steps"):
        generate(small_lm("flatten"), n_frames=100)
    assert lm_config("tiny", pattern="flatten").pattern == "flatten"
    ok = LMTrainConfig(steps=1, batch_size=2, seq_frames=8, progress=False)
    with pytest.raises(ValueError, match="tokens_train: no items"):
        train_lm(tr[:0], va, lm_cfg, ok, tmp_path)
    with pytest.raises(ValueError, match="tokens_valid: no items"):
        train_lm(tr, va[:0], lm_cfg, ok, tmp_path)
    for bad in ({"steps": 0}, {"steps": -3}, {"batch_size": 0}, {"steps": 1.5}):
        with pytest.raises(ValueError, match=f"{next(iter(bad))}="):
            LMTrainConfig(**bad)
    model = small_lm("delay")
    for kw, match in (({"temperature": -1.0}, "temperature"), ({"temperature": float("nan")}, "temperature"),
                      ({"top_k": 0}, "top_k"), ({"top_p": -0.1}, "top_p"), ({"top_p": 1.5}, "top_p")):
        with pytest.raises(ValueError, match=match):
            generate(model, n_frames=4, **kw)


def test_conditional_training_runs(tmp_path):
    tr, va, lm_cfg = tiny_setup()
    lm_cfg = LMConfig(**{**lm_cfg.to_dict(), "n_classes": 3})
    cfg = LMTrainConfig(steps=3, batch_size=2, seq_frames=12, eval_every=3, progress=False)
    model, hist = train_lm(tr, va, lm_cfg, cfg, tmp_path, labels_train=torch.tensor([0, 1, 2, 0]),
                           labels_valid=torch.tensor([1, 2]))
    assert len(hist) == 3 and math.isfinite(hist[-1]["valid_bits_per_frame"])
    assert generate(model, 4, batch_size=2, cond=torch.tensor([0, 2]), cfg_coef=2.0).shape == (2, 2, 4)


def test_factorised_patterns_pay_for_within_frame_dependence(tmp_path):
    """Codebook 1 is a function of codebook 0 in the same frame, codebook 0 is uniform noise:
    log2(16) = 4 bits/frame are irreducible. Delay and flatten see codebook 0 before predicting
    codebook 1 and reach ~4 bits; parallel predicts both at once and pays ~8 (the factorisation gap
    the MMD loss is meant to shrink)."""
    g = torch.Generator().manual_seed(0)

    def tokens(n):
        c0 = torch.randint(16, (n, 1, 60), generator=g)
        return torch.cat([c0, (c0 + 3) % 16], 1)

    train, valid = tokens(256), tokens(32)
    tcfg = LMTrainConfig(steps=150, batch_size=16, seq_frames=50, eval_every=150, warmup=10, ckpt_every=150,
                         lr=3e-3, progress=False)
    bits = {}
    for name in ("parallel", "delay", "flatten"):
        cfg = lm_config("small", pattern=name, n_q=2, codebook_size=16, dim=64, n_layers=2)
        _, hist = train_lm(train, valid, cfg, tcfg, tmp_path / name)
        bits[name] = hist[-1]["valid_bits_per_frame"]
    assert bits["parallel"] == pytest.approx(8.0, abs=0.3)
    assert bits["delay"] == pytest.approx(4.0, abs=0.3) and bits["flatten"] == pytest.approx(4.0, abs=0.3)


def test_resume_refuses_another_pattern_and_names_the_key(tmp_path):
    tr, va, lm_cfg = tiny_setup("delay")
    cfg = LMTrainConfig(steps=2, batch_size=2, seq_frames=12, eval_every=2, progress=False)
    train_lm(tr, va, lm_cfg, cfg, tmp_path)
    flatten = dataclasses.replace(lm_cfg, pattern="flatten")
    with pytest.raises(ValueError, match=r"another configuration: model\.pattern: 'delay' in the checkpoint, "
                                         r"'flatten' now\. Use a new run_dir"):
        train_lm(tr, va, flatten, cfg, tmp_path)
    with pytest.raises(ValueError, match=r"model\.dim: 64 in the checkpoint, 32 now; train\.lr: 0\.001 in"):
        train_lm(tr, va, dataclasses.replace(lm_cfg, dim=32), dataclasses.replace(cfg, lr=3e-3), tmp_path)
    # settings that do not change the run may change, and steps may grow ...
    grown = dataclasses.replace(cfg, steps=3, eval_batch_size=1, ckpt_every=7, device="cpu:0")  # (a CPU-only test)
    _, hist = train_lm(tr, va, lm_cfg, grown, tmp_path)
    assert [r["step"] for r in hist] == [1, 2, 3]
    # ... but not fall below the checkpoint's step
    with pytest.raises(ValueError, match=r"checkpoint\.pt is at step 3, past steps=2: resume with steps >= 3"):
        train_lm(tr, va, lm_cfg, cfg, tmp_path)


def test_corrupt_checkpoint_names_the_file_and_resumes_from_the_previous(tmp_path):
    tr, va, lm_cfg = tiny_setup()
    cfg = LMTrainConfig(steps=2, batch_size=2, seq_frames=12, eval_every=2, ckpt_every=1, progress=False)
    _, full = train_lm(tr, va, lm_cfg, cfg, tmp_path / "full")
    _, first = train_lm(tr, va, lm_cfg, cfg, tmp_path)  # checkpoints after steps 1 and 2
    ckpt = tmp_path / "checkpoint.pt"
    assert torch.load(tmp_path / "checkpoint.pt.prev", weights_only=False)["step"] == 1
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])  # truncated, as by a full disk
    with pytest.raises(CheckpointError) as err:
        train_lm(tr, va, lm_cfg, cfg, tmp_path)
    msg = str(err.value)
    assert f"{ckpt} cannot be read: it is truncated or corrupt" in msg and f"{ckpt}.prev" in msg
    assert "use_previous" in msg and "Delete it" in msg
    use_previous(ckpt)  # back to step 1: step 2 is trained again, exactly as before
    _, again = train_lm(tr, va, lm_cfg, cfg, tmp_path)
    assert again == first == full


def test_one_training_per_run_dir(tmp_path):
    tr, va, lm_cfg = tiny_setup()
    cfg = LMTrainConfig(steps=1, batch_size=2, seq_frames=12, eval_every=1, progress=False)
    with run_lock(tmp_path):  # another training holds the directory
        with pytest.raises(RunDirLocked, match=f"in use by another training \\(pid {os.getpid()} on "):
            train_lm(tr, va, lm_cfg, cfg, tmp_path)
    assert not (tmp_path / "checkpoint.pt").exists()
    (tmp_path / "train.lock").write_text("pid 4194304 on elsewhere\n")  # left by a process that is gone
    _, hist = train_lm(tr, va, lm_cfg, cfg, tmp_path)
    assert len(hist) == 1


def test_load_round_trip(tmp_path):
    tr, va, lm_cfg = tiny_setup("flatten")
    cfg = LMTrainConfig(steps=2, batch_size=2, seq_frames=12, eval_every=2, progress=False)
    model, _ = train_lm(tr, va, lm_cfg, cfg, tmp_path)
    loaded = TokenLM.load(tmp_path / "lm.pt")
    assert loaded.cfg == lm_cfg and not loaded.training
    assert model.state_dict().keys() == loaded.state_dict().keys()
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    assert torch.equal(generate(model, 5, seed=1), generate(loaded, 5, seed=1))
    torch.save({"config": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt is not an LM file"):
        TokenLM.load(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="checkpoint.pt is not an LM file .* train_lm writes run_dir/lm.pt"):
        TokenLM.load(tmp_path / "checkpoint.pt")  # the training checkpoint: not a model file
    with pytest.raises(FileNotFoundError, match="missing.pt does not exist"):
        TokenLM.load(tmp_path / "missing.pt")


def test_model_file_holds_the_best_state_so_far(tmp_path):
    """run_dir/lm.pt ({"config", "model", "codec"}) comes with every checkpoint: the last state before the first
    evaluation, then the best; a finished run started again writes it from its checkpoint."""
    tr, va, lm_cfg = tiny_setup()
    cfg = LMTrainConfig(steps=6, batch_size=2, seq_frames=12, eval_every=2, ckpt_every=1, progress=False)
    load = lambda name: torch.load(tmp_path / name, weights_only=False)  # noqa: E731
    same = lambda a, b: all(torch.equal(v, b[k]) for k, v in a.items())  # noqa: E731
    train_lm(tr, va, lm_cfg, cfg, tmp_path, stop_after=1)  # no evaluation yet
    assert load("lm.pt").keys() == {"config", "model", "codec"} and load("lm.pt")["codec"] is None
    assert load("lm.pt")["config"] == lm_cfg.to_dict()
    assert same(load("lm.pt")["model"], load("checkpoint.pt")["model"])
    train_lm(tr, va, lm_cfg, cfg, tmp_path, stop_after=3)  # evaluated at step 2
    assert load("checkpoint.pt")["best"]["step"] == 2 and same(load("lm.pt")["model"], load("checkpoint.pt")["best"]["model"])
    train_lm(tr, va, lm_cfg, cfg, tmp_path)
    (tmp_path / "lm.pt").unlink()
    model, _ = train_lm(tr, va, lm_cfg, cfg, tmp_path)  # finished: trains nothing, writes lm.pt again
    assert same(TokenLM.load(tmp_path / "lm.pt").state_dict(), model.state_dict())


def test_training_and_evaluation_share_one_loss(tmp_path):
    """The loss train_lm logs at step 1 is the NLL nll_sum gives the initial model on that batch."""
    tr, va, lm_cfg = tiny_setup("delay")  # no dropout: training and evaluation forwards agree
    cfg = LMTrainConfig(steps=1, batch_size=3, seq_frames=12, eval_every=1, progress=False)
    _, hist = train_lm(tr, va, lm_cfg, cfg, tmp_path)
    torch.manual_seed(cfg.seed)
    initial = TokenLM(lm_cfg)  # the model train_lm starts from
    batch, _ = get_batch(tr, None, 0, cfg, rank=0, world=1)
    nats, frames = nll_sum(initial, batch)
    assert hist[0]["loss"] == pytest.approx(nats / (frames * lm_cfg.n_q), rel=1e-6)
    with torch.no_grad():
        nll, n_codes = sequence_nll(initial.train(), batch)  # as in training
    assert n_codes == batch.numel() and float(nll) == nats


@pytest.mark.parametrize("name", PATTERNS)
def test_amp_trains_in_bf16_autocast_on_cpu(tmp_path, name):
    """Every pattern's loss under bf16 autocast is the float32 loss within 1 % (flatten, coarse_first and
    grouped_delay once crashed there: their per-codebook heads wrote bf16 logits into a float32 tensor)."""
    tr, va, lm_cfg = tiny_setup(name)
    model = TokenLM(lm_cfg)
    batch = tr[:2, :, :8]
    with torch.no_grad():
        full = float(sequence_nll(model, batch)[0])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = float(sequence_nll(model, batch)[0])
    assert abs(half - full) < 0.01 * full
    cfg = LMTrainConfig(steps=3, batch_size=2, seq_frames=8, eval_every=3, progress=False, amp=True)
    _, history = train_lm(tr, va, lm_cfg, cfg, tmp_path)
    assert all(math.isfinite(r["loss"]) for r in history) and math.isfinite(history[-1]["valid_bits_per_frame"])


@pytest.mark.slow  # ~10 s: a 1024-wide transformer over 4 x 2048 codes on CPU
def test_paper_lm_preset_trains_and_generates_on_cpu(tmp_path):
    """The paper LM (width 1024, 16 heads, 4 x 2048 codes, dropout 0.1) with its training preset
    (AdamW, lr 1e-4, warm-up, delay pattern) for 2 steps on short crops, cut to 2 of its 24 layers
    (every code path, in a CPU's memory), then KV-cached sampling: the GPU run's path once."""
    from mmdlib.train.config import LM_TRAIN_PRESETS
    lm_cfg = lm_config("paper", n_layers=2)
    assert (lm_cfg.dim, lm_cfg.n_heads, lm_cfg.codebook_size, lm_cfg.dropout, lm_cfg.pattern) == (1024, 16, 2048, 0.1, "delay")
    cfg = dataclasses.replace(LM_TRAIN_PRESETS["paper"], steps=2, batch_size=2, seq_frames=24, eval_every=2,
                              ckpt_every=2, device="cpu", progress=False)
    tokens = torch.randint(0, 2048, (4, 4, 30), generator=torch.Generator().manual_seed(0))
    model, history = train_lm(tokens[:2], tokens[2:], lm_cfg, cfg, tmp_path)
    # untrained: about ln 2048 nats per code, log2(2048) x 4 bits per frame on uniform codes
    assert history[0]["loss"] == pytest.approx(math.log(2048), abs=0.6)
    assert history[-1]["valid_bits_per_frame"] == pytest.approx(44.0, abs=3.0)
    codes = generate(TokenLM.load(tmp_path / "lm.pt"), n_frames=6, batch_size=2)
    assert codes.shape == (2, 4, 6) and 0 <= int(codes.min()) and int(codes.max()) < 2048


def test_windows_cut_clips_at_the_training_length():
    codes = torch.arange(2 * 3 * 25).view(2, 3, 25)
    w = windows(codes, 10)                                   # 2 windows per clip, the 5-frame tail dropped
    assert w.shape == (4, 3, 10)
    assert torch.equal(w[1], codes[0, :, 10:20]) and torch.equal(w[2], codes[1, :, :10])
    assert windows(codes, None) is codes and windows(codes, 25) is codes


def test_early_stopping_keeps_the_best_state(tmp_path):
    """Two random training clips: the LM over-fits them, the held-out loss turns up, training stops
    `patience` evaluations after the best one, and the returned model, the model file's and a rerun
    are that best state."""
    torch.manual_seed(0)
    train, valid = torch.randint(0, 8, (2, 2, 20)), torch.randint(0, 8, (16, 2, 20))
    lm_cfg = lm_config("tiny", n_q=2, codebook_size=8, dim=32, n_layers=1, n_heads=2, pattern="delay")
    tcfg = LMTrainConfig(steps=400, batch_size=4, lr=1e-2, warmup=1, seq_frames=10, eval_every=10, patience=2,
                         ckpt_every=1000, progress=False)
    model, hist = train_lm(train, valid, lm_cfg, tcfg, tmp_path)
    evals = [(r["step"], r["valid_bits_per_frame"]) for r in hist if "valid_bits_per_frame" in r]
    best_step, best_bits = min(evals, key=lambda e: e[1])
    assert hist[-1]["step"] < tcfg.steps and hist[-1]["step"] == best_step + 2 * tcfg.eval_every
    assert evaluate_bits_per_frame(model, valid, window=10) == pytest.approx(best_bits, rel=1e-5)
    loaded = TokenLM.load(tmp_path / "lm.pt")
    assert evaluate_bits_per_frame(loaded, valid, window=10) == pytest.approx(best_bits, rel=1e-5)
    _, again = train_lm(train, valid, lm_cfg, tcfg, tmp_path)   # a stopped run stays stopped
    assert len(again) == len(hist)


def test_lm_tensorboard_logs_its_evaluations(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tr, va, lm_cfg = tiny_setup()
    train_lm(tr, va, lm_cfg, LMTrainConfig(steps=4, batch_size=2, seq_frames=8, eval_every=2, progress=False),
             tmp_path, tensorboard=True)
    acc = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert [e.step for e in acc.Scalars("lm/valid_bits_per_frame")] == [2, 4]
