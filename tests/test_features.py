"""Fast training paths: the fp16 vision-feature cache (RAM or memory-mapped, keyed, reused),
DataLoader workers, the per-epoch validation sample and batched prediction."""
from __future__ import annotations

import json
import os
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image

from vicap_utils import captioner
from vicap_utils.builders import Examples, build_loader, loader_workers, val_sample
from vicap_utils.captioner import Captioner, encode_captions
from vicap_utils.config import load_config
from vicap_utils.dataset import CaptionPairs, image_pixels
from vicap_utils.ops import features
from vicap_utils.ops.folders import claim, owned_entries


@pytest.fixture(scope="module")
def tiny_blip():
    """An untrained tiny BLIP-1 (ViT frozen, as training has it)."""
    from vicap_utils.toy.model import MiniSpec, build_tiny_blip

    torch.manual_seed(0)
    model, processor = build_tiny_blip(MiniSpec(layers=1))
    model.vision_model.requires_grad_(False)
    return Captioner(model=model.eval(), processor=processor, family="blip", base="tiny")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(7):
        path = folder / f"im{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_loss_on_cached_fp16_features_matches_the_loss_on_pixels(tiny_blip, images):
    cap = tiny_blip
    feats = features.encode_images(cap, images[:4], show=False)
    assert feats.dtype == torch.float16 and feats.shape[0] == 4
    pixels = torch.stack([image_pixels(images, cap.processor.image_processor, i) for i in range(4)])
    ids, mask, labels = encode_captions(cap.tokenizer, ["a dog runs", "two players", "a ball",
                                                        "a goal"], max_length=12)
    with torch.no_grad():
        on_pixels = captioner.loss(captioner.forward(cap.model, "blip", pixels, ids, mask),
                                   labels)
        on_cache = captioner.loss(captioner.forward(cap.model, "blip", feats, ids, mask,
                                                    cached=True), labels)
    assert on_cache.item() == pytest.approx(on_pixels.item(), rel=1e-3)


def test_features_too_big_for_ram_are_memory_mapped_reused_and_rebuilt(tiny_blip, images,
                                                                       tmp_path):
    cap, lines = tiny_blip, []
    in_ram = features.encode_images(cap, images, show=False)
    mapped = features.encode_images(cap, images, tmp_path, "train", show=False, ram_bytes=0,
                                    log=lines.append)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and files[0].endswith(".f16") and "memory-mapped" in lines[-1]
    assert torch.equal(mapped, in_ram)
    again = features.encode_images(cap, images, tmp_path, "train", show=False, ram_bytes=0,
                                   log=lines.append)
    assert "reusing" in lines[-1] and torch.equal(again, in_ram)
    Image.new("RGB", (56, 40), "red").save(images[0])  # an image changed: new key, rebuilt
    rebuilt = features.encode_images(cap, images, tmp_path, "train", show=False, ram_bytes=0,
                                     log=lines.append)
    assert "memory-mapped" in lines[-1] and not torch.equal(rebuilt[0], in_ram[0])
    assert torch.equal(rebuilt[1:], in_ram[1:]) and len(list(tmp_path.iterdir())) == 2


def test_the_cache_key_follows_the_weights_and_the_processor(tiny_blip, images):
    cap = tiny_blip
    key = features.cache_key(cap, images)
    assert features.cache_key(cap, images) == key
    assert features.cache_key(cap, images[:-1]) != key
    vision = cap.model.vision_model
    param = next(vision.parameters())
    with torch.no_grad():
        param.add_(1.0)
        try:
            assert features.cache_key(cap, images) != key
        finally:
            param.sub_(1.0)
    processor = cap.processor.image_processor
    old = processor.image_mean
    processor.image_mean = [0.5, 0.5, 0.5]
    try:
        assert features.cache_key(cap, images) != key
    finally:
        processor.image_mean = old


