"""Train a profile with several seeds and print how faithful each model's greedy captions are.

One seed's figure (chapter 5 prints seed 0's) says little about a profile: whether a small model learns
the relations, or names a colour-and-shape pair it never saw, can depend on its initialisation. This
trains ``minicap.config.profile(PROFILE, seed=s)`` for each seed, captions new validation scenes and held-out
scenes (unseen colour-and-shape pairs) greedily, and prints a row per seed: training seconds, both
faithfulness rates, the held-out errors by kind and, on a second line, the validation errors by kind. The
last lines give the worst and the mean.

    python -m tools.bench.seeds                          # quick profile, seeds 0-4, 300 scenes per split
    python -m tools.bench.seeds --seeds 0 1 --set epochs=8 --set num_heads=2
    python -m tools.bench.seeds --checks                 # also what chapters 5 and 6 assert, per seed

(in a clone of the repository, from its root).

``--checks`` adds, per seed, the quantities the book's chapters assert about a trained model, so that each
assertion can be checked to hold for every seed with a margin: the untrained model's faithfulness, the first
and last epochs' validation loss, BLEU-4 and CIDEr-D of the trained and the untrained model, and grounding
(trained, untrained, chance) on the same validation scenes.

Each run trains in a temporary directory.
"""
import argparse
import tempfile
import time
from collections import Counter

from minicap.config import parse_overrides, profile
from minicap.data.faithfulness import check_caption
from minicap.data.shapes import make_shapes
from minicap.evaluate import evaluate_shapes
from minicap.train import train


def faithfulness(result, config, split, num, seed):
    """``(rate, errors by kind)`` of ``result``'s greedy captions on ``num`` new scenes of ``split``."""
    scenes = make_shapes(num, split=split, seed=seed, image_size=config.model.image_size,
                         max_objects=config.max_objects)
    metrics, captions = evaluate_shapes(result.model, result.tokenizer, scenes)
    kinds = Counter(kind for caption, scene in zip(captions, scenes.scenes)
                    for kind in set(check_caption(caption, scene).error_kinds))
    return metrics["faithfulness"], kinds


def chapter_checks(result, config, num, seed):
    """What chapters 5 and 6 assert about ``result``'s model, as one printable line."""
    import keras

    from minicap.evaluate import reference_grounding
    from minicap.model import CaptionModel

    scenes = make_shapes(num, split="val", seed=1001, image_size=config.model.image_size,
                         max_objects=config.max_objects)
    keras.utils.set_random_seed(seed)
    untrained = CaptionModel(result.model.config)
    trained_metrics, _ = evaluate_shapes(result.model, result.tokenizer, scenes)
    untrained_metrics, _ = evaluate_shapes(untrained, result.tokenizer, scenes)
    grounded = reference_grounding(result.model, result.tokenizer, scenes)
    grounded_before = reference_grounding(untrained, result.tokenizer, scenes)
    epochs = result.history["epochs"]
    return (f"\n      checks: untrained faithful {untrained_metrics['faithfulness']:.1%}; val_loss "
            f"{epochs[0]['val_loss']:.3f} -> {epochs[-1]['val_loss']:.3f}; bleu4 {trained_metrics['bleu4']:.3f} "
            f"(untrained {untrained_metrics['bleu4']:.3f}); cider_d {trained_metrics['cider_d']:.3f} "
            f"(untrained {untrained_metrics['cider_d']:.3f}); grounding {grounded['grounding']:.1%} "
            f"(untrained {grounded_before['grounding']:.1%}, chance {grounded['chance']:.1%})")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tools.bench.seeds", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--checks", action="store_true", help="also print what chapters 5 and 6 assert")
    parser.add_argument("--num", type=int, default=300, help="scenes per evaluation split (default 300)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override a setting")
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.set)
        profile(args.profile, **overrides)  # unknown profile or setting: say so before training
    except ValueError as error:
        parser.error(str(error))
    print(f"profile {args.profile!r}, overrides {overrides or 'none'}; {args.num} scenes per split")
    print(f"{'seed':>4} {'seconds':>8} {'validation':>11} {'held-out':>9}  held-out errors")
    held_out, validation = [], []
    for seed in args.seeds:
        config = profile(args.profile, **{**overrides, "seed": seed})
        with tempfile.TemporaryDirectory() as run_dir:
            start = time.perf_counter()
            result = train(config, run_dir, verbose=0)
            seconds = time.perf_counter() - start
            # Evaluation scenes come from seeds no training run uses for its own data.
            val, val_kinds = faithfulness(result, config, "val", args.num, seed=1001)
            rate, kinds = faithfulness(result, config, "heldout", args.num, seed=1002)
            checks = chapter_checks(result, config, args.num, seed) if args.checks else ""
        held_out.append(rate)
        validation.append(val)
        print(f"{seed:4d} {seconds:8.0f} {val:11.1%} {rate:9.1%}  {dict(kinds.most_common())}"
              f"\n      validation errors: {dict(val_kinds.most_common())}{checks}", flush=True)
    print(f"held-out faithfulness: worst {min(held_out):.1%}, mean {sum(held_out) / len(held_out):.1%}")
    print(f"validation faithfulness: worst {min(validation):.1%}, mean {sum(validation) / len(validation):.1%}")


if __name__ == "__main__":
    main()
