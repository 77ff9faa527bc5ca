"""The ``minicap`` command line: ``minicap train | caption | evaluate | kernel | bench``.

Each subcommand is a thin layer over a function of the package, imported only when the command
runs, so ``minicap --help`` answers at once. Errors a user can fix end with a one-line message and
exit status 2, not a traceback.
"""
import argparse
import json
import sys


class UserError(Exception):
    """A problem with the command's input, reported as one line."""


def _train(args):
    from minicap import trainer

    overrides = {}
    for item in args.set or []:
        key, _, value = item.partition("=")
        if not value:
            raise UserError(f"--set expects NAME=VALUE, got {item!r}")
        try:
            overrides[key] = json.loads(value)  # numbers, true/false
        except json.JSONDecodeError:
            overrides[key] = value  # plain words, e.g. --set backbone=vit-b32
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.dataset:
        overrides["dataset"] = args.dataset
    config = trainer.profile(args.profile, **overrides)
    result = trainer.train(config, args.output, overwrite=args.overwrite, verbose=1 if sys.stdout.isatty() else 2)
    print(f"trained model saved to {result.model_path}")


def _kernel(args):
    from minicap import kernel

    path = kernel.install(name=args.name, user=args.user)
    print(f"installed kernel {args.name!r} in {path}")


def build_parser():
    parser = argparse.ArgumentParser(prog="minicap", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a captioning model (resumes an interrupted run)")
    train.add_argument("--profile", default="quick", help="quick (CPU, minutes) or gpu")
    train.add_argument("--dataset", choices=["shapes", "flickr8k", "coco"], help="default: the profile's (shapes)")
    train.add_argument("--epochs", type=int, help="passes over the training images (default: the profile's)")
    train.add_argument("--output", "-o", default="runs/quick", help="run directory (default: runs/quick)")
    train.add_argument("--set", action="append", metavar="NAME=VALUE",
                       help="override a training setting, e.g. --set model_dim=256 (repeatable)")
    train.add_argument("--overwrite", action="store_true",
                       help="train again even if the run directory holds a trained model")
    train.set_defaults(handler=_train)

    kernel = commands.add_parser("kernel", help="manage the minicap-gpu Jupyter kernel")
    kernel_commands = kernel.add_subparsers(dest="kernel_command", required=True)
    install = kernel_commands.add_parser("install", help="register the minicap-gpu kernel")
    install.add_argument("--name", default="minicap-gpu")
    where = install.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for this user")
    where.add_argument("--sys-prefix", action="store_true", help="install into this environment (default)")
    install.set_defaults(handler=_kernel)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (UserError, ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"minicap {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
