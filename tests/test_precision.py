"""The GPU recipes run on the CPU (VICAP_EMULATE_T4=1): BLIP-2 in 8-bit through bitsandbytes'
CPU backend, and fp16 autocast with the trainer's GradScaler, trained, resumed and captioned."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vicap_utils import captioner
from vicap_utils.config import load_config
from vicap_utils.ops.hardware import EMULATE_T4
from vicap_utils.train import Trainer, train

QUIET = {"log": lambda *args, **kwargs: None}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """(tiny BLIP-2 folder, synthetic English captions file of 12 images)."""
    from tiny_blip2 import build_tiny_blip2

    from vicap_utils.toy.data import generate

    root = tmp_path_factory.mktemp("precision")
    generate(root / "data", n_images=12, seed=3, lang="en")
    return build_tiny_blip2(root / "tiny-blip2"), root / "data" / "captions.json"


@pytest.fixture
def t4(monkeypatch):
    """A T4's plan on this CPU."""
    monkeypatch.setenv(EMULATE_T4, "1")


@pytest.fixture
def logits_dtypes(monkeypatch) -> list[torch.dtype]:
    """The dtype of every batch of logits the loss sees (training and validation)."""
    seen: list[torch.dtype] = []
    real = captioner.loss

    def recording(logits, labels, smoothing=0.0):
        seen.append(logits.dtype)
        return real(logits, labels, smoothing)

    monkeypatch.setattr(captioner, "loss", recording)
    return seen


def blip2_config(tiny: tuple[Path, Path], *overrides: str):
    base, captions = tiny
    return load_config("flickr8k-blip2", overrides=[
        f"model.base={base}", f"data.train_annotations={captions}", "data.source=coco",
        "train.epochs=1", "train.batch_size=2", "train.grad_accum=1", "eval.num_beams=1",
        "eval.max_new_tokens=4", "eval.batch_size=4", *overrides])


def mini_config(*overrides: str):
    return load_config("mini", overrides=[
        "data.synthetic_images=10", "train.epochs=1", "train.batch_size=4", "eval.num_beams=1",
        "eval.max_new_tokens=4", *overrides])


def overflow_at(steps: set[int], monkeypatch) -> list[tuple[dict, dict]]:
    """Make the gradients of these optimizer steps overflow (an inf in one LoRA gradient);
    returns the trainable weights before and after every step."""
    real, weights = Trainer.step, []

    def step(self):
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        if self.state.global_step in steps:
            trainable[0].grad.fill_(float("inf"))
        before = {i: p.detach().clone() for i, p in enumerate(trainable)}
        real(self)
        weights.append((before, {i: p.detach().clone() for i, p in enumerate(trainable)}))

    monkeypatch.setattr(Trainer, "step", step)
    return weights


def lora_grads_after_backward(cap, image, ids, mask, labels, cached: bool) -> dict:
    """Every trainable tensor's gradient after one fp16-autocast forward and a backward of the
    loss times a GradScaler's initial scale (unscaled, small fp16 gradients underflow)."""
    cap.model.zero_grad()
    with torch.autocast("cpu", dtype=torch.float16):
        logits = captioner.forward(cap.model, cap.family, image, ids, mask, cached)
    assert logits.dtype == torch.float16
    (captioner.loss(logits, labels) * torch.amp.GradScaler("cpu").get_scale()).backward()
    return {n: p.grad for n, p in cap.model.named_parameters() if p.requires_grad}


