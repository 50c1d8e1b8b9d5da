"""Publish a finished training run into `results/<name>/`: the evidence a user checks.

    python scripts/publish_run.py /work/runs/cifar10-resnet20-cpu results/cifar10-resnet20-cpu \
        --recipe configs/cifar10/resnet20.yaml configs/trainer/cpu.yaml \
        --train-config configs/experiments/cifar10/resnet20_cpu.yaml \
        --commit 9af44f4 --log /work/runs/cifar10-resnet20-cpu.log
    (--fit-args "--trainer.max_steps 9750": command-line arguments the fit had after its configs)

writes, from the run directory and the shipped commands only:
  config.yaml       the resolved configuration the run saved
  metrics.csv       its whole log (every validation, the lr column)
  <arch>.safetensors  the weights at the end of the schedule (last.ckpt, never best-*.ckpt: the
                    CIFAR recipes validate on the test set, so a best checkpoint is chosen on it),
                    through `resnet-lit export --format safetensors`
  SHA256SUMS        `sha256sum -c SHA256SUMS` checks the weights
  report/           `resnet-lit report` figure and table
  results.json      the measured figures (test error of the published test command, wall time,
                    images/s, machine, versions); tests/test_results.py checks them
  README.md         the model card, written from results.json

It refuses a run that has not reached its `trainer.max_steps` (pass `--allow-unfinished` for a dry
run into a scratch folder). Every figure in the card is measured here or read from the run's files.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # as the benchmark scripts do
from _common import cpu_model  # noqa: E402  (machine facts, written once for every published figure)

# fast.ai's Imagewoof leaderboard at 128 px (github.com/fastai/imagenette), best entry per epoch count
IMAGEWOOF_LEADERBOARD = {5: 76.61, 20: 86.27, 80: 90.48, 200: 90.38}
IMAGEWOOF_DATA = "imagewoof2-160 (../shared/data, all of Imagewoof2, shorter side 160 px)"
CIFAR_DATA = "cifar10-jpeg (../shared/data, JPEG q75 4:2:0 rendition of CIFAR-10)"
PAPER = {"resnet20": 8.75, "resnet32": 7.51, "resnet44": 7.17, "resnet56": 6.97, "resnet110": 6.43, "resnet1202": 7.93}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run(cmd: list[str]) -> str:
    print("$ " + " ".join(cmd), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"publish_run: `{' '.join(cmd)}` failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def read_metrics(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def column(rows: list[dict[str, str]], key: str) -> list[tuple[int, float]]:
    return [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    return sorted({f for f in ("avx512_bf16", "amx_bf16", "avx512f") if re.search(rf"\b{f}\b", text)})


def wall_seconds(logs: list[Path]) -> float | None:
    """Sum over the run's log files (one per start) of the last `[Ns]` stamp LineProgress prints."""
    total, found = 0.0, False
    for log in logs:
        stamps = re.findall(r"\[(\d+)s\]", log.read_text(errors="replace"))
        if stamps:
            total, found = total + float(stamps[-1]), True
    return total if found else None


