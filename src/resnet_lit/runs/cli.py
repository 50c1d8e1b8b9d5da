"""The ``resnet-lit`` command: LightningCLI for fit / validate / test / predict, plus a few tools.

    resnet-lit fit --config configs/cifar10/resnet56.yaml
    resnet-lit fit --config configs/r50.yaml --config configs/trainer/ddp.yaml
    resnet-lit test --config configs/cifar10/resnet56.yaml --ckpt_path runs/cifar10/resnet56/checkpoints/last.ckpt
    resnet-lit export | report | imagenet-val | shards ...   (see ``resnet-lit <tool> --help``)

A run writes everything into one directory, ``--run_dir`` (each recipe sets ``runs/<dataset>/<net>``;
without one, ``runs/<arch>``):
``config.yaml``, ``metrics.csv``, ``checkpoints/last.ckpt`` and ``checkpoints/best-*.ckpt``; ``fit``
holds its ``fit.lock`` while it runs (``runs.run_lock``). Ctrl-C or SIGTERM saves ``last.ckpt`` and exits
with 130 / 143 (``runs.interrupt``); ``--ckpt_path auto`` resumes from it.

Exit status (the README's table; the constants are ``runs.exit_codes``, ``tests/test_exit_codes.py``
checks that the three agree):

    0    success
    1    run failure: the run stopped for a reason outside the code (a loss that is not finite, a full
         disk, a lost DDP rank), in one line; or an unexpected error, which keeps its traceback
    2    usage or configuration error: refused in one line before anything trained
    130  SIGINT (Ctrl-C): stopped after the batch under way, last.ckpt saved
    143  SIGTERM: likewise
    138  SIGUSR1 (SLURM's requeue signal): likewise, and the job requeued
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

from jsonargparse import ArgumentError
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from resnet_lit.checkpointing.atomic_write import AtomicCheckpointIO
from resnet_lit.checkpointing.contents import TRAINER_LIMITS, EpochEndLoopState, RNGState, wandb_run_id_of
from resnet_lit.checkpointing.readable import CheckpointFileError
from resnet_lit.checkpointing.resume import LastCheckpoint
from resnet_lit.checkpointing.resume_plan import (
    ResumeError,
    ResumePlan,
    compare_with_checkpoint,
    plan_resume,
    trainer_changes,
)
from resnet_lit.checkpointing.weights import InitWeightsError
from resnet_lit.data.cifar_io import DownloadError
from resnet_lit.data.decode import BadImageError
from resnet_lit.lightning_private import CommandLineOverCheckpoint, drop_wandb_anonymous
from resnet_lit.runs.callbacks import LearningRate, Throughput, progress_bar
from resnet_lit.runs.console import cpu_note, print_model_line, silence_noise, silence_resume_noise
from resnet_lit.runs.elastic import fresh_store_for_restart
from resnet_lit.runs.entry import SUBCOMMANDS, answer_without_lightning, cli_args
from resnet_lit.runs.exit_codes import RUN_FAILED, USAGE
from resnet_lit.runs.failures import collective_failure_message, out_of_space_message, wandb_login_message
from resnet_lit.runs.flag_errors import check_config_files, one_line, option_strings
from resnet_lit.runs.help import CKPT_PATH_HELP
from resnet_lit.runs.interrupt import StopOnSignal, exit_status, ignore_termination_while_exiting
from resnet_lit.runs.prediction_writer import PredictionWriter
from resnet_lit.runs.run_lock import RunDirInUse, RunDirLock, is_first_process
from resnet_lit.training.classifier import ImageClassifier
from resnet_lit.training.nonfinite import NonFiniteLossError
from resnet_lit.training.schedules import check_warmup, global_batch_size

# Forced callbacks a run may leave out (--callbacks_off); the others make resume exact.
OptionalCallback = Literal["checkpoint", "throughput", "lr_monitor", "predictions"]
_RUN_LOCKS: list[RunDirLock] = []  # held until main() returns (tests run several fits in one process)
_run_dir: list[Path] = []  # the run directory of the command under way, for the messages of main()


class ResNetCLI(CommandLineOverCheckpoint):
    """LightningCLI with the run directory, checkpointing and logging resnet-lit runs share."""

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict[str, Any],
                     subparser_kwargs: dict[str, Any]) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        # --ckpt_path's help is Trainer.fit's ("best", "hpc", "registry"), not what resnet-lit takes
        for parser in getattr(self, "_option_parsers", []):  # the subcommands' (add_arguments_to_parser)
            for action in parser._actions:
                if action.dest == "ckpt_path":
                    action.help = CKPT_PATH_HELP

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        self.__dict__.setdefault("_option_parsers", []).append(parser)  # for "did you mean" (flag_errors.py)
        parser.add_argument("--run_dir", type=str | None, default=None,
                            help="Directory of this run (config, metrics, checkpoints); each recipe sets "
                                 "runs/<dataset>/<net>. Without one: runs/<model.arch>.")
        # Forced callbacks (Lightning's documented way): every run has them, config.yaml shows them under
        # these keys and each is configured there or on the command line (--throughput.every_n_steps 10).
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")  # best-*.ckpt
        # what --ckpt_path last/auto resume; --last_checkpoint.every_n_train_steps N / .train_time_interval h:m:s
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")
        parser.add_lightning_class_args(StopOnSignal, "stop_on_signal")  # Ctrl-C/SIGTERM: save last.ckpt, exit
        parser.add_lightning_class_args(RNGState, "rng_state")  # a resumed run draws what an uninterrupted one would
        parser.add_lightning_class_args(EpochEndLoopState, "epoch_end_loop_state")  # exact resume at an epoch end
        parser.add_lightning_class_args(Throughput, "throughput")  # train/images_per_s
        parser.add_lightning_class_args(LearningRate, "lr_monitor")  # lr (one column unless groups differ)
        # predict: a CSV of top-5 classes per image (--predictions.output, default <run_dir>/predictions.csv)
        parser.add_lightning_class_args(PredictionWriter, "predictions")
        parser.add_argument("--callbacks_off", type=list[OptionalCallback], default=[],
                            help="Forced callbacks to leave out of this run, e.g. '[throughput, lr_monitor]'. "
                                 "The ones that make resume exact (last_checkpoint, rng_state, "
                                 "epoch_end_loop_state, stop_on_signal) stay on.")
        parser.set_defaults({
            "lr_monitor.logging_interval": "step",
            "checkpoint.monitor": "val/error",
            "checkpoint.mode": "min",
            "checkpoint.save_last": False,  # last.ckpt has its own callback: last_checkpoint
            "checkpoint.save_top_k": 1,
            "checkpoint.filename": "best-{epoch:03d}-{step:07d}",
            "checkpoint.auto_insert_metric_name": False,
            "trainer.logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs"}},
            "trainer.enable_model_summary": False,  # one line of our own instead (runs/console.py)
        })
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.classes", "model.class_names", apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as error:
            line = one_line(str(error), option_strings(getattr(self, "_option_parsers", [])),
                            list(sys.argv[1:] if args is None else args))
            if line is None:
                raise
            command = next((a for a in (sys.argv[1:] if args is None else args) if a in SUBCOMMANDS), "")
            _fail(f"{line} (`resnet-lit {command + ' ' if command else ''}--help` lists every option)")
    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        root = config.trainer.default_root_dir  # Lightning's name for it: the run directory if given alone
        if root and config.run_dir and Path(root) != Path(config.run_dir):
            _fail(f"--trainer.default_root_dir {root}: a run writes everything into its --run_dir (here "
                  f"{config.run_dir}); use --run_dir {root} instead.")
        run_dir = Path(config.run_dir or root or Path("runs") / config.model.arch)
        config.run_dir = str(run_dir)
        config.trainer.default_root_dir = str(run_dir)
        _run_dir[:] = [run_dir]
        if config.checkpoint.dirpath is None:
            config.checkpoint.dirpath = str(run_dir / "checkpoints")
        if config.last_checkpoint.dirpath is None:
            config.last_checkpoint.dirpath = config.checkpoint.dirpath
        if self.subcommand == "fit" and is_first_process():  # before anything reads or writes the run's files
            try:
                _RUN_LOCKS.append(RunDirLock(run_dir).acquire())
            except RunDirInUse as error:
                _fail(str(error))
        try:  # which checkpoint this command starts from, read once (checkpointing/resume_plan.py)
            self.resume = plan_resume(str(self.subcommand), getattr(config, "ckpt_path", None), run_dir,
                                      config.checkpoint.dirpath)
        except ResumeError as error:
            _fail(str(error))
        checkpoint = self.resume.checkpoint
        if hasattr(config, "ckpt_path"):
            config.ckpt_path = self.resume.ckpt_path
        if checkpoint is not None and getattr(config, "weights_only", False) is None:
            config.weights_only = True  # our checkpoints hold plain data: never unpickle code
        if self.subcommand == "predict" and checkpoint is not None:
            _classes_from_checkpoint(config, checkpoint)
        if self.subcommand in ("validate", "test", "predict") and checkpoint is None and not config.model.init_weights:
            _fail(
                f"{self.subcommand} needs trained weights, or it would evaluate a randomly initialised network: "
                "--ckpt_path PATH (a run's checkpoint; "
                f"`--ckpt_path last` is {Path(config.checkpoint.dirpath) / 'last.ckpt'}), "
                "or --model.init_weights PATH (torchvision, timm, safetensors or resnet-lit weights)."
            )
        # validate/test/predict log beside the training run, never over its metrics.csv and config.yaml
        log_dir = run_dir if self.subcommand == "fit" else run_dir / str(self.subcommand)
        run_id = wandb_run_id_of(checkpoint) if checkpoint is not None else None
        for logger in _as_list(config.trainer.logger):
            _place_logger(logger, log_dir, run_id, appending=self.subcommand == "fit")

    def after_instantiate_classes(self) -> None:
        # The built model and data against the checkpoint: what defines the training must agree; what a
        # resume may change is listed (checkpointing/resume_plan.py). Then the copy is dropped: Lightning
        # reads the file again when it restores.
        super().after_instantiate_classes()
        plan, self._resume_line = self.resume, None
        if plan.checkpoint is not None:
            try:
                changes = compare_with_checkpoint(plan, str(self.subcommand), dict(self.model.hparams),
                                                  getattr(self.datamodule, "hparams", None))
            except ResumeError as error:
                _fail(str(error))
            changes += trainer_changes(plan, {key: getattr(self.trainer, key) for key in TRAINER_LIMITS})
            self._resume_line = (f"resuming {plan.why} ({plan.position}); "
                                 + (f"changed: {', '.join(changes)}" if changes else "nothing changed"))
        self.resume = ResumePlan(plan.ckpt_path, plan.why, None)

    def instantiate_classes(self) -> None:
        # A bad value the parser could not see (an unknown arch, a data folder that is not there)
        # is a user's mistake: one message, not a traceback.
        try:
            super().instantiate_classes()
        except (ValueError, FileNotFoundError, NotADirectoryError, DownloadError) as error:
            _fail(str(_raised_by_the_class(error)))

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        # Two defaults that depend on the rest of the configuration, so not expressible as parser
        # defaults: the progress bar (a rich bar in a terminal, lines elsewhere) unless
        # trainer.enable_progress_bar is false, and atomic checkpoint writes unless the configuration
        # gives its own CheckpointIO plugin.
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        if config.trainer.get("enable_progress_bar") is not False:
            self.trainer_defaults = {**self.trainer_defaults, "callbacks": [progress_bar()]}
        plugins = _as_list(config.trainer.get("plugins"))
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())  # a kill mid-write never leaves a corrupt last.ckpt
        trainer = super().instantiate_trainer(plugins=plugins, **kwargs)
        off = {id(config[key]) for key in config.get("callbacks_off") or []}
        trainer.callbacks = [c for c in trainer.callbacks if id(c) not in off]
        if self.subcommand == "fit":
            _at_scale(trainer, self.model, self.datamodule)
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                drop_wandb_anonymous(logger)  # before the run starts: wandb would warn about it
        return trainer

    def before_fit(self) -> None:
        fresh_store_for_restart()  # torchrun --max-restarts: the restarted group must not meet on stale keys
        if self.config_init[self.subcommand].get("ckpt_path"):
            silence_resume_noise()
        if self._resume_line:
            rank_zero_info(self._resume_line)
        print_model_line(self.model)
        cpu_note(self.trainer, self.model)

    def _evaluate_init_weights(self) -> None:
        # validate / test / predict without --ckpt_path evaluate --model.init_weights (fit reads them
        # in on_fit_start; a checkpoint, when given, is what Lightning restores and evaluates).
        if not getattr(self.config_init[self.subcommand], "ckpt_path", None):
            self.model.load_init_weights(num_classes_change="error")

    before_validate = before_test = before_predict = _evaluate_init_weights


def _at_scale(trainer: Trainer, model: ImageClassifier, datamodule: LightningDataModule) -> None:
    """The recipe at this job's global batch: a large batch without warm-up is refused in one line, and
    ``trainer.max_steps`` stated at ``schedule.steps_at_batch`` becomes the same images here (the
    schedule and the EMA convert their own step counts: training/schedules.py, training/ema.py)."""
    per_device = getattr(datamodule, "batch_size", None)
    if not per_device:
        return
    batch = global_batch_size(int(per_device), trainer.num_devices, trainer.num_nodes, trainer.accumulate_grad_batches)
    try:
        check_warmup(model.optim_cfg, model.schedule_cfg, batch)
    except ValueError as error:
        _fail(str(error))
    schedule, stated = model.schedule_cfg, trainer.max_steps
    if schedule.steps_at_batch is not None and stated > 0 and schedule.step_factor(batch) != 1:
        trainer.fit_loop.epoch_loop.max_steps = schedule.steps(stated, batch)
        rank_zero_info(f"step counts stated at global batch {schedule.steps_at_batch}, run at {batch}: "
                       f"max_steps {stated} -> {trainer.max_steps} (the same images; `resnet-lit plan` shows all)")


def _raised_by_the_class(error: BaseException) -> BaseException:
    """The error a class raised itself: jsonargparse wraps one raised while it builds the DataModule
    (an argument whose type is a Union) in a page on the Union's subtypes, chaining the original."""
    inner = error.__cause__ or error.__context__
    while isinstance(inner, (ValueError, FileNotFoundError, NotADirectoryError, DownloadError)):
        error, inner = inner, inner.__cause__ or inner.__context__
    return error


