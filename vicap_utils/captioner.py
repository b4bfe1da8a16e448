"""The one place that knows BLIP-1 (ViT + BERT decoder over `[DEC] caption [SEP]`) from BLIP-2
(a placeholder per Q-Former query before OPT's text): one function per step, for every caller."""

import contextlib
import functools
import logging
import re
from dataclasses import dataclass
from typing import Any

import torch
import transformers

from vicap_utils import vocab
from vicap_utils.config import Config, EvalConfig, LoraSettings, ModelConfig
from vicap_utils.families import BUILTIN_MODELS, EXTENDS_VOCABULARY
from vicap_utils.ops.env import cache_dir
from vicap_utils.ops.hardware import detect, eight_bit_decision, emulating_t4
from vicap_utils.ops.io import VicapError, error_summary
from vicap_utils.ops.weights import resolve_base
from vicap_utils.text import normalize_caption
from vicap_utils.toy.model import MiniSpec, build_tiny_blip
from vicap_utils.vocab import IGNORE, encode_captions, special_ids  # noqa: F401 (re-exported)

# BLIP-1 decoder self-attention (the paper's placement); cross-attention only when asked.
BLIP_SELF_ATTN = r".*text_decoder\.bert\.encoder\.layer\.\d+\.attention\.self\.(query|key|value)"
BLIP_CROSS_ATTN = BLIP_SELF_ATTN.replace(r"\.attention\.", r"\.crossattention\.")
# BLIP-2: the Q-Former's query/value (self- and cross-attention) and OPT's q_proj/v_proj.
BLIP2_DEFAULT = (r".*(qformer\.encoder\.layer\.\d+\.(attention|crossattention)\.attention\."
                 r"(query|value)|language_model\..*\.(q_proj|v_proj))")
# Model parts, for the trainable-parameter table.
PARTS = ("vision_model", "text_decoder", "qformer", "language_model", "language_projection",
         "query_tokens")
CLASSES = {"blip": ("BlipForConditionalGeneration", "BlipProcessor"),
           "blip2": ("Blip2ForConditionalGeneration", "Blip2Processor")}
MINI_CONFIG = functools.cache(lambda: build_tiny_blip(MiniSpec())[0].config)
# The layers peft's LoRA can wrap.
LORA_LAYERS = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d,
               torch.nn.Conv3d, torch.nn.MultiheadAttention, transformers.pytorch_utils.Conv1D)


@dataclass
class Captioner:
    """A model ready to train or caption, with its processor and provenance."""

    model: Any  # the transformers model, or the peft model once LoRA is added
    processor: Any
    family: str
    base: str  # the folder it was loaded from
    first_new_id: int = 0  # BLIP-1: id of the first added vocabulary entry (0 = none)

    @property
    def tokenizer(self):
        """The processor's tokenizer (extended for Vietnamese once `extend_vocabulary` ran)."""
        return self.processor.tokenizer


def family_of(model_type: str) -> str:
    """The family of a saved model from its config's `model_type`."""
    return "blip2" if "blip-2" in model_type or "blip2" in model_type else "blip"


def base_config(base: str):
    """The base's transformers config, read without its weights (mini: its untrained twin's)."""
    try:
        if base in BUILTIN_MODELS:  # no minute of pre-training to read a config
            cache_dir("mini-base")  # where it will be built: a bad VICAP_CACHE stops us here
            return MINI_CONFIG()
        return transformers.AutoConfig.from_pretrained(resolve_base(base))
    except (OSError, ValueError) as exc:
        raise VicapError(f"model.base={base!r}: cannot read its config "
                         f"({error_summary(exc)})") from None


def text_positions(config) -> int:
    """The text positions a caption can use: the decoder's, less BLIP-2's image queries."""
    return (config.text_config.max_position_embeddings
            - (getattr(config, "num_query_tokens", 0) or 0))