def evaluate(recipe: list[str], weights: Path, extra: tuple[str, ...] = ()) -> tuple[float, list[str]]:
    """The published test command, run as a user would; returns test/error and the command."""
    cmd = ["resnet-lit", "test"]
    for c in recipe:
        cmd += ["--config", c]
    cmd += ["--model.init_weights", str(weights), *extra]
    with tempfile.TemporaryDirectory() as tmp:
        out = run(cmd + ["--run_dir", tmp])
        rows = [r for r in read_metrics(next(Path(tmp).rglob("metrics.csv"))) if r.get("test/error")]
        if len(rows) != 1:
            sys.exit(f"publish_run: expected one test/error row from the test command, got {len(rows)}:\n{out[-2000:]}")
        # logged as float32 (12.39 reads 12.389999...): 4 decimals give back the exact count's value
        return round(float(rows[0]["test/error"]), 4), cmd


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("out", type=Path, help="results/<name>")
    p.add_argument("--recipe", nargs="+", required=True, help="configs the test command composes (recipe, overlay)")
    p.add_argument("--train-config", nargs="*", default=[], help="further configs the fit composed (after --recipe)")
    p.add_argument("--fit-args", default="", help="arguments the fit had after its configs, as one string")
    p.add_argument("--commit", required=True, help="the code commit the run was started from")
    p.add_argument("--log", type=Path, nargs="*", default=[], help="the run's stdout log(s), one per start (wall time)")
    p.add_argument("--notes", default="", help="free text for the card (load on the machine, interruptions)")
    p.add_argument("--docs", type=Path, default=Path("docs/results.md"), help="the page listing every published run")
    p.add_argument("--allow-unfinished", action="store_true", help="dry run: publish a run short of its max_steps")
    p.add_argument("--reference-root", type=Path, help="ImageNet-style runs: the extracted train/ + val/ folders "
                   "that benchmarks/reference_imagenet.py --evaluate reads (an evaluation without resnet-lit)")
    args = p.parse_args(argv)

    config = yaml.safe_load((args.run_dir / "config.yaml").read_text())
    arch = config["model"]["arch"]
    fit_configs = [a for c in args.recipe + args.train_config for a in ("--config", c)]
    max_steps = int(config["trainer"].get("max_steps") or -1)
    if max_steps <= 0:  # a run bounded by epochs: the steps its fit planned
        from resnet_lit.commands.plan import parse_fit_config, plan

        max_steps = int(plan(parse_fit_config(fit_configs + shlex.split(args.fit_args)))["total_steps"])
    imagewoof = "imagewoof" in str(config["data"]["init_args"].get("root", ""))
    ckpt = args.run_dir / "checkpoints" / "last.ckpt"
    step = int(torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["global_step"])
    if step != max_steps and not args.allow_unfinished:
        sys.exit(f"publish_run: {ckpt} is at step {step}, the run's max_steps is {max_steps}: resume it "
                 "(--ckpt_path last) to the end before publishing, or pass --allow-unfinished for a dry run")

    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(args.run_dir / "config.yaml", args.out / "config.yaml")
    shutil.copy2(args.run_dir / "metrics.csv", args.out / "metrics.csv")
    weights = args.out / f"{arch}.safetensors"
    run(["resnet-lit", "export", str(ckpt), "--format", "safetensors", "--output", str(weights)])
    digest = sha256(weights)
    (args.out / "SHA256SUMS").write_text(f"{digest}  {weights.name}\n")
    run(["resnet-lit", "report", str(args.run_dir), "--out", str(args.out / "report"), "--ylim", "0",
         "100" if imagewoof else "20"])
    test_error, test_cmd = evaluate(args.recipe, weights)
    test_mode = config["data"]["init_args"].get("test_mode", "center")
    # with another test mode (flip averaging), also the plain centre figure create_model(...) gives
    centre = None if test_mode == "center" else evaluate(args.recipe, weights, ("--data.test_mode", "center"))[0]

    independent = None
    if args.reference_root is not None:  # the same weights through torchvision + PIL only
        with tempfile.TemporaryDirectory() as tmp:
            run([sys.executable, "benchmarks/reference_imagenet.py", "--root", str(args.reference_root), "--out", tmp,
                 "--arch", arch, "--evaluate", str(weights), "--workers", "0",
                 "--size", str(config["data"]["init_args"].get("test_size", 224)),
                 "--test-resize", str(config["data"]["init_args"].get("test_resize")
                                      or round(config["data"]["init_args"].get("test_size", 224) * 256 / 224))])
            shutil.copy2(Path(tmp) / "predictions.csv", args.out / "val_predictions.csv")
            independent = json.loads((Path(tmp) / "summary.json").read_text())["val_acc1"]

    rows = read_metrics(args.run_dir / "metrics.csv")
    val = column(rows, "val/error")
    ips = [v for _, v in column(rows, "train/images_per_s")]
    lr = column(rows, "lr") or column(rows, "lr-SGD/backbone") or column(rows, "lr-SGD")
    schedule, model_cfg = config["model"]["schedule"], config["model"]
    # a step schedule's milestones and the steps where the lr column shows them; a cosine one has neither
    step_decay = schedule.get("kind", "step") == "step"
    drops = [s for (s, v), (_, prev) in zip(lr[1:], lr[:-1]) if v < prev * 0.5] if step_decay else []
    wall = wall_seconds(args.log)
    fit_cmd = ["resnet-lit", "fit", *fit_configs]
    fit_cmd += shlex.split(args.fit_args)
    batch = int(config["data"]["init_args"]["batch_size"])
    result = {
        "arch": arch, "dataset": IMAGEWOOF_DATA if imagewoof else CIFAR_DATA,
        "steps": step, "max_steps": max_steps, "images": step * batch, "batch_size": batch,
        "schedule": {k: schedule.get(k) for k in ("kind", "milestones", "warmup_steps", "warmup_mode",
                                                  "warmup_factor") if k != "milestones" or step_decay},
        **({"lr_drops_logged_at": drops} if step_decay else {}), "optimizer": model_cfg["optimizer"],
        "label_smoothing": model_cfg.get("label_smoothing", 0.0), "ema": model_cfg.get("ema"),
        "test_error": test_error, "test_command": " ".join(test_cmd),
        "test_mode": test_mode, "test_error_centre": centre if centre is not None else test_error,
        "last_val_error": val[-1][1] if val else None, "last_val_step": val[-1][0] if val else None,
        "validations": len(val), "paper_error": PAPER.get(arch),
        "fit_command": " ".join(fit_cmd), "seed": config.get("seed_everything"), "commit": args.commit,
        "precision": config["trainer"].get("precision"),
        "weights": weights.name, "sha256": digest, "bytes": weights.stat().st_size,
        "wall_s": wall, "images_per_s_median": round(statistics.median(ips), 1) if ips else None,
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "flags": cpu_flags(), "gpu": None},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "lightning": __import__("lightning").__version__},
        "notes": args.notes,
    }  # fmt: skip
    if imagewoof:
        epochs = int(config["trainer"]["max_epochs"])
        result.update(epochs=epochs, test_acc1=round(100 - test_error, 4), independent_acc1=independent,
                      val_images=int(float(next(r["val/images"] for r in rows if r.get("val/images")))),
                      leaderboard_acc1=IMAGEWOOF_LEADERBOARD.get(epochs), paper_error=None,
                      data=config["data"]["init_args"])
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "README.md").write_text((card_imagewoof if imagewoof else card)(result, args.out))
    update_results_table(args.out.parent, args.docs)
    print(f"published {args.out}: test error {test_error:.2f} % ({arch}, step {step}/{max_steps}), sha256 {digest}")
    return 0


