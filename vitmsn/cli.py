"""The ``vitmsn`` command: thin subcommands that parse arguments and call library functions.

Errors a user can fix (bad paths, bad settings, bad images or checkpoints) print one line and exit 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

EPILOG = """examples:
  vitmsn quickstart                                  # pretrain on Fashion-MNIST, print the low-shot table
  vitmsn pretrain --preset fashion-mnist             # MSN pretraining with a preset
  vitmsn pretrain --preset vit-small/16 --data ~/images --set batch_size=256 --set epochs=100
  torchrun --nproc_per_node 8 -m vitmsn pretrain --preset vit-base/16 --data /imagenet/train
  vitmsn export runs/vit-small-16 my-model           # the target encoder as a transformers directory
  vitmsn lowshot --model my-model --data fashion-mnist --shots 1,2,5,10
  vitmsn predict --model my-classifier cat.jpg
  vitmsn info --model my-model
  vitmsn convert msn vits16_800ep.pth.tar vit-msn-small   # an original MSN checkpoint -> transformers format
  vitmsn export-onnx --model my-model --out model.onnx

Models are directories in transformers' format or Hub ids (downloaded when online)."""


class UserError(Exception):
    """A problem with the user's input; printed as one line."""


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(message)s")
    # libraries that log their inner workings at INFO (torch.onnx's dynamo exporter and onnxscript: dozens of
    # lines per export); their warnings and errors still show
    for noisy in ("PIL", "matplotlib", "urllib3", "httpx", "filelock", "huggingface_hub", "onnxscript", "onnx_ir",
                  "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# ------------------------------------------------------------------------------------------- commands


def cmd_info(args: argparse.Namespace) -> None:
    """Print a checkpoint's class, configuration and parameter count."""
    from vitmsn.checkpoints import load_config_dict
    from vitmsn.models.hf import model_class_for

    model = model_class_for(load_config_dict(args.model), args.model).from_pretrained(args.model)
    c, arch = model.config, type(model).__name__
    info = {"class": arch, "model_type": c.model_type, "parameters": model.num_parameters(),
            "hidden_size": c.hidden_size, "layers": c.num_hidden_layers, "heads": c.num_attention_heads,
            "image_size": c.image_size, "patch_size": c.patch_size, "num_channels": c.num_channels,
            "num_labels": c.num_labels if "Classification" in arch else None}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            if v is not None:
                print(f"{k:>12}: {v:,}" if isinstance(v, int) and not isinstance(v, bool) else f"{k:>12}: {v}")


def cmd_pretrain(args: argparse.Namespace) -> None:
    """MSN pretraining."""
    from vitmsn.msn.config import PretrainConfig, describe_settings, preset
    from vitmsn.msn.train import pretrain

    if args.preset and args.config:
        raise UserError("give --preset or --config, not both (a config.json holds every setting)")
    if args.resume and args.init:
        raise UserError("--init starts a new run from a model and --resume continues a run: give one of them")
    if args.resume and args.preset is None and args.config is None:
        if not args.out:
            raise UserError("--resume needs --out RUN_DIR (the run folder to continue)")
        run = Path(args.out)
        if not (run / "config.json").exists():
            raise UserError(f"{run} is not a pretraining run folder (it has no config.json of vitmsn pretrain) "
                            "to resume")
        cfg = PretrainConfig.load(run / "config.json")
    elif args.config:
        cfg = PretrainConfig.load(args.config)
    else:
        cfg = preset(args.preset or "fashion-mnist")
    changes = list(args.set or [])
    if args.data:
        changes.append(f"data={args.data}")
    if args.out:
        changes.append(f"out={args.out}")
    if args.epochs is not None:
        changes.append(f"epochs={args.epochs}")
    cfg = cfg.with_overrides(changes)
    if args.list_settings:
        source = args.config or (f"run {args.out}" if args.resume else f"preset {args.preset or 'fashion-mnist'}")
        print(f"settings of {source}{' with --set' if args.set else ''} (change any with --set key=value):\n"
              + describe_settings(cfg))
        return
    from vitmsn import distributed

    try:
        out = pretrain(cfg, resume=args.resume, init=args.init, device=args.device, progress=not args.no_progress)
    finally:
        distributed.shutdown()  # under torchrun: leave the process group, also after an error
    print(f"run folder: {out}\nexport the encoder with: vitmsn export {out} OUT_DIR")


def cmd_export(args: argparse.Namespace) -> None:
    """Write a run's target encoder as a transformers-format ViT-MSN directory."""
    from vitmsn.msn.train import export_encoder

    out = export_encoder(args.run, args.out, checkpoint=args.checkpoint, which=args.which, overwrite=args.overwrite)
    print(f"wrote {out} (load it with ViTMSNModel.from_pretrained({str(out)!r}))")


# ---------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vitmsn", description="Vision Transformers trained with Masked Siamese Networks (MSN).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, fn: Callable, help: str, description: str | None = None) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=description or help,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.set_defaults(func=fn)
        return sp

    sp = add("info", cmd_info, "show a model's class, size and configuration")
    sp.add_argument("--model", required=True, help="model directory or Hub id")
    sp.add_argument("--json", action="store_true", help="print JSON")

    sp = add("pretrain", cmd_pretrain, "MSN self-supervised pretraining",
             "MSN pretraining on unlabelled images (an image folder or Fashion-MNIST).\n\n"
             "Start from a preset and change any setting with --set key=value (--list-settings shows them\n"
             "all with their values). Checkpoints go to OUT/checkpoints; --resume continues a run exactly\n"
             "where it stopped. Under torchrun each process takes its share of the global batch.")
    sp.add_argument("--preset", help="fashion-mnist (default), vit-small/16, vit-base/16, vit-large/16, "
                                     "vit-base/4, vit-large/7")
    sp.add_argument("--config", help="a config.json of an earlier run to start from")
    sp.add_argument("--data", help="an image folder (presets vit-*, or --set dataset=folder), or the folder of "
                                   "the Fashion-MNIST IDX files (preset fashion-mnist, the default)")
    sp.add_argument("--out", help="run folder (default: runs/<preset>, e.g. runs/vit-small-16)")
    sp.add_argument("--epochs", type=int, help="number of epochs (same as --set epochs=N)")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="change a setting (repeatable)")
    sp.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    sp.add_argument("--init", metavar="DIR", help="start from a ViT-MSN directory (with msn_head.safetensors, "
                                                  "also the projection head and prototypes)")
    sp.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    sp.add_argument("--list-settings", action="store_true", help="list every setting with its value (of --preset, --config or the run, and --set), "
                                                                "then exit")

    sp = add("export", cmd_export, "write a pretraining run's encoder as a transformers-format directory")
    sp.add_argument("run", help="run folder of vitmsn pretrain")
    sp.add_argument("out", help="output directory")
    sp.add_argument("--checkpoint", help="a checkpoint file other than checkpoints/latest.pt")
    sp.add_argument("--which", choices=("target", "online"), default="target",
                    help="the EMA target encoder (default, as the paper evaluates) or the online encoder")
    sp.add_argument("--overwrite", action="store_true", help="replace the model in OUT (by default OUT must be "
                                                              "new or empty)")

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(add)
    _common_options(p)
    return p