def check_against_base(cfg: Config) -> None:
    """The settings whose range comes from the base (family, text positions, prompt, LoRA layers
    and rank), checked on its config and a meta-device copy before any data work."""
    m = cfg.model
    config = base_config(m.base)
    found = family_of(config.model_type) if "blip" in config.model_type else None
    if found != m.family:
        raise VicapError(f"model.family={m.family!r} does not match model.base={m.base!r} "
                         f"(model_type {config.model_type!r}); valid: {found or 'none'}")
    positions = text_positions(config)
    for key, value, room in (("model.max_length", m.max_length, positions),
                             ("eval.max_new_tokens", cfg.eval.max_new_tokens, positions - 1)):
        if value > room:
            raise VicapError(f"{key}={value} is out of range for {m.base} (must be at most "
                             f"{room}: the base has {positions} text positions)")
    if len(m.prompt.split()) > m.max_length - 3:
        raise VicapError(f"model.prompt has {len(m.prompt.split())} words; model.max_length="
                         f"{m.max_length} leaves room for at most {m.max_length - 3} beside bos, "
                         "a caption token and eos")
    with torch.device("meta"):
        lora_modules(getattr(transformers, CLASSES[found][0])(config), found, cfg.lora)


def load_base(cfg: ModelConfig, load_in_8bit: bool | None = None,
              device_index: int | None = None, log=print) -> Captioner:
    """Load the base model and processor that `cfg.base` names; 8-bit (default: as `cfg` asks
    where this machine allows) pins it to one GPU per process; BLIP-2 on a GPU runs in fp16."""
    source = resolve_base(cfg.base)
    if load_in_8bit is None:
        load_in_8bit, notice = eight_bit_decision(cfg.family, cfg.load_in_8bit, detect())
        if notice:
            log(f"notice: {notice}")
    kwargs: dict[str, Any] = {}
    if load_in_8bit:
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_8bit=True, llm_int8_skip_modules=["vision_model", "qformer", "lm_head"])
        kwargs["device_map"] = {"": device_index or 0} if torch.cuda.is_available() else {"": "cpu"}
        kwargs["dtype"] = torch.float16
        # bitsandbytes logs, at every call, each fp32 input it quantises through fp16 (by design)
        logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
    elif cfg.family == "blip2" and torch.cuda.is_available():
        kwargs["dtype"] = torch.float16
    model_cls, proc_cls = (getattr(transformers, name) for name in CLASSES[cfg.family])
    try:
        processor = proc_cls.from_pretrained(source)
        model = model_cls.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise VicapError(f"cannot load model {cfg.base!r} from {source} ({error_summary(exc)}); "
                         "without internet, attach it as a Kaggle input or set "
                         "model.base=/path/to/saved/model") from None
    if cfg.family == "blip2" and cfg.vision_fp32:
        model.vision_model.float()  # an fp16 ViT is known to give NaN losses
    if load_in_8bit:
        from peft import prepare_model_for_kbit_training  # peft: slow to import (bitsandbytes)

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return Captioner(model=model, processor=processor, family=cfg.family, base=source)


def place(cap: Captioner, device: str | torch.device) -> Captioner:
    """Move the model to `device`; an 8-bit model stays where bitsandbytes put it."""
    if not getattr(inner_model(cap.model), "is_loaded_in_8bit", False):
        cap.model.to(device)
    return cap


def extend_vocabulary(cap: Captioner, captions: list[str] | None = None,
                      entries: list[str] | None = None) -> list[str]:
    """BLIP-1: extend the tokenizer for Vietnamese (entries found in `captions`, or `entries`
    saved before) and grow the embeddings; BLIP-2's byte-level tokenizer needs nothing."""
    if cap.family not in EXTENDS_VOCABULARY:
        return []
    stock = cap.tokenizer
    extended, entries = vocab.extend_tokenizer(stock, captions or [], entries)
    vocab.init_new_rows(cap.model, stock, extended, len(stock))
    cap.processor.tokenizer = extended
    cap.first_new_id = len(stock) if entries else 0
    return entries