BEGIN, END = "<!-- results table: scripts/publish_run.py writes this -->", "<!-- end of results table -->"


def update_results_table(results: Path, docs: Path) -> None:
    """Rewrite the table between the markers of `docs` from every `results/*/results.json`."""
    lines = [
        BEGIN,
        "| run | net | data | schedule | test error % | paper % | hardware | wall time | weights |",
        "| --- | --- | --- | --- | ---: | ---: | --- | ---: | --- |",
    ]
    for path in sorted(results.glob("*/results.json")):
        r = json.loads(path.read_text())
        name = path.parent.name
        link = f"../{results.name}/{name}"
        hw = r["machine"].get("gpu") or f"{r['machine']['cores']}-core CPU"
        wall = f"{r['wall_s'] / 60:.0f} min" if r.get("wall_s") else "—"
        paper = f"{r['paper_error']:.2f}" if r.get("paper_error") is not None else "—"
        kind = (r.get("schedule") or {}).get("kind", "step")
        mode = r.get("test_mode", "center")
        how = "" if mode == "center" else f" ({mode}; centre {r['test_error_centre']:.2f})"
        length = f"{r['epochs']} epochs" if r.get("epochs") else f"{r['steps']:,} it"
        lines.append(
            f"| [{name}]({link}/) | {r['arch']} | {r['dataset'].split(' ')[0]} | {length}, {kind} lr, "
            f"{r['precision']} | **{r['test_error']:.2f}**{how} | {paper} | {hw} | {wall} "
            f"| [{r['weights']}]({link}/{r['weights']}) |"
        )
    lines.append(END)
    text = docs.read_text() if docs.exists() else f"# Results\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        sys.exit(f"publish_run: {docs} has no results-table markers ({BEGIN} ... {END}); add them where the table goes")
    head, rest = text.split(BEGIN, 1)
    docs.write_text(head + "\n".join(lines) + rest.split(END, 1)[1])
    print(f"updated the table in {docs}")