def test_8bit_blip2_lora_gets_every_gradient_in_fp32_on_pixels_and_cached_features(tiny, t4):
    import bitsandbytes as bnb

    from vicap_utils.ops.features import encode_images

    cfg = blip2_config(tiny)
    cap = captioner.load_base(cfg.model, **QUIET)
    eight_bit = [n for n, m in cap.model.named_modules() if isinstance(m, bnb.nn.Linear8bitLt)]
    assert any(n.endswith("q_proj") for n in eight_bit) and any("fc1" in n for n in eight_bit)
    assert not any("vision_model" in n or "qformer" in n for n in eight_bit)
    captioner.add_lora(cap, captioner.lora_config(cap, cfg.lora))
    trainable = {n: p.dtype for n, p in cap.model.named_parameters() if p.requires_grad}
    assert trainable and set(trainable.values()) == {torch.float32}
    paths = sorted((tiny[1].parent / "images").iterdir())[:2]
    pixels = captioner.pixel_values(cap, [Image.open(p).convert("RGB") for p in paths])
    features = encode_images(cap, paths, show=False)
    ids, mask, labels = captioner.encode_captions(
        cap.tokenizer, ["A dog runs.", "Two cats sit."], 12, prefix=captioner.image_prefix(cap))
    cap.model.train()
    for image, cached in ((pixels, False), (features, True)):
        grads = lora_grads_after_backward(cap, image, ids, mask, labels, cached)
        assert grads.keys() == trainable.keys()
        assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
        assert all(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)


@pytest.mark.parametrize("family", ["blip", "blip2"])
def test_fp16_cached_features_give_the_loss_of_pixels(family, tiny, t4):
    """Under fp16 autocast the fp16 feature cache changes the loss by < 0.1 % (measured: BLIP-1
    mini 0.002 %; BLIP-2 in 8-bit 0, as autocast rounds the ViT's output to fp16 anyway)."""
    from vicap_utils.builders import build_captioner, build_examples
    from vicap_utils.dataset import collate
    from vicap_utils.prepare import prepare

    cfg = blip2_config(tiny) if family == "blip2" else mini_config()
    out = tiny[0].parent / f"run-{family}"
    data = prepare(cfg, out / "data", **QUIET)
    cap = build_captioner(cfg, data, **QUIET)[0]
    sets = {kind: build_examples(replace(cfg, train=replace(cfg.train,
                                                            cache_vision_features=kind)),
                                 cap, data, show=False, **QUIET)
            for kind in (True, False)}
    assert sets[True].cached and not sets[False].cached
    cap.model.eval()
    losses = {}
    for cached, examples in sets.items():
        batch = collate([examples.val[i] for i in range(4)])
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
            logits = captioner.forward(cap.model, family, batch["image"], batch["input_ids"],
                                       batch["attention_mask"], cached)
        assert logits.dtype == torch.float16
        losses[cached] = captioner.loss(logits, batch["labels"]).item()
    assert losses[True] == pytest.approx(losses[False], rel=1e-3), losses


@pytest.mark.slow
def test_8bit_blip2_killed_after_a_checkpoint_resumes_to_the_same_adapter_and_captions(
        tiny, t4, tmp_path, monkeypatch, logits_dtypes):
    """Trained in 8-bit under fp16 autocast, with one overflowing step (skipped and counted);
    killed after its step-4 checkpoint, resumed: the adapter, the skipped-step count and the
    GradScaler's scale of an uninterrupted run. The adapter captions on a fresh 8-bit base."""
    import bitsandbytes as bnb

    from vicap_utils.ops.adapters import load_model

    cfg = blip2_config(tiny, "train.max_steps=6", "train.save_every_steps=2")
    overflow_at({1}, monkeypatch)
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    summary = train(cfg, straight, **QUIET)
    assert (summary["global_step"], summary["skipped_steps"]) == (6, 1)
    assert logits_dtypes and set(logits_dtypes) == {torch.float16}

    save_last = Trainer.save_last

    def killed_after_step_4(self):
        save_last(self)
        if self.state.global_step == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "save_last", killed_after_step_4)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, broken, **QUIET)
    assert json.loads((broken / "last" / "state.json").read_text())["skipped_steps"] == 1
    monkeypatch.setattr(Trainer, "save_last", save_last)
    assert train(cfg, broken, resume=True, **QUIET)["skipped_steps"] == 1
    a = load_file(str(straight / "final" / "adapter_model.safetensors"))
    b = load_file(str(broken / "final" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(t.dtype == torch.float32 for t in a.values())
    scales = [torch.load(run / "last" / "scaler.pt")["scale"] for run in (straight, broken)]
    assert scales == [2.0**15] * 2  # 2**16 halved once, by the overflow

    cap = load_model(str(straight / "final"))
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in cap.model.modules())
    loaded = {n: p for n, p in cap.model.named_parameters() if "lora_B" in n}
    assert loaded and any(p.abs().sum() > 0 for p in loaded.values())
    images = [Image.open(p).convert("RGB") for p in sorted((tiny[1].parent / "images")
                                                           .iterdir())[:2]]
    out = captioner.caption(cap, images=images, dec=captioner.Decoding(num_beams=1,
                                                                       max_new_tokens=4))
    assert len(out) == 2 and all(isinstance(alts[0][0], str) for alts in out)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["blip", "blip2"])