def lora_targets(family: str, lora: LoraSettings) -> str | list[str]:
    """The LoRA target modules: the family default, a regex, or a comma-separated list."""
    spec = lora.target_modules.strip()
    if spec and spec != "default":
        return spec if any(c in spec for c in "\\.*()|[]") else [s.strip() for s in spec.split(",")]
    if family == "blip":
        return f"({BLIP_SELF_ATTN}|{BLIP_CROSS_ATTN})" if lora.cross_attention else BLIP_SELF_ATTN
    return BLIP2_DEFAULT


def lora_modules(model, family: str, lora: LoraSettings) -> str | list[str]:
    """The LoRA targets, checked on `model`: a valid regex or names that match modules peft can
    wrap, and `lora.r` within the smallest matched layer (r = 10**9 allocates nothing)."""
    targets = lora_targets(family, lora)
    try:
        match = (re.compile(targets).fullmatch if isinstance(targets, str)
                 else lambda name: name.split(".")[-1] in targets)
    except re.error as exc:
        raise VicapError(f"lora.target_modules={lora.target_modules!r} is not a valid regular "
                         f"expression ({exc})") from None
    modules = dict(model.named_modules())
    matched = [n for n in modules if match(n)]
    wrong = [n for n in matched if not isinstance(modules[n], LORA_LAYERS)]
    if wrong or not matched:
        examples = sorted({n.split(".")[-1] for n, m in modules.items()
                           if isinstance(m, LORA_LAYERS)})[:6]
        raise VicapError(f"lora.target_modules={lora.target_modules!r} " + (
            f"matches {wrong[0]}, which LoRA cannot wrap" if wrong else "matches no module")
            + f"; layers of this {family} base include {', '.join(examples)}")
    smallest = min(min(modules[n].weight.shape[:2]) if hasattr(modules[n], "weight")
                   else modules[n].embed_dim for n in matched)  # MultiheadAttention: no weight
    if lora.r > smallest:
        raise VicapError(f"lora.r={lora.r} is out of range for these layers (must be at most "
                         f"{smallest}, their smallest dimension)")
    return targets


def lora_config(cap: Captioner, lora: LoraSettings):
    """The peft `LoraConfig`: rank, scale, dropout, targets and the new token rows to train
    (`task_type` stays unset: peft's task wrappers break BLIP's and BLIP-2's forward)."""
    from peft import LoraConfig  # peft: slow to import (bitsandbytes)

    targets = lora_modules(cap.model, cap.family, lora)
    token_ids = None
    if lora.train_new_embeddings and cap.first_new_id:
        embedding = cap.model.get_input_embeddings()
        name = next(n for n, m in cap.model.named_modules() if m is embedding)
        token_ids = {name.split(".")[-1]: list(range(cap.first_new_id, len(cap.tokenizer)))}
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=targets, trainable_token_indices=token_ids)


def add_lora(cap: Captioner, config) -> Any:
    """Freeze the base and wrap it with the LoRA adapter; returns the peft model."""
    from peft import get_peft_model  # peft: slow to import (bitsandbytes)

    cap.model.requires_grad_(False)
    cap.model = get_peft_model(cap.model, config)
    for p in cap.model.parameters():
        if p.requires_grad and p.dtype in (torch.float16, torch.bfloat16):
            p.data = p.data.float()  # the optimizer and GradScaler need fp32 master weights
    return cap.model


def trainable_table(model) -> list[dict[str, Any]]:
    """Trainable vs total parameters per model part, plus the total ("all")."""
    rows: dict[str, list[int]] = {}
    for name, param in model.named_parameters():
        parts = name.split(".")
        row = rows.setdefault(next((p for p in parts if p in PARTS), parts[0]), [0, 0])
        row[0] += param.numel() if param.requires_grad else 0
        row[1] += param.numel()
    rows["all"] = [sum(r[0] for r in rows.values()), sum(r[1] for r in rows.values())]
    return [{"part": k, "trainable": t, "total": n, "share_%": round(100 * t / max(n, 1), 3)}
            for k, (t, n) in rows.items()]


