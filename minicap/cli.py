"""The ``minicap`` command line: ``minicap train | caption | evaluate | kernel | bench``.

Each subcommand is a thin layer over a function of the package (imported only when the command
runs, so ``minicap --help`` is instant).
"""
import argparse
import sys


def _kernel(args):
    from minicap import kernel

    path = kernel.install(name=args.name, user=args.user)
    print(f"installed kernel {args.name!r} in {path}")


def build_parser():
    parser = argparse.ArgumentParser(prog="minicap", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

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
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