def _subparsers(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    """Every (sub)command's parser under ``parser``, nested ones (``convert msn``) included, with its name."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sp in action.choices.items():
                found += [(name, sp), *_subparsers(sp)]
    return found


def _common_options(parser: argparse.ArgumentParser) -> None:
    """What every subcommand shares, whichever module registered it: ``-v`` also after the subcommand's name,
    help for ``--no-progress``; ``--overwrite`` for the commands that write one file (refused when it exists)."""
    for name, sp in _subparsers(parser):
        options = {o for a in sp._actions for o in a.option_strings}
        if "--verbose" not in options:  # SUPPRESS: not given here leaves the value given before the subcommand
            sp.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
        for action in sp._actions:
            if "--no-progress" in action.option_strings and not action.help:
                action.help = "no progress bar"
        if name == "finetune":
            sp.set_defaults(func=_clip_grad_above_zero(sp.get_default("func")))
        if name in _ONE_FILE_OUTPUTS and "--overwrite" not in options:
            sp.add_argument("--overwrite", action="store_true", help="replace the file --out names if it exists "
                                                                     "(by default an existing file is refused)")
            sp.set_defaults(func=_refusing_existing_out(sp.get_default("func"), _ONE_FILE_OUTPUTS[name]))


def _clip_grad_above_zero(func: Callable) -> Callable:
    """finetune's --clip-grad is > 0, as its help says (the library also takes 0 for no clipping)."""
    def run(args: argparse.Namespace) -> None:
        if args.clip_grad is not None and not args.clip_grad > 0:
            raise UserError(f"clip_grad must be a number > 0 (leave --clip-grad out for no clipping), got "
                            f"{args.clip_grad:g}")
        func(args)

    run.__wrapped__ = func  # type: ignore[attr-defined]
    return run


def _npz_path(out: str) -> Path:
    from vitmsn.eval.features import features_path

    return features_path(out)


# subcommands that write the one file --out names (the path it becomes): checked before the work starts
_ONE_FILE_OUTPUTS: dict[str, Callable[[str], Path]] = {"export-onnx": Path, "extract": _npz_path}


def _refusing_existing_out(func: Callable, path_of: Callable[[str], Path]) -> Callable:
    def run(args: argparse.Namespace) -> None:
        out = path_of(args.out)
        if out.is_dir():
            raise UserError(f"--out {args.out} is a directory: give the file to write")
        if out.exists() and not args.overwrite:
            raise UserError(f"{out} exists: pass --overwrite to replace it, or choose another --out")
        func(args)

    run.__wrapped__ = func  # type: ignore[attr-defined]
    return run


# Modules that define more subcommands next to the code they call: each has ``register(add)``, where
# ``add(name, function, help, description=None)`` returns the subcommand's argparse parser.
COMMAND_MODULES: tuple[str, ...] = ("vitmsn.eval.quickstart", "vitmsn.convert", "vitmsn.eval.commands")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    from vitmsn.checkpoints import CheckpointError
    from vitmsn.training import NonFiniteLossError, TrainingInterrupted

    try:
        args.func(args)
    except TrainingInterrupted as e:  # a run saved its checkpoint after SIGINT / SIGTERM: where, how to go on
        print(e, file=sys.stderr)
        return e.exit_code
    except (UserError, CheckpointError, NonFiniteLossError, ValueError, OSError) as e:
        if args.verbose:
            raise
        print(f"vitmsn {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except RuntimeError as e:
        if "DataLoader worker" not in str(e) or args.verbose:
            raise
        # a worker killed from outside, most often by the kernel when memory ran out
        print(f"vitmsn {args.command}: error: {e} (often: out of memory; lower num_workers or the batch size; "
              "a pretraining or fine-tuning run continues from its last checkpoint with --resume)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
