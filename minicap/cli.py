"""The ``minicap`` command line: ``minicap train | caption | evaluate | kernel``.

Each subcommand is a thin layer over a function of the package, imported only when the command runs, so
``minicap --help`` answers at once. Errors a user can fix end with a one-line message and exit status 2, not a
traceback. (The benchmarks are the repository's, not the package's: ``python -m tools.bench`` in a clone.)
"""
import argparse
import json
import os
import sys
from pathlib import Path


class UserError(Exception):
    """A problem with the command's input, reported as one line."""


def _check_beam(width):
    """A beam width below 1 is a mistake, not a request for greedy decoding (which is width 1)."""
    if width < 1:
        raise UserError(f"--beam must be a beam width of at least 1 (1: greedy decoding), got {width}")


def _decoding(beam_width):
    """The decoding method and options of ``--beam WIDTH``: beam search, or greedy for width 1."""
    return {"method": "beam", "beam_width": beam_width} if beam_width > 1 else {"method": "greedy"}


def _train(args):
    import minicap.train  # looked up at each call, so that a test can replace minicap.train.train
    from minicap.config import parse_overrides, profile

    overrides = parse_overrides(args.set)
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.dataset:
        overrides["dataset"] = _dataset(args.dataset)
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    if args.devices is not None:
        overrides["devices"] = args.devices
    config = profile(args.profile, **overrides)
    output = args.output or os.path.join("runs", args.profile)
    result = minicap.train.train(config, output, overwrite=args.overwrite, verbose=1 if sys.stdout.isatty() else 2)
    print(f"trained model saved to {result.model_path}")


def _caption(args):
    import numpy as np

    from minicap.data.images import load_image
    from minicap.generate import Generator
    from minicap.model import load_captioner

    _check_beam(args.beam)
    model, tokenizer = load_captioner(args.model, args.tokenizer)
    size = model.config.image_size
    loaded, failed = [], 0
    for path in args.images:
        try:
            loaded.append((path, load_image(path, size)))
        except (OSError, ValueError) as error:  # one bad file must not stop the others
            failed += 1
            print(f"minicap caption: error: {error}", file=sys.stderr)
    if not loaded:
        raise UserError("no image could be read")
    images = np.stack([image for _, image in loaded]).astype("float32") / 255.0
    tokens = Generator.from_tokenizer(model, tokenizer).decode(images, **_decoding(args.beam))
    captions = tokenizer.decode_batch(tokens)
    for (path, _), caption in zip(loaded, captions):
        print(f"{path}\t{caption}")
    if args.attention:
        _save_attention(args.attention, model, images, tokens, captions, [p for p, _ in loaded])
    return 1 if failed else 0


def _save_attention(target, model, images, tokens, captions, paths):
    """One figure per image: each word's cross-attention over the image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from minicap.evaluate import cross_attention
    from minicap.plot import show_word_attention

    target = Path(target)
    grid = model.config.encoder_spec().grid
    weights = cross_attention(model, images, tokens[:, :-1])
    for index, (caption, path) in enumerate(zip(captions, paths)):
        words = caption.split() or ["(empty)"]
        figure = show_word_attention(images[index], weights[index, :len(words)], words, (grid, grid), title=caption)
        out = target if len(paths) == 1 else target.with_name(f"{target.stem}-{index}{target.suffix}")
        figure.savefig(out, dpi=100)
        plt.close(figure)
        print(f"attention of {path} saved to {out}", file=sys.stderr)


def _dataset(value):
    """A built-in data set's name, or the absolute path of a folder / CSV file of captioned images."""
    from minicap.data.datasets import resolve_dataset

    try:
        return resolve_dataset(value)
    except ValueError as error:
        raise UserError(str(error).replace("dataset", "--dataset", 1)) from None


def _run_settings(model_path):
    """The training settings saved next to a model (train_config.json), or {} when there are none."""
    saved = Path(model_path).with_name("train_config.json")
    return json.loads(saved.read_text()) if saved.exists() else {}