def test_two_workers_give_the_batches_of_the_main_process(tiny_blip, images):
    cap = tiny_blip
    ids, mask, labels = encode_captions(cap.tokenizer, [f"caption {i}" for i in range(14)], 10)
    pairs = CaptionPairs([i % 7 for i in range(14)], ids, mask, labels,
                         partial(image_pixels, images, cap.processor.image_processor))
    cfg = load_config("mini", overrides=["train.batch_size=4"])
    runs = []
    for workers in (0, 2):
        loader, sampler = build_loader(cfg, pairs, workers)
        sampler.set_epoch(1)
        runs.append(list(loader))
    assert len(runs[0]) == len(runs[1]) == 4
    for a, b in zip(*runs, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_workers_are_sized_from_the_cpus_only_when_images_are_decoded():
    auto = load_config("mini")
    assert auto.train.num_workers == -1
    assert loader_workers(auto, cached=True) == 0
    assert loader_workers(auto, cached=False) == min(4, os.cpu_count() or 1)
    assert loader_workers(load_config("mini", overrides=["train.num_workers=3"]), True) == 3


def test_the_validation_sample_is_fixed_and_caps_only_large_sets():
    assert val_sample(100, 0, 1) == [] and val_sample(100, 100, 1) == []
    sample = val_sample(1000, 250, 7)
    assert len(sample) == 250 == len(set(sample)) and sample == sorted(sample)
    assert sample == val_sample(1000, 250, 7) and sample != val_sample(1000, 250, 8)
    ex = Examples(train=None, val=None, val_ids=list("abcdefgh"),
                  val_source=lambda r: torch.full((2,), float(r)), cached=True,
                  val_sample=[1, 4, 6])
    assert [ids for ids, _ in ex.val_images(2, sample=True)] == [["b", "e"], ["g"]]
    assert sum(len(ids) for ids, _ in ex.val_images(3)) == 8


def test_prediction_sends_whole_batches_to_generate(tiny_blip, images, monkeypatch):
    from vicap_utils import predict

    sizes = []
    real = captioner.generate

    def counting(cap, dec, pixels=None, features=None):
        sizes.append(len(pixels))
        return real(cap, dec, pixels=pixels, features=features)

    monkeypatch.setattr(captioner, "generate", counting)
    dec = captioner.Decoding(num_beams=2, max_new_tokens=5)
    out = predict.predict_images(tiny_blip, images, dec, batch_size=3)
    assert sizes == [3, 3, 1] and len(out) == 7


@pytest.mark.slow
def test_epochs_validate_on_the_sample_and_the_final_model_on_the_whole_set(tmp_path,
                                                                            monkeypatch):
    from vicap_utils.train import Trainer, train

    cfg = load_config("mini", overrides=[
        "data.synthetic_images=48", "train.epochs=2", "train.batch_size=8", "train.patience=0",
        "train.val_sample=2", "eval.num_beams=1", "eval.max_new_tokens=6"])
    decoded, real = [], Trainer.validate

    def counting(self, sample=True):
        decoded.append(sum(len(ids) for ids, _ in self.examples.val_images(8, sample)))
        return real(self, sample)

    monkeypatch.setattr(Trainer, "validate", counting)
    summary = train(cfg, tmp_path / "run", log=lambda *a: None)
    n_val = len(json.loads((tmp_path / "run" / "data" / "val.json").read_text())["images"])
    assert n_val > 2 and decoded == [2, 2, n_val]
    assert summary["full_val"]["epoch"] == 2 and summary["full_val"]["val_CIDEr"] >= 0


def test_a_full_disk_while_mapping_features_is_one_line_and_leaves_no_partial(
        tiny_blip, images, tmp_path, monkeypatch):
    import errno

    from vicap_utils.ops.io import VicapError

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(VicapError, match="disk full"):
        features.encode_images(tiny_blip, images, tmp_path, "train", show=False, ram_bytes=0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_vit_runs_under_fp16_autocast(tiny_blip, images):
    cap, seen = tiny_blip, []
    on_cpu = features.encode_images(cap, images, show=False)
    fc = cap.model.vision_model.encoder.layers[0].mlp.fc1
    hook = fc.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    cap.model.cuda()
    try:
        on_gpu = features.encode_images(cap, images, show=False)
    finally:
        hook.remove()
        cap.model.cpu()
    assert seen and set(seen) == {torch.float16}
    assert torch.allclose(on_gpu.float(), on_cpu.float(), atol=2e-2, rtol=2e-2)


def test_a_runs_marker_lists_cache_only_once_features_are_written_there(tiny_blip, images,
                                                                       tmp_path):
    claim(tmp_path, "run")
    features.encode_images(tiny_blip, images, tmp_path / "cache", "train", show=False)
    assert "cache" not in owned_entries(tmp_path)  # kept in RAM: nothing written
    features.encode_images(tiny_blip, images, tmp_path / "cache", "train", show=False,
                           ram_bytes=0)
    assert "cache" in owned_entries(tmp_path)