def _as_list(value: Any) -> list[Any]:
    if value is None or isinstance(value, bool):
        return []
    return list(value) if isinstance(value, list) else [value]


def _place_logger(logger: Any, run_dir: Path, run_id: str | None, appending: bool) -> None:
    """Put every logger's files inside the run directory, and let a resumed wandb run keep its id."""
    class_path = str(logger.class_path)
    args = logger.init_args
    name = class_path.rsplit(".", 1)[-1]
    if name == "CSVLogger":
        args.save_dir, args.name, args.version = str(run_dir), "", ""
        if appending:  # Lightning's CSVLogger deletes metrics.csv when a fit resumes
            logger.class_path = "resnet_lit.runs.csv_logger.ResumableCSVLogger"
    elif name == "TensorBoardLogger":
        args.save_dir, args.name, args.version = str(run_dir), "tensorboard", ""
    elif name == "WandbLogger":
        args.save_dir = str(run_dir)
        if run_id:
            args.id = run_id
            args.resume = "allow"  # a WandbLogger parameter; a dict_kwargs entry fails config validation


def _classes_from_checkpoint(config: Any, checkpoint: dict[str, Any]) -> None:
    """predict: the class names the checkpoint was trained with, so that the DataModule need not read
    them from training folders that may not be on this machine."""
    init_args = getattr(config.data, "init_args", None)
    if init_args is None or "classes" not in init_args or init_args.classes is not None:
        return  # a DataModule without the option, or classes given by the user
    hparams = checkpoint.get("hyper_parameters", {})
    if hparams.get("class_names"):
        init_args.classes = list(hparams["class_names"])