def image_prefix(cap: Captioner) -> list[int]:
    """BLIP-2's image placeholder ids (one per query token) that precede the text; BLIP-1: none."""
    if cap.family != "blip2":
        return []
    image_id = cap.tokenizer.convert_tokens_to_ids(cap.processor.image_token.content)
    # an older saved processor gives no count: the config's then (every Blip2Config has one)
    return [image_id] * (cap.processor.num_query_tokens or cap.model.config.num_query_tokens)


def pixel_values(cap: Captioner, images: list) -> torch.Tensor:
    """The processor's pixel tensor for a list of RGB images (resized and normalised)."""
    return cap.processor.image_processor(images, return_tensors="pt")["pixel_values"]


def inner_model(model):
    """The transformers model inside a peft wrapper (its LoRA layers stay injected)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def vision_features(inner, pixels: torch.Tensor) -> torch.Tensor:
    """The ViT's last hidden state. BLIP-2's ViT runs in its weights' dtype, fp32 unless
    `model.vision_fp32=false`: fp16 autocast would run it in fp16 whatever its weights."""
    param = next(inner.vision_model.parameters())
    keep = (torch.autocast(param.device.type, enabled=False) if hasattr(inner, "qformer")
            else contextlib.nullcontext())
    with keep:
        return inner.vision_model(pixel_values=pixels.to(param.device, param.dtype))[0]


@torch.no_grad()
def image_features(model, pixels: torch.Tensor) -> torch.Tensor:
    """Vision features for a batch of pixel values, without gradients (captioning, the cache)."""
    return vision_features(inner_model(model), pixels)


def forward(model, family: str, image: torch.Tensor, input_ids: torch.Tensor,
            attention_mask: torch.Tensor, cached: bool = False) -> torch.Tensor:
    """Next-token logits for a batch; `image` is pixels, or (`cached`) ViT features."""
    inner = inner_model(model)
    feats = image if cached else vision_features(inner, image)
    if family == "blip":  # cached features are stored in fp16 (`features`): the decoder's dtype
        feats = feats.to(next(inner.text_decoder.parameters()).dtype)
        return inner.text_decoder(input_ids=input_ids, attention_mask=attention_mask,
                                  encoder_hidden_states=feats, return_dict=True).logits
    embeds = blip2_inputs_embeds(inner, feats, input_ids)
    return inner.language_model(inputs_embeds=embeds, attention_mask=attention_mask,
                                return_dict=True).logits


def blip2_inputs_embeds(inner, features: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """BLIP-2 after its ViT: projected Q-Former outputs in place of the image placeholders."""
    feats = features.to(inner.query_tokens.device, inner.query_tokens.dtype)
    query = inner.query_tokens.expand(feats.shape[0], -1, -1)
    out = inner.qformer(query_embeds=query, encoder_hidden_states=feats,
                        return_dict=True).last_hidden_state  # no mask: attend to every feature
    projected = inner.language_projection(out)
    embeds = inner.get_input_embeddings()(input_ids.to(projected.device))
    placeholders = (input_ids == inner.config.image_token_id).unsqueeze(-1).to(embeds.device)
    return embeds.masked_scatter(placeholders, projected.to(embeds.dtype))


def loss(logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Next-token cross-entropy (position t predicts label t+1) with label smoothing; -100
    labels are skipped. Logits longer than the labels (BLIP-2's query outputs) are cut."""
    logits = logits[:, -labels.size(1):, :]
    shifted = logits[:, :-1, :].float().reshape(-1, logits.size(-1))
    target = labels[:, 1:].reshape(-1).to(shifted.device)
    return torch.nn.functional.cross_entropy(shifted, target, ignore_index=IGNORE,
                                             label_smoothing=smoothing)