def schedule_text(r: dict) -> str:
    """The schedule and its ingredients in one sentence, from results.json."""
    steps = f"Schedule: {r['max_steps']:,} iterations of {r.get('batch_size', 128)} images"
    if r.get("images"):
        steps += f" ({r['images'] / 1e6:.2f} M images)"
    sched = r.get("schedule") or {"kind": "step", "milestones": r["milestones"]}
    opt = r.get("optimizer") or {"lr": 0.1}
    batch, ref = r.get("batch_size", 128), opt.get("reference_batch", r.get("batch_size", 128))
    lr = opt["lr"] if ref == batch else f"{opt['lr']} per {ref} images ({opt['lr'] * batch / ref:g} at batch {batch})"
    if sched.get("kind", "step") == "step":
        milestones = " and ".join(f"{m:,}" for m in sched["milestones"])
        drops = ", ".join(f"{s:,}" for s in r["lr_drops_logged_at"]) or "none"
        text = (f"{steps}, lr {lr} divided by 10 at iterations {milestones} (the lr column, logged "
                f"every 50 steps, first shows the drops at steps {drops})")
    else:
        text = f"{steps}, lr {lr} on a {sched['kind']} schedule"
    if sched.get("warmup_steps"):
        text += (f" after {sched['warmup_steps']:,} steps of {sched.get('warmup_mode', 'linear')} warm-up "
                 f"from {sched.get('warmup_factor')} x")
    extras = []
    if opt.get("name"):
        nesterov = " (Nesterov)" if (opt.get("args") or {}).get("nesterov") else ""
        extras.append(f"{opt['name']}{nesterov}, momentum {opt.get('momentum')}, "
                      f"weight decay {opt.get('weight_decay')}")
    if r.get("label_smoothing"):
        extras.append(f"label smoothing {r['label_smoothing']}")
    if r.get("ema"):
        extras.append(f"EMA of the weights (decay {r['ema'].get('decay')}, warm-up power "
                      f"{r['ema'].get('warmup_power')}; evaluated and published: the average)")
    return text + ("; " + ", ".join(extras) if extras else "")


def card(r: dict, out: Path) -> str:
    hours = f"{r['wall_s'] / 60:.0f} minutes" if r["wall_s"] else "not recorded"
    paper = f"{r['paper_error']:.2f} %" if r["paper_error"] is not None else "—"
    figure = next(iter(sorted((out / "report").glob("*.png"))), None)
    flags = ", ".join(r["machine"]["flags"]) or "no AVX-512, no bf16 instructions"
    precision = "bf16 autocast" if "bf16" in str(r["precision"]) else "32-bit"
    test_how = ("" if r.get("test_mode", "center") == "center" else
                f" with {r['test_mode']} averaging (the image and its mirror image; the centre image alone: "
                f"{r['test_error_centre']:.2f} %, as `create_model` below gives it)")
    return f"""# {r['arch']} on CIFAR-10 ({r['dataset'].split(' ')[0]}), trained on a CPU by `resnet-lit fit`

| | ours | paper (He et al. 2015, Table 6) |
| --- | ---: | ---: |
| test error, 10,000 test images | **{r['test_error']:.2f} %** | {paper} |

The data differ: ours is `../shared/data/cifar10-jpeg`, a JPEG rendition (quality 75, chroma at half
resolution) of CIFAR-10's images; the paper used the original pixels. docs/results.md discusses the gap.

- **Test error {r['test_error']:.2f} %**: the weights below at the end of the schedule (step {r['steps']:,} of
  {r['max_steps']:,}), evaluated in 32-bit by the command below{test_how}. The run's own last validation
  ({precision}, step {r['last_val_step']:,}) read {r['last_val_error']:.2f} %.
- {schedule_text(r)};
  {r['validations']} validations on the test set (`metrics.csv`). Precision `{r['precision']}`.
- Wall time {hours} for the whole fit; median training throughput {r['images_per_s_median']} images/s.
- Machine: {r['machine']['cpu']}, {r['machine']['cores']} cores ({flags}), no GPU;
  Python {r['versions']['python']}, torch {r['versions']['torch']}, lightning {r['versions']['lightning']}.
{('- ' + r['notes']) if r['notes'] else ''}

## Reproduce

```bash
git checkout {r['commit']}
{r['fit_command']} --run_dir runs/{out.name}    # seed {r['seed']}
```

## Check

```bash
sha256sum -c {out.as_posix()}/SHA256SUMS     # {r['weights']}: {r['sha256']}
{r['test_command']}
```

prints `test/error={r['test_error']:.4g}` (tests/test_results.py runs exactly this). From Python:

```python
from resnet_lit.models import create_model
model = create_model("{r['arch']}", weights="{out.as_posix()}/{r['weights']}").eval()
# inputs: uint8 CIFAR images / 255 minus the training set's per-pixel mean, as
# resnet_lit.data.CIFARDataModule(root=...).transform_batch(x, train=False) computes them
```

## Files

- `config.yaml`: the resolved configuration of the run; `metrics.csv`: its whole log.
- `{r['weights']}` ({r['bytes']:,} bytes): the final weights with their `arch_spec` and class names in the header.
- `report/`: `resnet-lit report` of the run{f" ({figure.name})" if figure else ""} and its table;
  `results.json`: every figure above.
"""