def _evaluate(args):
    from minicap.model import load_captioner

    _check_beam(args.beam)
    model, tokenizer = load_captioner(args.model, args.tokenizer)
    options = _decoding(args.beam)
    dataset, split = _dataset(args.dataset), args.split
    if dataset == "shapes":
        from minicap.data.shapes import make_shapes
        from minicap.evaluate import evaluate_shapes

        split = split or "test"
        data = make_shapes(args.num, split={"test": "heldout"}.get(split, split), seed=args.seed,
                           image_size=model.config.image_size,
                           max_objects=args.max_objects or _trained_max_objects(args.model))
        metrics, _ = evaluate_shapes(model, tokenizer, data, **options)
    else:
        from minicap.config import TrainConfig
        from minicap.data.datasets import scoring_split
        from minicap.evaluate import evaluate_caption_set

        # The data settings the model was trained with (a mirror, a data folder), when it was trained on this data set.
        trained = _run_settings(args.model)
        settings = {key: trained[key] for key in ("data_dir", "extract_dir", "data_url", "data_hashes")
                    if key in trained and trained.get("dataset") == dataset}
        if args.data_dir:
            settings["data_dir"] = args.data_dir
        split, data = scoring_split(TrainConfig(dataset=dataset, **settings), split, model.config.image_size)
        metrics, _ = evaluate_caption_set(model, tokenizer, data, **options)
    metrics = {"dataset": args.dataset, "split": split, "images": len(data), **metrics}
    if args.json:
        print(json.dumps(metrics, indent=1))
    else:
        for key, value in metrics.items():
            print(f"{key:>14}  {value:.4f}" if isinstance(value, float) else f"{key:>14}  {value}")


def _trained_max_objects(model_path):
    """The shapes scenes' max_objects the model was trained on (train_config.json beside it), else 3."""
    return _run_settings(model_path).get("max_objects", 3)


def _kernel(args):
    from minicap import kernel

    path = kernel.install(name=args.name, user=args.user)
    print(f"installed kernel {args.name!r} in {path}")


def build_parser():
    parser = argparse.ArgumentParser(prog="minicap", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a captioning model (resumes an interrupted run)")
    train.add_argument("--profile", default="quick",
                       help="quick (shapes, CPU, minutes), photos (pretrained ViT-B/32, Flickr8k, GPU) or gpu (larger shapes)")
    train.add_argument("--dataset", metavar="NAME|PATH",
                       help="shapes, flickr8k, coco, or a folder (or CSV file) of your own captioned images with a "
                            "captions.csv of the header image,caption (default: the profile's)")
    train.add_argument("--data-dir", metavar="DIR",
                       help="where downloads and feature caches go (default: $MINICAP_DATA or ~/.keras/datasets/minicap)")
    train.add_argument("--epochs", type=int, help="passes over the training images (default: the profile's)")
    train.add_argument("--devices", type=int, metavar="N",
                       help="train data-parallel on N devices, each batch split between them (default: every "
                            "local GPU/TPU, else 1; 1: a single device)")
    train.add_argument("--output", "-o", help="run directory (default: runs/PROFILE)")
    train.add_argument("--set", action="append", metavar="NAME=VALUE",
                       help="override a training setting, e.g. --set model_dim=256 (repeatable)")
    train.add_argument("--overwrite", action="store_true",
                       help="train again even if the run directory holds a trained model")
    train.set_defaults(handler=_train)

    caption = commands.add_parser("caption", help="caption image files with a trained model")
    caption.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any size; resized)")
    caption.add_argument("--model", "-m", required=True, help="model.keras written by minicap train")
    caption.add_argument("--tokenizer", help="its tokenizer.json (default: next to the model)")
    caption.add_argument("--beam", type=int, default=1, metavar="WIDTH", help="beam search of this width (default: greedy)")
    caption.add_argument("--attention", metavar="PNG", help="save each word's attention over the image here")
    caption.set_defaults(handler=_caption)

    evaluate = commands.add_parser("evaluate", help="score a model: BLEU, CIDEr-D (+ faithfulness, grounding on shapes)")
    evaluate.add_argument("--model", "-m", required=True, help="model.keras written by minicap train")
    evaluate.add_argument("--tokenizer", help="its tokenizer.json (default: next to the model)")
    evaluate.add_argument("--dataset", default="shapes", metavar="NAME|PATH",
                          help="shapes (default), flickr8k, coco, or a folder / CSV file of captioned images")
    evaluate.add_argument("--split", help="shapes: train, val, heldout (= test, the default); flickr8k/coco: train, "
                                          "val, test (default); a folder: val (default), train, test, all")
    evaluate.add_argument("--data-dir", metavar="DIR", help="where flickr8k/coco are kept (default: as trained)")
    evaluate.add_argument("--num", type=int, default=200, help="shapes scenes to evaluate (default 200)")
    evaluate.add_argument("--max-objects", type=int, help="shapes: most objects per scene (default: as trained)")
    evaluate.add_argument("--seed", type=int, default=2, help="shapes: the scenes' seed")
    evaluate.add_argument("--beam", type=int, default=1, metavar="WIDTH", help="beam search of this width (default: greedy)")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")
    evaluate.set_defaults(handler=_evaluate)

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
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (UserError, ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"minicap {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