class TrainingForward(torch.nn.Module):
    """The trainable model behind one `forward`, so DDP syncs every step (cached path too)."""

    def __init__(self, model, family: str, cached: bool) -> None:
        super().__init__()
        self.model, self.family, self.cached = model, family, cached

    def forward(self, image: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        return forward(self.model, self.family, image, input_ids, attention_mask, self.cached)


@dataclass
class Decoding:
    """Generation settings; the defaults are the profile's `eval` section (`from_eval`)."""

    num_beams: int = EvalConfig.num_beams
    max_new_tokens: int = EvalConfig.max_new_tokens
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = EvalConfig.repetition_penalty
    num_return_sequences: int = 1

    @classmethod
    def from_eval(cls, ev: EvalConfig, **changes: Any) -> "Decoding":
        """Beam search as configured in an `eval` section, with `changes` applied."""
        return cls(**{"num_beams": ev.num_beams, "max_new_tokens": ev.max_new_tokens,
                      "repetition_penalty": ev.repetition_penalty, **changes})


@torch.no_grad()
def generate(cap: Captioner, dec: Decoding, pixels: torch.Tensor | None = None,
             features: torch.Tensor | None = None):
    """Token ids (several return sequences: a generate output with scores) from pixels or
    cached ViT features; BLIP-1 starts from `[DEC]` as in training. fp16 autocast on a GPU."""
    inner = inner_model(cap.model)
    device = next(inner.parameters()).device
    kwargs: dict[str, Any] = dict(
        max_new_tokens=dec.max_new_tokens, num_beams=max(1, dec.num_beams),
        repetition_penalty=dec.repetition_penalty, num_return_sequences=dec.num_return_sequences)
    if dec.do_sample:
        kwargs.update(do_sample=True, temperature=dec.temperature, top_p=dec.top_p)
    if dec.num_return_sequences > 1:
        kwargs.update(return_dict_in_generate=True, output_scores=True)
    fp16 = device.type == "cuda" or emulating_t4()
    with torch.autocast(device.type, dtype=torch.float16, enabled=fp16):
        feats = image_features(cap.model, pixels) if features is None else features
        if cap.family == "blip":
            feats = feats.to(device, next(inner.text_decoder.parameters()).dtype)
            start = torch.full((feats.shape[0], 1), cap.tokenizer.bos_token_id,
                               dtype=torch.long, device=device)
            return inner.text_decoder.generate(
                input_ids=start, eos_token_id=cap.tokenizer.sep_token_id,
                pad_token_id=cap.tokenizer.pad_token_id, encoder_hidden_states=feats, **kwargs)
        start = image_prefix(cap) + [inner.config.text_config.bos_token_id]
        ids = torch.tensor([start] * len(feats), dtype=torch.long, device=device)
        return inner.language_model.generate(  # BLIP-2's generate() after its ViT
            input_ids=ids, inputs_embeds=blip2_inputs_embeds(inner, feats, ids),
            attention_mask=torch.ones_like(ids), eos_token_id=cap.tokenizer.eos_token_id,
            **kwargs)


def decode(tokenizer, sequences: torch.Tensor) -> list[str]:
    """Token ids → captions: special tokens dropped, spacing normalised, first letter upper."""
    texts = map(normalize_caption, tokenizer.batch_decode(sequences, skip_special_tokens=True))
    return [t[:1].upper() + t[1:] for t in texts]


def caption(cap: Captioner, images: list | None = None, dec: Decoding | None = None,
            pixels: torch.Tensor | None = None, features: torch.Tensor | None = None
            ) -> list[list[tuple[str, float | None]]]:
    """Per image, [(caption, score)]: k = `num_return_sequences` beams with their
    length-normalised log-probabilities, or one caption with score None."""
    dec = dec or Decoding()
    if images is not None:
        pixels = pixel_values(cap, images)
    out = generate(cap, dec, pixels=pixels, features=features)
    k = dec.num_return_sequences
    if k == 1:
        return [[(text, None)] for text in decode(cap.tokenizer, out)]
    texts = decode(cap.tokenizer, out.sequences)
    raw = out.sequences_scores
    scores = raw.tolist() if raw is not None else [None] * len(texts)
    return [list(zip(texts[i:i + k], scores[i:i + k])) for i in range(0, len(texts), k)]