def _fail(message: str) -> None:
    print(f"resnet-lit: error: {message}", file=sys.stderr)
    raise SystemExit(USAGE)


def _run_failure(error: BaseException) -> tuple[str, bool] | None:
    """(line, every rank prints it) for a run that stopped for a reason outside the code: a loss that
    is not finite, a lost rank, a full disk; None for anything else (a bug keeps its traceback)."""
    cause: BaseException | None = error
    while cause is not None:  # Lightning's clean-up after the first error may raise a second one
        if isinstance(cause, NonFiniteLossError):
            return str(cause), False  # every rank stops alike: rank 0 says it
        cause = cause.__context__
    message = out_of_space_message(error, _run_dir[0] if _run_dir else None)
    if message is not None:
        return message, False  # rank 0 writes the files; the other ranks then lose rank 0
    message = collective_failure_message(error)
    return (message, True) if message is not None else None


def main(args: list[str] | None = None) -> None:
    """fit / validate / test / predict (``runs.entry.main``, the ``resnet-lit`` command, answers --help,
    --version and the tools before importing this module); tests call it in-process."""
    from_command_line = args is None
    args = list(sys.argv[1:] if args is None else args)
    answer_without_lightning(args)  # --help, --version, a tool, a misspelt command (runs.entry)
    args = cli_args(args)  # --help full; an evaluation writes into its checkpoint's run directory
    if from_command_line:
        sys.argv[1:] = args
    check_config_files(args, fail=_fail)
    silence_noise()
    try:
        _cli(None if from_command_line else args)
    except SIGTERMException:  # a stop signal: last.ckpt saved and the line printed (runs.interrupt)
        if from_command_line:
            ignore_termination_while_exiting()
        raise SystemExit(exit_status()) from None
    except ArgumentError as error:
        # jsonargparse would print a page of usage first; the message alone names the key.
        command = " ".join(a for a in args[:1] if a in SUBCOMMANDS)
        _fail(f"{str(error).strip()}\n(`resnet-lit {command + ' ' if command else ''}--help` lists every option)")
    except DownloadError as error:  # raised where prepare_data downloads, after the classes are built
        _fail(str(error))
    except BadImageError as error:  # the message names the file and the two ways on
        _fail(f"{_worker_message(error)} (On the command line: --data.on_bad_image skip.)")
    except InitWeightsError as error:  # raised when the run starts, after the parser and the classes
        if isinstance(error.__cause__, CheckpointFileError):  # the file itself is broken: the line says it all
            _fail(f"--model.{error}")
        if args[0] == "fit":
            _fail(f"--model.{error}\nGive a file to start from (a resnet-lit .ckpt, a torchvision or timm "
                  ".pth, a .safetensors), or --model.init_weights null for random weights.")
        _fail(f"--model.{error}\nTo evaluate, the weights must fit the model as they are, classifier included "
              "(the same arch and class count); a fine-tuned run's checkpoint goes in with --ckpt_path.")
    except Exception as error:  # noqa: BLE001 - only the failures _run_failure knows; the rest re-raised
        login = wandb_login_message(error)
        if login is not None:  # a setting to make, not a failure of the run
            _fail(login)
        failure = _run_failure(error)
        if failure is None:
            raise
        message, every_rank = failure
        if every_rank or rank_zero_only.rank == 0:
            print(f"resnet-lit: error: {message}", file=sys.stderr)
        raise SystemExit(RUN_FAILED) from None
    finally:
        while _RUN_LOCKS:
            _RUN_LOCKS.pop().release()


def _worker_message(error: BaseException) -> str:
    """The error's own message; a DataLoader worker re-raises it wrapped in the worker's traceback."""
    text = str(error).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(f"{type(error).__name__}: ", 1)[-1]
    return text


def _cli(args: list[str] | None) -> ResNetCLI:
    return ResNetCLI(
        ImageClassifier,
        LightningDataModule,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},  # a resumed run rewrites the same config.yaml
        auto_configure_optimizers=False,  # the optimiser and schedule are the model's (plain data)
        # No abbreviations, here or in the subcommands: --trainer.max_step must not set max_steps.
        parser_kwargs={"description": __doc__, "exit_on_error": False, "allow_abbrev": False,
                       **{name: {"allow_abbrev": False} for name in SUBCOMMANDS}},
        args=args,
    )
