"""Self-critical training (issue 18): the math on a hand example, one BLIP-2 step, CIDEr gained
on an unseen seed, and kill-and-resume equality."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_blip2 import build_tiny_blip2

from vicap_utils import captioner, scst
from vicap_utils.__main__ import main
from vicap_utils.config import load_config
from vicap_utils.metrics import CiderD, compare, diversity, python_tokenize
from vicap_utils.ops.adapters import load_model
from vicap_utils.predict import predict_images
from vicap_utils.toy.data import generate


def vicap(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "vicap_utils", *args], capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_reward_baseline_and_loss_on_a_hand_example():
    refs = [[python_tokenize("một cầu thủ đá bóng"), python_tokenize("cầu thủ đá bóng trên sân")]]
    cider = CiderD(refs * 3)  # three images with the same references: idf of shared words is 0
    got = scst.rewards(cider, ["một cầu thủ đá bóng", "con mèo"], refs * 2)
    assert got[1] == 0 and got[0] == 0  # every n-gram in every image: no information
    cider = CiderD([refs[0], [python_tokenize("con mèo ngủ")]])
    got = scst.rewards(cider, ["một cầu thủ đá bóng", "con mèo"], refs * 2)
    assert got[0] > 1.0 and got[1] == 0.0
    r = torch.tensor([[1.0, 2.0, 6.0]])
    # Luo 2020: each sample's baseline is the mean of the other two
    assert scst.baseline(r).tolist() == [[4.0, 3.5, 1.5]]
    assert scst.baseline(r, greedy=torch.tensor([2.0])).tolist() == [[2.0, 2.0, 2.0]]
    logp = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    loss = scst.loss(logp, r, scst.baseline(r))
    # advantages -3, -1.5, 4.5: -(-3*-1 + -1.5*-2 + 4.5*-0.5) / 3 = -(3 + 3 - 2.25) / 3
    assert loss.item() == pytest.approx(-1.25)
    loss.backward()
    assert logp.grad.tolist() == pytest.approx([1.0, 0.5, -1.5])  # raise the best, lower the rest


def test_compare_says_when_scst_bought_cider_with_diversity():
    ce = {"CIDEr": 1.0, "TTR": 0.2, "distinct-2": 0.3, "vocab_size": 40, "repetition_rate": 0.1}
    table = compare(ce, {**ce, "CIDEr": 1.2, "TTR": 0.1, "repetition_rate": 0.3})
    assert table.splitlines()[-1] == ("SCST bought CIDEr (+20.0%) with diversity: TTR, "
                                      "repetition_rate worse")
    assert "0.2000         0.1000" in table
    assert compare(ce, {**ce, "CIDEr": 1.1}).endswith("raised CIDEr (+10.0%) without losing "
                                                      "diversity")
    assert compare(ce, ce).endswith("did not raise CIDEr (+0.0%)")


def test_scst_from_a_folder_without_an_adapter_is_one_line(tmp_path, capsys):
    assert main(["train", "--profile", "mini", "--out", str(tmp_path / "run"),
                 "--scst-from", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--scst-from" in err and "not an adapter folder" in err
    assert not (tmp_path / "run" / "config.json").exists()  # refused before the run starts


@pytest.fixture(scope="module")
def blip2(tmp_path_factory):
    base = build_tiny_blip2(tmp_path_factory.mktemp("tiny-blip2"))
    cfg = load_config("flickr8k-blip2", overrides=[f"model.base={base}",
                                                   "model.load_in_8bit=false"])
    cap = captioner.load_base(cfg.model, False)
    captioner.add_lora(cap, captioner.lora_config(cap, cfg.lora))
    return cap, cfg


def test_blip2_sample_logprobs_match_the_training_loss_and_a_step_moves_lora(blip2):
    cap, cfg = blip2
    torch.manual_seed(0)
    feats = captioner.image_features(cap.model, torch.randn(2, 3, 32, 32))
    drawn = scst.sample(cap, feats, "features", 3, 6)
    assert drawn.ids.shape[0] == 6 and len(drawn.captions) == 6
    forward = captioner.TrainingForward(cap.model, cap.family, True)
    cap.model.eval()
    logp = scst.sequence_logprobs(forward, feats, drawn)
    # the same log-probability as the cross-entropy loss of that sample as a caption
    labels = drawn.ids.clone()
    start = drawn.ids.shape[1] - drawn.valid.shape[1]
    labels[:, :start] = captioner.IGNORE
    labels[:, start:][~drawn.valid] = captioner.IGNORE
    logits = forward(feats.repeat_interleave(3, 0), drawn.ids, drawn.mask)
    assert logp[0].item() == pytest.approx(-captioner.loss(logits[:1], labels[:1]).item(),
                                           rel=1e-4)
    refs = [["a player kicks a ball"], ["two players in red"]]
    reward = scst.Scst(cap, refs, cfg.scst, "features")
    lora = {n: p.detach().clone() for n, p in cap.model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in cap.model.parameters() if p.requires_grad], lr=1e-2)
    loss = reward(forward, {"row": torch.tensor([0, 1]), "image": feats})
    loss.backward()
    optimizer.step()
    moved = [n for n, p in cap.model.named_parameters() if p.requires_grad
             and not torch.equal(p.detach(), lora[n])]
    assert torch.isfinite(loss) and any("lora" in n for n in moved)
    greedy = scst.Scst(cap, refs, replace(cfg.scst, samples=1, greedy_baseline=True), "features")
    assert torch.isfinite(greedy(forward, {"row": torch.tensor([1, 0]), "image": feats}))


def scores(adapter: Path, fresh: Path) -> dict:
    """CIDEr-D (the Python tokenizer) and diversity of an adapter's captions of a fresh set."""
    refs_by = {}
    data = json.loads((fresh / "captions.json").read_text())
    for ann in data["annotations"]:
        refs_by.setdefault(ann["image_id"], []).append(python_tokenize(ann["caption"]))
    ids = sorted(refs_by, key=str)
    files = {im["id"]: im["file_name"] for im in data["images"]}
    cap = load_model(str(adapter))
    dec = captioner.Decoding(num_beams=1, max_new_tokens=30)  # greedy: quick, same for both
    hyps = [python_tokenize(c) for c in predict_images(cap, [fresh / "images" / files[i]
                                                             for i in ids], dec, 32)]
    refs = [refs_by[i] for i in ids]
    return {"CIDEr": CiderD(refs).score(hyps, refs)[0], **diversity(hyps)}


