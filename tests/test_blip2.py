"""A tiny random BLIP-2 (OPT decoder) trains a step, saves, reloads and generates on the CPU."""
from __future__ import annotations

import json

import pytest
import torch
from tiny_blip2 import build_tiny_blip2

from vicap_utils.captioner import IGNORE, Captioner, encode_captions, image_prefix, lora_targets
from vicap_utils.config import load_config


@pytest.fixture(scope="module")
def blip2_base(tmp_path_factory):
    return build_tiny_blip2(tmp_path_factory.mktemp("tiny-blip2"))


def test_labels_mask_image_tokens_and_padding(blip2_base):
    from transformers import Blip2Processor

    proc = Blip2Processor.from_pretrained(blip2_base)
    prefix = image_prefix(Captioner(model=None, processor=proc, family="blip2", base=""))
    assert len(prefix) == 4
    ids, mask, labels = encode_captions(proc.tokenizer, ["A player.", "Two players in red."],
                                        max_length=16, prefix=prefix)
    assert (labels[:, :5] == IGNORE).all()
    assert (labels[mask == 0] == IGNORE).all()
    assert (labels[0, 5:][mask[0, 5:] == 1] != IGNORE).all()


def test_default_lora_targets_hit_qformer_and_opt(blip2_base):
    import re

    from transformers import Blip2ForConditionalGeneration

    cfg = load_config("flickr8k-blip2")
    names = [n for n, _ in Blip2ForConditionalGeneration.from_pretrained(blip2_base)
             .named_modules()]
    hits = [n for n in names if re.fullmatch(lora_targets("blip2", cfg.lora), n)]
    assert any("qformer" in n and n.endswith("query") for n in hits)
    assert any("qformer" in n and n.endswith("value") for n in hits)
    assert any(n.endswith("q_proj") for n in hits) and any(n.endswith("v_proj") for n in hits)
    assert not any(n.endswith("key") or n.endswith("k_proj") for n in hits)


@pytest.mark.slow
def test_tiny_blip2_trains_saves_reloads_and_generates(blip2_base, tmp_path, capsys):
    from PIL import Image

    from vicap_utils.captioner import Decoding, caption
    from vicap_utils.ops.adapters import load_model
    from vicap_utils.toy.data import generate
    from vicap_utils.train import train

    data = tmp_path / "data"
    generate(data, n_images=12, seed=3, lang="en")
    cfg = load_config("flickr8k-blip2", overrides=[
        f"model.base={blip2_base}", f"data.train_annotations={data / 'captions.json'}",
        "data.source=coco", "train.epochs=1", "train.batch_size=4", "train.grad_accum=1",
        "train.max_steps=2", "eval.num_beams=2", "eval.max_new_tokens=5", "eval.batch_size=4"])
    summary = train(cfg, tmp_path / "run")
    assert "notice: 8-bit needs a CUDA GPU" in capsys.readouterr().out  # the CPU fallback
    assert summary["global_step"] == 2
    final = tmp_path / "run" / "final"
    meta = json.loads((final / "vicap.json").read_text())
    assert meta["family"] == "blip2" and (final / "adapter_model.safetensors").is_file()
    loaded = load_model(str(final))
    out = caption(loaded, images=[Image.new("RGB", (40, 30), "green")],
                        dec=Decoding(num_beams=2, max_new_tokens=5, num_return_sequences=2))
    assert len(out) == 1 and len(out[0]) == 2
    assert all(isinstance(c, str) and isinstance(s, float) for c, s in out[0])


