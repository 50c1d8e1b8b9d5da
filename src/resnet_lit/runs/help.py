"""The help a user reads first: ``resnet-lit --help`` on one screen, and the options set most often at
the top of ``resnet-lit fit --help`` (LightningCLI's full list, 800 lines, follows).
"""

from __future__ import annotations

from resnet_lit._version import __version__

OVERVIEW = f"""\
resnet-lit {__version__}: the residual networks of He et al. 2015, trained with PyTorch Lightning.

usage: resnet-lit COMMAND [--config FILE ...] [--key value ...]

commands (the Trainer's; `resnet-lit COMMAND --help` lists every option):
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

COMMON = {
    "fit": """\
resnet-lit fit: the options set most often (every option follows, after LightningCLI's usage line):
  --config FILE                   a recipe, then overlays; later files and flags win
  --run_dir DIR                   the run's directory (config.yaml, metrics.csv, checkpoints/)
  --data.root DIR                 the data (--data.help CIFARDataModule lists the DataModule's options)
  --data.batch_size N             images per device per step (the lr scales with the global batch)
  --trainer.devices N             devices (GPUs) per node; --trainer.num_nodes N for several nodes
  --trainer.max_steps N           iterations (or --trainer.max_epochs N)
  --trainer.precision P           32-true, bf16-mixed, 16-mixed
  --ckpt_path auto|last|FILE      resume (auto: the newest checkpoint of the run directory, or start fresh)
  --model.init_weights FILE       start a new run from weights (torchvision, timm, safetensors, ours)
""",
}
COMMON["validate"] = COMMON["test"] = COMMON["predict"] = """\
resnet-lit {command}: the options set most often (every option follows, after LightningCLI's usage line):
  --config FILE                   the run's recipe (and the overlays it was trained with)
  --ckpt_path FILE|last           the checkpoint to evaluate (or --model.init_weights FILE for bare weights)
  --run_dir DIR                   the training run's directory: logs go to DIR/{command}/
  --data.root DIR                 the data (--data.predict_path for predict)
"""


def common_options(command: str) -> str:
    return COMMON[command].format(command=command)