@pytest.mark.slow
def test_scst_raises_cider_on_an_unseen_seed(tmp_path, mini_run):
    run = tmp_path / "scst"
    vicap("train", "--profile", "mini", "--out", str(run), "--scst-from", str(mini_run / "best"),
          "--set", "train.max_steps=8", "--set", "train.val_sample=0", "--set", "eval.num_beams=1")
    fresh = tmp_path / "fresh"
    generate(fresh, n_images=60, seed=777, lang="vi")
    ce, sc = scores(mini_run / "best", fresh), scores(run / "final", fresh)
    print("\n" + compare(ce, sc))
    assert sc["CIDEr"] >= 1.05 * ce["CIDEr"], (ce, sc)
    history = (run / "history.csv").read_text().splitlines()
    assert history[0] == "epoch,train_loss,val_loss,val_CIDEr,seconds" and len(history) == 2


@pytest.mark.slow
def test_kill_and_resume_during_scst_gives_the_same_adapter(tmp_path, mini_run):
    fast = ["--profile", "mini", "--scst-from", str(mini_run / "best"),
            "--set", "scst.batch_size=4", "--set", "scst.samples=3", "--set", "train.max_steps=6",
            "--set", "train.val_sample=0", "--set", "scst.max_new_tokens=8",
            "--set", "eval.num_beams=1", "--set", "eval.max_new_tokens=8",
            "--set", "train.save_every_steps=2"]
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    vicap("train", "--out", str(straight), *fast)
    proc = subprocess.Popen([sys.executable, "-m", "vicap_utils", "train", "--out", str(broken),
                             *fast], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    state = broken / "last" / "state.json"
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                if json.loads(state.read_text())["global_step"] >= 2:
                    break
            except (OSError, json.JSONDecodeError, KeyError):
                pass
            assert proc.poll() is None, "training ended before it could be killed"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    killed_at = json.loads(state.read_text())
    assert 2 <= killed_at["global_step"] < 6 and killed_at["scst_from"]
    vicap("train", "--out", str(broken), *fast, "--resume")
    a, b = (load_file(str(r / "final" / "adapter_model.safetensors")) for r in (straight, broken))
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5