def card_imagewoof(r: dict, out: Path) -> str:
    """The model card of a run on fast.ai's Imagewoof benchmark (accuracy, the leaderboard beside it)."""
    hours = f"{r['wall_s'] / 60:.0f} minutes" if r["wall_s"] else "not recorded"
    flags = ", ".join(r["machine"]["flags"]) or "no AVX-512, no bf16 instructions"
    data = r["data"]
    lb = r.get("leaderboard_acc1")
    gap = f"{lb - r['test_acc1']:.2f} points below it" if lb is not None else "no leaderboard entry at this length"
    independent = (f"{r['independent_acc1']:.2f} %" if r.get("independent_acc1") is not None else "not run")
    resize = data.get("test_resize") or round(data.get("test_size", 224) * 256 / 224)
    title = f"{r['arch']} from random weights on Imagewoof, {r['epochs']} epochs at {data.get('train_size')} px"
    return f"""# {title}, trained on a CPU by `resnet-lit fit`

| | top-1 accuracy, {r['val_images']:,} validation images |
| --- | ---: |
| this run (`resnet-lit test`, centre {data.get('test_size')} px crop) | **{r['test_acc1']:.2f} %** |
| the same weights through torchvision + PIL only (`benchmarks/reference_imagenet.py --evaluate`) | {independent} |
| fast.ai Imagewoof leaderboard, 128 px, {r['epochs']} epochs, best entry | {lb if lb is not None else '—'} % |

This run is {gap}. The leaderboard's entries are not the paper's ResNet-50: the best ones use an
xresnet50 with a deep stem, Mish activations, self-attention and the Ranger optimiser with a flat-then-
cosine schedule (github.com/fastai/imagenette); this is the paper's ResNet-50 (v1.5 stride placement,
torchvision's layout) with plain SGD. docs/results.md says what the gap is made of.

- **{r['test_acc1']:.2f} % top-1** ({r['test_error']:.2f} % error): the weights below after the last of
  {r['steps']:,} steps ({r['epochs']} epochs of {r['max_steps'] // r['epochs']:,} steps at batch
  {r['batch_size']}), evaluated in 32-bit by the command below: shorter side resized to {resize},
  centre {data.get('test_size')} px crop, ImageNet mean/std, no test-time augmentation (the leaderboard's
  rules). `val_predictions.csv` holds the independent evaluation's class for every image.
- Data: `../shared/data/imagewoof2-160` (all of Imagewoof2, 9,025 training / {r['val_images']:,}
  validation photographs, shorter side 160 px). Training: RandomResizedCrop {data.get('train_size')} px over
  {data.get('crop_scale')} of the area, flip, no PCA lighting.
- {schedule_text(r)}; {r['validations']} validations (`metrics.csv`). Precision `{r['precision']}`.
- Wall time {hours} for the whole fit; median training throughput {r['images_per_s_median']} images/s.
- Machine: {r['machine']['cpu']}, {r['machine']['cores']} cores ({flags}), no GPU;
  Python {r['versions']['python']}, torch {r['versions']['torch']}, lightning {r['versions']['lightning']}.
{('- ' + r['notes']) if r['notes'] else ''}

## Reproduce

```bash
git checkout {r['commit']}
{r['fit_command']} --run_dir runs/{out.name}    # seed {r['seed']}
```

## Check

```bash
sha256sum -c {out.as_posix()}/SHA256SUMS     # {r['weights']}: {r['sha256']}
{r['test_command']}
python benchmarks/reference_imagenet.py --root <imagewoof2-160 extracted: train/ val/> --out /tmp/eval \\
    --evaluate {out.as_posix()}/{r['weights']}
```

## Files

- `config.yaml`: the resolved configuration of the run; `metrics.csv`: its whole log.
- `{r['weights']}` ({r['bytes']:,} bytes): the final weights (torchvision's parameter names).
- `val_predictions.csv`: file, label and predicted class of every validation image (the independent evaluation).
- `report/`: `resnet-lit report` of the run; `results.json`: every figure above.
"""


if __name__ == "__main__":
    raise SystemExit(main())
