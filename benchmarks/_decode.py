"""The ``decode`` part of benchmarks/data.py: where ImageNet JPEGs are decoded, images/s per core.

Pipelines, each from the file's bytes in memory to uint8 views (normalisation and colour noise are
batch work on the device in every path, so no pipeline pays for them):
  pil          today's worker path (``decode: pil``): ``ModernTrainTransform`` (train) or
               ``CenterCrop`` (eval) per image; JPEG draft decoding where the output needs less
               than half the source resolution, libjpeg-turbo + antialiased tensor resize otherwise
  pil_nodraft  the same boxes, always a full decode (``decode_rgb`` + ``crop_tensor``): what the
               draft saves
  decode_cpu   ``decode: cpu``: ``torchvision.io.decode_jpeg(list of bytes)`` on a batch, then each
               image's ``views`` on the CPU (jpeg_batch.decode_batch), one thread
  decode_gpu   ``decode: gpu`` (only with CUDA): the same with ``device="cuda"`` (nvJPEG), synchronised;
               images/s of the whole GPU, not per core
Image sets: imagewoof-mini's photographs as they are (shorter side 320) and the same photographs
re-encoded at shorter side 1024 (bicubic, JPEG quality 90; ImageNet's larger photographs are this
size), where the draft applies. Pipelines alternate chunk by chunk (a shuffled order per chunk), so
bursts of load from other processes hit all of them alike; ratios are medians over the repeats.
With the same seed per image, pil and pil_nodraft crop the same boxes: their per-image mean absolute
difference and channel statistics say what the draft changes in the pixels.
"""

from __future__ import annotations

import io
import random
import time
from typing import Any

import torch


def large_copies(datas: list[bytes], side: int = 1024, quality: int = 90) -> list[bytes]:
    from PIL import Image

    out = []
    for d in datas:
        img = Image.open(io.BytesIO(d)).convert("RGB")
        f = side / min(img.size)
        buf = io.BytesIO()
        img.resize((round(img.size[0] * f), round(img.size[1] * f)), Image.BICUBIC).save(buf, "JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def pipelines(mode: str, cuda: bool) -> dict[str, Any]:
    """name -> fn(list of (bytes, seed)) -> list of uint8 views."""
    from resnet_lit.data.decode import decode_rgb, open_image
    from resnet_lit.data.jpeg_batch import EncodedJpeg, collate_encoded, decode_batch
    from resnet_lit.data.transforms import CenterCrop, ModernTrainTransform, as_bytes, crop_tensor

    view = ModernTrainTransform(224) if mode == "train" else CenterCrop(256, 224)
    box = view._box if mode == "train" else (lambda w, h: _center(w, h))

    def _center(w: int, h: int):
        side = 224 * min(w, h) / 256
        return (w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2

    def pil(items):
        out = []
        for d, seed in items:
            random.seed(seed)
            out.append(view(d, "bench.jpg"))
        return out

    def pil_nodraft(items):
        out = []
        for d, seed in items:
            random.seed(seed)
            d, name = as_bytes(d, "bench.jpg")
            b = box(*open_image(d, name, load=False).size)  # the same draws as pil: box, then the flip
            x = crop_tensor(decode_rgb(d, name), b, (224, 224))
            out.append(x.flip(-1) if mode == "train" and random.random() < 0.5 else x)
        return out

    enc = EncodedJpeg(view)

    def batched(device: str):
        def run(items):
            batch, target, _ = collate_encoded([(enc(d, "bench.jpg"), 0, 0) for d, _ in items])
            random.seed(items[0][1])
            x = decode_batch(batch.to(device), target, decode="cpu" if device == "cpu" else "gpu",
                             on_bad_image="error", evaluating=mode != "train")[0]
            if device != "cpu":
                torch.cuda.synchronize()
            return list(x)
        return run

    pipes = {"pil": pil, "pil_nodraft": pil_nodraft, "decode_cpu": batched("cpu")}
    if cuda:
        pipes["decode_gpu"] = batched("cuda")
    return pipes


def _stats(views: list[torch.Tensor]) -> torch.Tensor:
    x = torch.stack(views).float().div_(255).flatten(2)
    return torch.cat([x.mean(2), x.std(2)], 1)  # [N, 6]


def run(datas: dict[str, list[bytes]], repeats: int, chunk: int, rep, median) -> dict[str, Any]:
    """Images/s of each pipeline on each image set and mode; ratios against ``pil``."""
    cuda = torch.cuda.is_available()
    summary: dict[str, Any] = {}
    for set_name, files in datas.items():
        for mode in ("train", "eval"):
            pipes = pipelines(mode, cuda)
            items = [(d, 1000 + i) for i, d in enumerate(files)]
            for fn in pipes.values():  # warm-up: first calls, CUDA context, nvJPEG handles
                fn(items[:4])
            rows = []
            for r in range(repeats):
                spent = dict.fromkeys(pipes, 0.0)
                order = list(pipes)
                for c in range(0, len(items), chunk):
                    random.Random(c + 1000 * r).shuffle(order)
                    for name in order:
                        t0 = time.perf_counter()
                        pipes[name](items[c:c + chunk])
                        spent[name] += time.perf_counter() - t0
                row = {"set": set_name, "mode": mode, "repeat": r}
                row.update({f"{k}_images_per_s": len(items) / v for k, v in spent.items()})
                for k in pipes:
                    if k != "pil":
                        row[f"{k}_vs_pil"] = row[f"{k}_images_per_s"] / row["pil_images_per_s"]
                rows.append(row)
                rep.append("decode_runs", row)
                print(f"decode {set_name} {mode} repeat {r}: "
                      + ", ".join(f"{k} {len(items) / v:,.0f} img/s" for k, v in spent.items()), flush=True)
            s = {k: median(row[k] for row in rows) for k in rows[0] if k.endswith(("_per_s", "_vs_pil"))}
            a, b = pipes["pil"](items), pipes["pil_nodraft"](items)  # same seeds: same boxes
            diff = torch.stack([(u.float() - v.float()).abs().mean() for u, v in zip(a, b)])
            sa, sb = _stats(a), _stats(b)
            s["draft_mean_abs_diff"] = float(diff.mean())  # levels of 255, per image, averaged
            s["draft_max_abs_diff"] = float(diff.max())
            s["draft_channel_stat_diff"] = [round(float(v), 5) for v in (sa - sb).mean(0)]  # means r,g,b; stds r,g,b
            s["draft_channel_stat_se"] = [round(float(v), 5) for v in (sa - sb).std(0) / len(a) ** 0.5]
            s["images"] = len(items)
            summary[f"{set_name}_{mode}"] = s
    summary["per"] = "one process, one thread (one DataLoader worker); decode_gpu: the whole GPU"
    summary["decode_gpu"] = "measured" if cuda else "not measured (no CUDA here)"
    rep["decode"] = summary
    return summary
