"""The tiny random BLIP-2 (OPT decoder, byte-level BPE) of tests, benchmarks and the rehearsal:
the real family's code paths in seconds on a CPU. Kept out of the package: no user needs it."""
from __future__ import annotations

import random
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from vicap_utils.toy.data import captions_for, random_scene
from vicap_utils.toy.model import PIL_PROCESSOR


def byte_level_tokenizer(corpus: list[str], vocab_size: int = 400):
    """A byte-level BPE trained on `corpus` with OPT's special tokens and BLIP-2's `<image>`."""
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = transformers.GPT2TokenizerFast(tokenizer_object=raw, bos_token="</s>",
                                         eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    tok.add_tokens(["<image>"], special_tokens=True)
    return tok


def build_tiny_blip2(folder: Path, width: int = 32, image_size: int = 32) -> Path:
    """Save a random one-layer BLIP-2 (OPT decoder) with a byte-level BPE into `folder`."""
    rng = random.Random(0)
    tok = byte_level_tokenizer([c for _ in range(200)
                                for c in captions_for(random_scene(rng), "en", rng)])
    part = dict(hidden_size=width, num_attention_heads=2, num_hidden_layers=1)
    config = transformers.Blip2Config(
        vision_config=dict(**part, intermediate_size=2 * width, image_size=image_size,
                           patch_size=16, initializer_range=0.02),  # 1e-10 (default): blind ViT
        qformer_config=dict(**part, intermediate_size=2 * width, encoder_hidden_size=width,
                            vocab_size=64),
        text_config=dict(**part, model_type="opt", vocab_size=len(tok), ffn_dim=2 * width,
                         word_embed_proj_dim=width, max_position_embeddings=128,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id),
        num_query_tokens=4, image_token_index=tok.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    model = transformers.Blip2ForConditionalGeneration(config)
    # random query tokens, as trained ones are: all-zero ones (the init) give the Q-Former's
    # first LayerNorm a zero variance, whose gradient overflows fp16
    torch.nn.init.normal_(model.query_tokens, std=config.initializer_range)
    size = {"height": image_size, "width": image_size}
    processor = transformers.Blip2Processor(PIL_PROCESSOR(size=size), tok,
                                            num_query_tokens=4)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return Path(folder)
