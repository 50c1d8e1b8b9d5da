"""The help a user reads first, on one screen each: ``resnet-lit --help`` (the commands) and
``resnet-lit fit|validate|test|predict --help`` (what the command does, the options set most often by
group, and how to see the rest). ``--help full`` gives LightningCLI's full list (about 950 lines).
Plain text, no torch or Lightning: ``runs.entry`` prints it without importing them.
"""

from __future__ import annotations

from resnet_lit._version import __version__

OVERVIEW = f"""\
resnet-lit {__version__}: the residual networks of He et al. 2015, trained with PyTorch Lightning.

usage: resnet-lit COMMAND [--config FILE ...] [--key value ...]

commands (the Trainer's; `resnet-lit COMMAND --help` shows each on one screen):
  fit         train (or resume, with --ckpt_path auto | last | FILE)
  validate    evaluate a checkpoint on the validation split
  test        evaluate a checkpoint on the test split
  predict     top-5 classes of every image of a folder, as CSV
tools (`resnet-lit TOOL --help`):
  plan          fit's arguments in, the run at its scale out: global batch, lr, steps, epochs
  export        a checkpoint to safetensors, torchvision, ONNX, TorchScript or torch.export
  report        Figure 6-style plots and a table of errors from run directories
  imagenet-val  sort ILSVRC-2012's flat validation folder into class folders
  shards        an ImageFolder tree (or its .tar.gz) into LitData shards for --data.shards

options set most often:
  --config FILE          a recipe (configs/cifar10/resnet56.yaml), then overlays (configs/trainer/)
  --run_dir DIR          the run's directory: config.yaml, metrics.csv, checkpoints/
  --data.root DIR        the data (CIFAR: train.tar.gz + test.tar.gz, or cifar-10-batches-py/)
  --trainer.max_steps N  length of the run (or --trainer.max_epochs N)
  --ckpt_path auto       resume from the run directory's newest checkpoint, if any

examples:
  resnet-lit fit --config configs/cifar10/resnet56.yaml
  resnet-lit fit --config configs/cifar10/resnet20.yaml --config configs/trainer/cpu.yaml
  resnet-lit fit --config configs/r50.yaml --config configs/trainer/ddp.yaml --data.root DIR
  resnet-lit test --config configs/cifar10/resnet56.yaml --ckpt_path last
  resnet-lit report runs/cifar10/plain20 runs/cifar10/resnet20 --out reports

  --version prints the version. README.md and docs/ in the repository are the guide.
"""

# --ckpt_path in LightningCLI's full list (its own text is Trainer.fit's: "best", "hpc", "registry")
CKPT_PATH_HELP = (
    "Resume a run (fit) or the weights to evaluate (validate, test, predict). "
    "auto (fit): the run directory's newest checkpoint (checkpoints/last.ckpt or SLURM's hpc_ckpt_N.ckpt), "
    "or a fresh start when there is none, so one command serves the first start and every restart; "
    "last: <run_dir>/checkpoints/last.ckpt (an error when there is none); "
    "FILE: that checkpoint (a run's checkpoints/last.ckpt or best-*.ckpt). "
    "Bare weights go in --model.init_weights instead."
)

_MORE = """\
every option (after `resnet-lit {command}`):
  --help full                         LightningCLI's full list (nearly 1,000 lines)
  --data.help CIFARDataModule         one DataModule's options (or ImageNetDataModule)
  --trainer.logger.help WandbLogger   one class's options (also --trainer.callbacks.help,
                                      --trainer.strategy.help, --trainer.plugins.help)
  --config FILE --print_config        the resolved configuration
README.md and docs/ in the repository are the guide.
"""