def test_fp16_training_skips_and_counts_an_overflowing_step(family, tiny, t4, tmp_path,
                                                            monkeypatch, logits_dtypes, capsys):
    """fp16 autocast with fp32 trainable weights and a finite loss (BLIP-1 on cached features,
    BLIP-2 unquantised on pixels); the step whose gradients overflow leaves the weights, the
    optimizer and the schedule as they were, and is counted."""
    cfg = (blip2_config(tiny, "model.load_in_8bit=false", "train.cache_vision_features=false",
                        "train.max_steps=2")
           if family == "blip2" else mini_config("train.max_steps=2"))
    weights = overflow_at({0}, monkeypatch)
    summary = train(cfg, tmp_path / "run")
    assert (summary["global_step"], summary["skipped_steps"]) == (2, 1)
    assert "1 overflowing fp16 steps skipped" in capsys.readouterr().out
    assert logits_dtypes and set(logits_dtypes) == {torch.float16}
    (before, after), (_, trained) = weights
    assert all(torch.equal(before[i], after[i]) for i in before)
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in trained.values())
    assert any(not torch.equal(after[i], trained[i]) for i in after)
    last = tmp_path / "run" / "last"
    assert torch.load(last / "scheduler.pt")["last_epoch"] == 1
    steps = {int(s["step"]) for s in torch.load(last / "optimizer.pt")["state"].values()}
    assert steps == {1}


def test_importing_the_8bit_stack_prints_nothing():
    """bitsandbytes (imported by peft) must not add a line to vicap's one-line errors."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "import vicap_utils, peft, bitsandbytes"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_a_checkpoint_changes_precision_on_resume_either_way(t4, tmp_path, monkeypatch):
    """The GradScaler exists in every run but only an fp16 one saves `scaler.pt`: a run killed
    after its step-2 checkpoint in fp32 resumes under fp16 (a fresh scale), and the reverse."""
    save_last = Trainer.save_last

    def killed_after_step_2(self):
        save_last(self)
        if self.state.global_step == 2:
            raise KeyboardInterrupt

    for first, then in (("no", "fp16"), ("fp16", "no")):
        run = tmp_path / f"{first}-then-{then}"
        monkeypatch.setattr(Trainer, "save_last", killed_after_step_2)
        with pytest.raises(KeyboardInterrupt):
            train(mini_config("train.max_steps=3", "train.save_every_steps=1",
                              f"train.mixed_precision={first}"), run, **QUIET)
        assert (run / "last" / "scaler.pt").is_file() == (first == "fp16")
        monkeypatch.setattr(Trainer, "save_last", save_last)
        summary = train(mini_config("train.max_steps=3", "train.save_every_steps=1",
                                    f"train.mixed_precision={then}"), run, resume=True, **QUIET)
        assert (summary["global_step"], summary["skipped_steps"]) == (3, 0)
        assert (run / "last" / "scaler.pt").is_file() == (then == "fp16")
    scale = torch.load(tmp_path / "no-then-fp16" / "last" / "scaler.pt")["scale"]
    assert scale == 2.0**16  # started fresh at the resume, no overflow since
