"""Self-critical sequence training (Rennie et al. 2017; Luo 2020's baseline): sample k captions
per image, reward each with CIDEr-D, raise those beating the mean of the others; one step each."""

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file

from vicap_utils import captioner
from vicap_utils.captioner import Captioner, Decoding
from vicap_utils.config import Config, ScstConfig, config_from_dict, diff_keys
from vicap_utils.metrics import CiderD, python_tokenize
from vicap_utils.ops.adapters import META_FILE, WEIGHTS_FILE, is_adapter
from vicap_utils.ops.checkpoint import RESUME_KEYS
from vicap_utils.ops.io import VicapError, read_json


def training_config(cfg: Config) -> Config:
    """The run's config under SCST: the `scst` section's learning rate (new token rows keep
    their ratio to it), epochs and images per batch."""
    s, t = cfg.scst, cfg.train
    return replace(cfg, train=replace(t, lr=s.lr, embedding_lr=t.embedding_lr * s.lr / t.lr,
                                      epochs=s.epochs, batch_size=s.batch_size))


def adapter_entries(cfg: Config, folder: str | Path) -> list[str]:
    """A cross-entropy adapter's vocabulary entries, once its model and LoRA match `cfg`'s."""
    if not is_adapter(folder):
        raise VicapError(f"--scst-from {folder}: not an adapter folder (no {META_FILE} and "
                         f"{WEIGHTS_FILE}); use a cross-entropy run's best/ or final/")
    meta = read_json(Path(folder) / META_FILE, "adapter metadata")
    same = [k for k in RESUME_KEYS if k.startswith(("model.", "lora."))]  # adapter and run share
    changed = diff_keys(config_from_dict(meta.get("config"), str(folder)), cfg, same)
    if changed:
        raise VicapError(f"--scst-from {folder}: the adapter differs from this config in "
                         f"{', '.join(changed)}; train SCST with the adapter's config.json")
    return meta.get("vocab_entries", [])


def load_adapter(cap: Captioner, folder: str | Path) -> None:
    """Put a saved adapter's LoRA weights and token rows into the live LoRA model."""
    from peft import set_peft_model_state_dict  # peft: slow to import (bitsandbytes)

    set_peft_model_state_dict(cap.model, load_file(str(Path(folder) / WEIGHTS_FILE)))


def image_batch(source: Callable[[int], torch.Tensor], rows: list[int]) -> dict[str, torch.Tensor]:
    """SCST's batch of training images by row, {row, image}: it samples captions per image."""
    return {"row": torch.tensor(rows), "image": torch.stack([source(r) for r in rows])}


class Samples(NamedTuple):
    """Sampled captions: input ids (start + new tokens), their mask, which new tokens count (up
    to the end token, included) and the text."""

    ids: torch.Tensor
    mask: torch.Tensor
    valid: torch.Tensor
    captions: list[str]


@torch.no_grad()
def sample(cap: Captioner, images: torch.Tensor, kind: str, k: int, max_new_tokens: int,
           greedy: bool = False) -> Samples:
    """k sampled captions per image (image-major), or the greedy one, with the model in eval
    mode; `kind` is "features" (cached) or "pixels"."""
    training = cap.model.training
    cap.model.eval()
    dec = Decoding(num_beams=1, max_new_tokens=max_new_tokens, do_sample=not greedy,
                   num_return_sequences=1 if greedy else k)
    out = captioner.generate(cap, dec, **{kind: images})
    cap.model.train(training)
    seqs = getattr(out, "sequences", out)  # a generate output when k > 1
    tok, prefix = cap.tokenizer, captioner.image_prefix(cap)
    end = tok.sep_token_id if cap.family == "blip" else tok.eos_token_id
    head = torch.tensor([*prefix, tok.bos_token_id], device=seqs.device).expand(len(seqs), -1)
    new = seqs[:, head.shape[1]:]  # generate() returns the start too
    if prefix:  # a sampled image placeholder (BLIP-2) would take an image's place: an end
        new = new.masked_fill(new == prefix[0], end)
    is_end = (new == end).long()
    valid = (is_end.cumsum(1) - is_end) == 0
    new = new.masked_fill(~valid, tok.pad_token_id)
    return Samples(torch.cat([head, new], 1), torch.cat([torch.ones_like(head), valid.long()], 1),
                   valid, captioner.decode(tok, new))


def sequence_logprobs(forward: Callable, images: torch.Tensor, samples: Samples) -> torch.Tensor:
    """Length-normalised log-probability of each sample (mean over its tokens), with gradients;
    `forward(image, ids, mask)` gives next-token logits (`captioner.TrainingForward`)."""
    k = len(samples.ids) // len(images)
    logits = forward(images.repeat_interleave(k, 0), samples.ids, samples.mask)
    n = samples.valid.shape[1]
    target = samples.ids[:, -n:]
    logp = -torch.nn.functional.cross_entropy(logits[:, -n - 1:-1].float().transpose(1, 2),
                                              target, reduction="none")
    return (logp * samples.valid).sum(1) / samples.valid.sum(1).clamp(min=1)


def rewards(cider: CiderD, captions: Sequence[str], refs: Sequence[Sequence[str]]) -> torch.Tensor:
    """CIDEr-D of each caption against its image's tokenised references (`refs`, per caption)."""
    return torch.tensor(cider.score([python_tokenize(c) for c in captions], refs)[1],
                        dtype=torch.float32)


def baseline(rewards: torch.Tensor, greedy: torch.Tensor | None = None) -> torch.Tensor:
    """Per sample of an (images, k) reward table: the mean reward of the image's other samples
    (Luo 2020), or its greedy caption's reward (Rennie et al. 2017)."""
    if greedy is not None:
        return greedy[:, None].expand_as(rewards)
    return (rewards.sum(1, keepdim=True) - rewards) / (rewards.shape[1] - 1)


def loss(logprobs: torch.Tensor, rewards: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """-(reward - baseline) * length-normalised log-probability, averaged over samples."""
    advantage = (rewards - base).reshape(-1).to(logprobs.device)
    return -(advantage * logprobs).mean()


class Scst:
    """The SCST loss of a batch of training images for `Trainer`: the references tokenised and
    CIDEr-D's document frequencies counted once, from the training captions."""

    def __init__(self, cap: Captioner, references: Sequence[Sequence[str]], s: ScstConfig,
                 kind: str) -> None:
        if s.samples < 2 and not s.greedy_baseline:
            raise VicapError("scst.samples must be at least 2 without scst.greedy_baseline")
        self.cap, self.s, self.kind = cap, s, kind
        self.refs = [[python_tokenize(r) for r in rs] for rs in references]
        self.cider = CiderD(self.refs)

    def __call__(self, forward: Callable, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sample, reward, baseline, and the loss of one batch of {row, image}."""
        s, images, rows = self.s, batch["image"], batch["row"].tolist()
        drawn = sample(self.cap, images, self.kind, s.samples, s.max_new_tokens)
        refs = [self.refs[r] for r in rows for _ in range(s.samples)]
        got = rewards(self.cider, drawn.captions, refs).view(len(rows), s.samples)
        greedy = None
        if s.greedy_baseline:
            best = sample(self.cap, images, self.kind, 1, s.max_new_tokens, greedy=True)
            greedy = rewards(self.cider, best.captions, [self.refs[r] for r in rows])
        return loss(sequence_logprobs(forward, images, drawn), got, baseline(got, greedy))
