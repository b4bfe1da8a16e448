"""`python benchmarks/results/gpu_blip2_recipe.py ROOT` on a GPU: the flickr8k-blip2 recipe
(8-bit base through bitsandbytes, fp16 autocast + GradScaler, the ViT in fp32) on a tiny BLIP-2
through vicap's own train(), killed after a checkpoint and resumed, then its adapter captioning
on a fresh 8-bit base. Prints one JSON line."""
import json
import sys
import time
from pathlib import Path

import bitsandbytes as bnb
import torch
from PIL import Image
from safetensors.torch import load_file

from vicap_utils import captioner
from vicap_utils.config import load_config
from vicap_utils.ops.adapters import load_model
from vicap_utils.toy.data import generate
from vicap_utils.train import Trainer, train

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "kaggle"))
from tiny_blip2 import build_tiny_blip2  # noqa: E402  (kaggle/, shared with the tests)


def main():
    root = Path(sys.argv[1])
    report = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    generate(root / "data", n_images=12, seed=3, lang="en")
    base = build_tiny_blip2(root / "tiny-blip2")
    cfg = load_config("flickr8k-blip2", overrides=[
        f"model.base={base}", f"data.train_annotations={root / 'data' / 'captions.json'}",
        "data.source=coco", "train.epochs=1", "train.batch_size=2", "train.grad_accum=1",
        "eval.num_beams=1", "eval.max_new_tokens=4", "eval.batch_size=4", "train.max_steps=6",
        "train.save_every_steps=2", "train.mixed_precision=fp16"])
    seen, real_loss = [], captioner.loss


    def recording(logits, labels, smoothing=0.0):
        seen.append((str(logits.dtype), str(logits.device)))
        return real_loss(logits, labels, smoothing)


    captioner.loss = recording
    t0 = time.perf_counter()
    straight = train(cfg, root / "straight")
    keys = ("global_step", "skipped_steps", "best_val_CIDEr", "epochs_run")
    report["straight"] = {k: straight.get(k) for k in keys}
    report["straight_seconds"] = round(time.perf_counter() - t0, 1)
    report["logits_seen"] = sorted(set(map(tuple, seen)))
    save_last = Trainer.save_last


    def killed_after_step_4(self):
        save_last(self)
        if self.state.global_step == 4:
            raise KeyboardInterrupt


    Trainer.save_last = killed_after_step_4
    try:
        train(cfg, root / "broken")
        report["killed"] = False
    except KeyboardInterrupt:
        report["killed"] = True
    Trainer.save_last = save_last
    resumed = train(cfg, root / "broken", resume=True)
    report["resumed"] = {k: resumed.get(k) for k in ("global_step", "skipped_steps")}
    a = load_file(str(root / "straight" / "final" / "adapter_model.safetensors"))
    b = load_file(str(root / "broken" / "final" / "adapter_model.safetensors"))
    report["adapter_tensors"] = len(a)
    report["resume_equal"] = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    report["resume_max_abs_diff"] = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    report["adapter_dtypes"] = sorted({str(t.dtype) for t in a.values()})
    report["adapter_finite"] = all(torch.isfinite(t).all().item() for t in a.values())
    cap = load_model(str(root / "straight" / "final"))
    inner = captioner.inner_model(cap.model)
    eight = [m for m in inner.modules() if isinstance(m, bnb.nn.Linear8bitLt)]
    report["linear8bit"] = len(eight)
    report["int8_weights"] = all(m.weight.dtype == torch.int8 for m in eight)
    report["weights_on"] = sorted({str(m.weight.device) for m in eight})
    report["vision_dtypes"] = sorted({str(p.dtype) for p in inner.vision_model.parameters()})
    paths = sorted((root / "data" / "images").iterdir())[:2]
    images = [Image.open(p).convert("RGB") for p in paths]
    out = captioner.caption(cap, images=images,
                            dec=captioner.Decoding(num_beams=2, max_new_tokens=6))
    report["captions"] = [alts[0][0] for alts in out]
    print("BLIP2_REPORT " + json.dumps(report, ensure_ascii=False))


if __name__ == "__main__":
    main()