def test_cached_vit_features_give_blip2_the_loss_and_captions_of_pixels(blip2_base):
    """The ViT is frozen, so the Q-Former (trained by LoRA) can run on cached features: same
    loss (fp16 storage aside) and the same greedy captions as from the pixels; both paths are
    BLIP-2 written out, so its own forward and generate are the reference."""
    from PIL import Image
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    from vicap_utils import captioner
    from vicap_utils.ops.features import encode_images

    proc = Blip2Processor.from_pretrained(blip2_base)
    model = Blip2ForConditionalGeneration.from_pretrained(blip2_base).eval()
    cap = Captioner(model=model, processor=proc, family="blip2", base=str(blip2_base))
    images = [Image.new("RGB", (40, 30), c) for c in ("green", "red", "blue")]
    paths = []
    for i, im in enumerate(images):
        im.save(blip2_base / f"im{i}.png")
        paths.append(blip2_base / f"im{i}.png")
    pixels = captioner.pixel_values(cap, images)
    feats = encode_images(cap, paths, show=False)
    assert feats.dtype == torch.float16 and feats.shape[:2] == (3, 5)  # 4 patches + CLS
    ids, mask, labels = encode_captions(proc.tokenizer, ["A player.", "Two players.", "A ball."],
                                        max_length=12, prefix=image_prefix(cap))
    with torch.no_grad():
        logits = captioner.forward(model, "blip2", pixels, ids, mask)
        reference = model(pixel_values=pixels, input_ids=ids, attention_mask=mask).logits
        assert torch.allclose(logits, reference, atol=1e-5)
        on_pixels = captioner.loss(logits, labels)
        on_cache = captioner.loss(captioner.forward(model, "blip2", feats, ids, mask,
                                                    cached=True), labels)
    assert on_cache.item() == pytest.approx(on_pixels.item(), rel=1e-3)
    dec = captioner.Decoding(num_beams=1, max_new_tokens=6)
    ours = captioner.caption(cap, pixels=pixels, dec=dec)
    assert captioner.caption(cap, features=feats.float(), dec=dec) == ours
    theirs = model.generate(pixel_values=pixels, eos_token_id=proc.tokenizer.eos_token_id,
                            max_new_tokens=6, num_beams=1)
    assert [[(text, None)] for text in captioner.decode(proc.tokenizer, theirs)] == ours


def test_under_fp16_autocast_blip2s_vit_stays_fp32_and_the_rest_is_fp16(blip2_base,
                                                                        monkeypatch):
    """`model.vision_fp32` holds under autocast, in training and in captioning: the ViT's layers
    compute in fp32 (an fp16 ViT is known to give NaN), the Q-Former and OPT in fp16."""
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    from vicap_utils import captioner

    proc = Blip2Processor.from_pretrained(blip2_base)
    model = Blip2ForConditionalGeneration.from_pretrained(blip2_base).eval()
    cap = Captioner(model=model, processor=proc, family="blip2", base=str(blip2_base))
    seen: dict[str, set] = {"vision": set(), "qformer": set(), "opt": set()}
    layers = {"vision": model.vision_model.encoder.layers[0].mlp.fc1,
              "qformer": model.qformer.encoder.layer[0].crossattention.attention.query,
              "opt": model.language_model.model.decoder.layers[0].self_attn.q_proj}
    for part, layer in layers.items():
        layer.register_forward_hook(lambda m, a, out, part=part: seen[part].add(out.dtype))
    pixels = torch.rand(2, 3, 32, 32)
    ids, mask, _ = encode_captions(proc.tokenizer, ["A player.", "Two players."],
                                   max_length=12, prefix=image_prefix(cap))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        captioner.forward(model, "blip2", pixels, ids, mask)
        captioner.image_features(model, pixels)
    assert seen == {"vision": {torch.float32}, "qformer": {torch.float16},
                    "opt": {torch.float16}}
    seen["opt"].clear()
    monkeypatch.setenv("VICAP_EMULATE_T4", "1")  # generate's own fp16 autocast, as on a GPU
    captioner.generate(cap, captioner.Decoding(num_beams=1, max_new_tokens=3), pixels=pixels)
    assert seen["vision"] == {torch.float32} and seen["opt"] == {torch.float16}


def test_captioning_from_pixels_runs_blip2s_vit_once(blip2_base):
    """One `caption` call on pixels encodes the images once (the ViT is BLIP-2's costliest part;
    a ViT-g at 224 px)."""
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    from vicap_utils import captioner

    model = Blip2ForConditionalGeneration.from_pretrained(blip2_base).eval()
    cap = Captioner(model=model, processor=Blip2Processor.from_pretrained(blip2_base),
                    family="blip2", base=str(blip2_base))
    calls = []
    model.vision_model.register_forward_hook(lambda *args: calls.append(1))
    out = captioner.caption(cap, pixels=torch.rand(2, 3, 32, 32),
                            dec=captioner.Decoding(num_beams=2, max_new_tokens=3))
    assert len(out) == 2 and len(calls) == 1
