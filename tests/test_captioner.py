"""The captioner's steps on BLIP-1: label masking, the loss, LoRA placement, generation start."""
from __future__ import annotations

import math
import re

import pytest
import torch

from vicap_utils import captioner
from vicap_utils.captioner import IGNORE, Captioner, encode_captions
from vicap_utils.config import LoraSettings
from vicap_utils.vocab import stock_blip_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return stock_blip_tokenizer()


@pytest.fixture(scope="module")
def tiny_blip():
    """An untrained tiny BLIP-1 with the real BERT tokenizer over a subset vocabulary."""
    from vicap_utils.toy.model import MiniSpec, build_tiny_blip

    model, processor = build_tiny_blip(MiniSpec(layers=1))
    return Captioner(model=model, processor=processor, family="blip", base="tiny")


def test_blip1_labels_mask_bos_prompt_and_padding(tokenizer):
    ids, mask, labels = encode_captions(tokenizer, ["a dog runs.", "two players"], max_length=16,
                                        prompt="a picture of")
    dec, sep, pad = (tokenizer.convert_tokens_to_ids(t) for t in ("[DEC]", "[SEP]", "[PAD]"))
    prompt = tokenizer("a picture of", add_special_tokens=False)["input_ids"]
    first = tokenizer("a dog runs.", add_special_tokens=False)["input_ids"]
    # input: [DEC] prompt caption [SEP] — what generate() starts from, then the text
    assert ids[0].tolist()[: 1 + len(prompt) + len(first) + 1] == [dec, *prompt, *first, sep]
    # labels: -100 on [DEC] and the prompt, the caption and [SEP] kept, padding -100
    n_masked = 1 + len(prompt)
    assert (labels[0, :n_masked] == IGNORE).all()
    assert labels[0, n_masked: n_masked + len(first) + 1].tolist() == [*first, sep]
    assert (labels[mask == 0] == IGNORE).all() and (ids[mask == 0] == pad).all()
    assert mask[1].sum() < mask[0].sum()


def test_long_captions_are_cut_before_their_eos(tokenizer):
    ids, mask, labels = encode_captions(tokenizer, ["one two three four five six seven"],
                                        max_length=5)
    sep = tokenizer.sep_token_id
    assert ids.shape[1] == 5 and ids[0, -1].item() == sep and labels[0, -1].item() == sep


def test_loss_is_next_token_cross_entropy_on_unmasked_labels():
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 6)
    labels = torch.tensor([[IGNORE, 2, IGNORE, 5]])
    # position t predicts label t+1: (0 → 2) and (2 → 5); position 1's target is masked
    logp = logits.log_softmax(-1)
    expected = -(logp[0, 0, 2] + logp[0, 2, 5]) / 2
    assert captioner.loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    smooth = captioner.loss(logits, labels, smoothing=0.1).item()
    uniform = -(logp[0, 0].mean() + logp[0, 2].mean()) / 2
    assert smooth == pytest.approx(0.9 * expected.item() + 0.1 * uniform.item(), rel=1e-5)


def test_loss_cuts_logits_longer_than_the_labels():
    """BLIP-2's logits cover the image queries too; only the last label-length positions count."""
    logits = torch.randn(2, 7, 5)
    labels = torch.tensor([[IGNORE, 1, 2], [IGNORE, 3, IGNORE]])
    assert captioner.loss(logits, labels).item() == pytest.approx(
        captioner.loss(logits[:, -3:], labels).item())
    assert math.isfinite(captioner.loss(logits, labels).item())


def test_lora_goes_on_decoder_self_attention_unless_cross_is_asked(tiny_blip):
    names = [n for n, _ in tiny_blip.model.named_modules()]
    self_only = [n for n in names
                 if re.fullmatch(captioner.lora_targets("blip", LoraSettings()), n)]
    both = [n for n in names if re.fullmatch(
        captioner.lora_targets("blip", LoraSettings(cross_attention=True)), n)]
    assert self_only and all(".attention.self." in n and "text_decoder" in n for n in self_only)
    assert {n for n in both if "crossattention" in n} and set(self_only) < set(both)
    assert not any("vision_model" in n for n in both)


def test_lora_config_trains_the_new_token_rows(tiny_blip):
    stock_size = len(tiny_blip.tokenizer)
    entries = captioner.extend_vocabulary(tiny_blip, ["một người đang chơi bóng đá"])
    assert "người" in entries and tiny_blip.first_new_id == stock_size
    config = captioner.lora_config(tiny_blip, LoraSettings(r=4))
    (rows,) = config.trainable_token_indices.values()
    assert rows == list(range(tiny_blip.first_new_id, len(tiny_blip.tokenizer)))
    model = captioner.add_lora(tiny_blip, config)
    table = {r["part"]: r for r in captioner.trainable_table(model)}
    assert table["vision_model"]["trainable"] == 0
    assert 0 < table["all"]["trainable"] < table["all"]["total"] / 5


def test_generation_starts_from_dec_as_training_does(tiny_blip):
    from PIL import Image

    out = captioner.generate(tiny_blip, captioner.Decoding(num_beams=1, max_new_tokens=3),
                             pixels=captioner.pixel_values(tiny_blip, [Image.new("RGB", (64, 64))]))
    assert out[0, 0].item() == tiny_blip.tokenizer.bos_token_id == \
        tiny_blip.tokenizer.convert_tokens_to_ids("[DEC]")
    (alts,) = captioner.caption(tiny_blip, images=[Image.new("RGB", (64, 64))],
                                dec=captioner.Decoding(num_beams=2, max_new_tokens=3,
                                                       num_return_sequences=2))
    assert len(alts) == 2 and all(isinstance(score, float) for _, score in alts)


def test_decoding_from_eval_applies_changes_to_configured_fields():
    from vicap_utils.config import EvalConfig

    ev = EvalConfig()
    greedy = captioner.Decoding.from_eval(ev, num_beams=1, max_new_tokens=7)
    assert (greedy.num_beams, greedy.max_new_tokens) == (1, 7)
    assert greedy.repetition_penalty == ev.repetition_penalty
    assert captioner.Decoding.from_eval(ev).num_beams == ev.num_beams