_FIT = """\
resnet-lit fit: train a network with a recipe, or resume a run (--ckpt_path).

usage: resnet-lit fit --config RECIPE [--config OVERLAY ...] [--KEY VALUE ...]
Every key of a config is a flag; later configs and flags override earlier ones.

config
  --config FILE                   a recipe (configs/cifar10/resnet20.yaml, configs/r50.yaml), then
                                  overlays (configs/trainer/cpu.yaml, configs/logger/wandb.yaml)
run directory
  --run_dir DIR                   config.yaml, metrics.csv, checkpoints/; each recipe sets
                                  runs/<dataset>/<net> (relative to the current directory)
data (the recipe's DataModule: CIFARDataModule or ImageNetDataModule)
  --data.root DIR                 the images (CIFAR: train.tar.gz + test.tar.gz, or torchvision's)
  --data.download true            CIFAR: fetch torchvision's copy into --data.root (needs internet)
  --data.batch_size N             images per device per step (the lr scales with the global batch)
  --data.num_workers N            loader processes per device
  --data.cache_dir DIR            decoded images, extracted archives (default ~/.cache/resnet_lit)
model
  --model.arch NAME               resnet18 ... resnet152, resnet20 ... resnet1202, plain20 ...
  --model.width X                 channel multiplier of every stage
  --model.optimizer.lr LR         at --model.optimizer.reference_batch images (ImageNet 256)
  --model.init_weights FILE       start a new run from weights (torchvision, timm, safetensors)
  --model.compile false           eager (the recipes compile on a GPU)
trainer
  --trainer.max_steps N           iterations (or --trainer.max_epochs N)
  --trainer.accelerator A         cpu, gpu, auto
  --trainer.devices N             devices per node; --trainer.num_nodes N for several nodes
  --trainer.precision P           32-true, bf16-mixed, 16-mixed
resume
  --ckpt_path auto                the run directory's newest checkpoint, or a fresh start when there
                                  is none: the same command for the first start and every restart
  --ckpt_path last                <run_dir>/checkpoints/last.ckpt (an error when there is none)
  --ckpt_path FILE                that checkpoint (optimiser, schedule and step included)
  --last_checkpoint.every_n_train_steps N   also refresh last.ckpt every N steps

examples:
  resnet-lit fit --config configs/cifar10/resnet20.yaml --config configs/trainer/cpu.yaml
  resnet-lit fit --config configs/r50.yaml --data.root /data/imagenet --ckpt_path auto

"""

_EVALUATE = """\
resnet-lit {command}: {what}

usage: resnet-lit {command} --config RECIPE [--config OVERLAY ...] --ckpt_path FILE [--KEY VALUE ...]

config
  --config FILE                   the recipe the run was trained with (and its overlays), or the
                                  run's own config.yaml
weights
  --ckpt_path FILE                a run's checkpoint (its checkpoints/last.ckpt or best-*.ckpt)
  --ckpt_path last                <run_dir>/checkpoints/last.ckpt
  --model.init_weights FILE       bare weights instead (torchvision, timm, safetensors, ours)
run directory
  --run_dir DIR                   {output}
                                  (default: the run directory of --ckpt_path FILE, the folder
                                  above its checkpoints/; else the config's run_dir)
data
{data}  --data.eval_batch_size N        images per device per step
  --data.num_workers N            loader processes per device
trainer
  --trainer.accelerator A         cpu, gpu, auto
  --trainer.devices N             devices per node
{extra}
example:
  resnet-lit {command} --config configs/cifar10/resnet20.yaml --config configs/trainer/cpu.yaml \\
      --ckpt_path runs/cifar10/resnet20/checkpoints/last.ckpt{example}

"""

_ROOT = "  --data.root DIR                 the images (the same data as the training run's)\n"
_EVALUATION = {
    "validate": dict(what="evaluate a checkpoint on the validation split (val/error, acc1, acc5, loss).",
                     output="logs go to DIR/validate/", data=_ROOT, extra="", example=""),
    "test": dict(what="evaluate a checkpoint on the test split (test/error, acc1, acc5, loss).",
                 output="logs go to DIR/test/", data=_ROOT, extra="", example=""),
    "predict": dict(
        what="the top-5 classes of every image of a folder, as CSV\n"
             "(the class names come from the checkpoint: no training data needed).",
        output="DIR/predictions.csv, logs in DIR/predict/",
        data="  --data.predict_path PATH        an image, a folder of images or a list of them\n",
        extra="predictions\n"
              "  --predictions.output FILE       the CSV (default <run_dir>/predictions.csv)\n"
              "  --predictions.top_k K           classes per row (default 5)\n",
        example=" --data.predict_path my_photos/",
    ),
}


def command_help(command: str) -> str:
    """``resnet-lit COMMAND --help``: one screen (the full list is ``--help full``)."""
    text = _FIT if command == "fit" else _EVALUATE.format(command=command, **_EVALUATION[command])
    return text + _MORE.format(command=command)
