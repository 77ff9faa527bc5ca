"""The report of ``python -m tools.bench`` as text: one section per question, from the JSON's records.

``training_step_summary`` is also the report's ``training_step_ms`` field.
"""


def _rows(records, figure):
    return [record for record in records if record["figure"] == figure]


def training_step_summary(records):
    """The quick profile's median training step in milliseconds, for each backend and XLA setting that
    ``records`` measured: ``{"tensorflow": {"xla": 50.6, "no_xla": 66.1}, "jax": {"xla": 88.0}}``."""
    summary = {}
    for record in _rows(records, "training_step"):
        setting = "xla" if record["jit_compile"] else "no_xla"
        summary.setdefault(record["backend"], {})[setting] = 1000 * record["seconds_per_step"]
    return summary


def format_table(report):
    """The report as plain text: one section per question."""
    records = report["records"]
    lines = [f"{report['backend']} on {report['device']['name']} ({report['device']['kind']}), "
             f"{report['dtype_policy']}, peak {report['peak_flops'] / 1e12:.2f} TFLOP/s ({report['peak_source']}); "
             f"load average {', '.join(f'{x:.1f}' for x in report['load_average'] or [])}"]

    steps = _rows(records, "training_step")
    if steps:
        lines += ["", f"Quick profile's training step (model.fit over CaptionBatches, batch "
                      f"{steps[0]['batch_size']}, {steps[0]['dtype_policy']}; median and best of "
                      f"{steps[0]['repeats']} x {steps[0]['steps']} steps, the settings in alternation; "
                      f"* = jit_compile=\"auto\")",
                  f"{'backend':<12}{'xla':>5}{'':>2}{'ms/step':>10}{'best':>8}{'images/s':>10}{'vs default':>12}"]
        for record in steps:
            default = next((r for r in steps if r["backend"] == record["backend"] and r["default"]), record)
            lines.append(f"{record['backend']:<12}{'on' if record['jit_compile'] else 'off':>5}"
                         f"{'*' if record['default'] else '':>2}{1000 * record['seconds_per_step']:>10.1f}"
                         f"{1000 * record['seconds_per_step_best']:>8.1f}{record['images_per_second']:>10.0f}"
                         f"{record['seconds_per_step'] / default['seconds_per_step']:>11.2f}x")

    pipelines = _rows(records, "input_pipeline")
    if pipelines:
        lines += ["", "Input pipeline (CaptionBatches[i]: pixels to float32, captions to tokens)",
                  f"{'config':<9}{'backend':<12}{'batch':>6}{'ms/batch':>10}{'images/s':>10}{'share of a step':>17}"]
        for record in pipelines:
            share = (f"{100 * record['share_of_step']:.1f}% of {1000 * record['seconds_per_step']:.0f} ms"
                     if "share_of_step" in record else "")
            lines.append(f"{record['config']:<9}{record['backend']:<12}{record['batch_size']:>6}"
                         f"{1000 * record['seconds_per_batch']:>10.2f}{record['images_per_second']:>10.0f}{share:>17}")

    for record in _rows(records, "feature_cache"):
        lines += ["", f"Feature cache: photos profile, {record['backbone']} frozen (random weights) at "
                      f"{record['image_size']} px = {record['num_patches']} patches x {record['feature_dim']}; decoder "
                      f"{record['decoder_layers']} x {record['model_dim']}, {record['num_heads']} heads, MLP "
                      f"{record['mlp_dim']}; batch {record['batch_size']}; {record['backend']}, XLA "
                      f"{'on' if record['jit_compile'] else 'off'}, {record['dtype_policy']}, {record['device']}",
                  f"  step on cached features  {record['seconds_per_step_cached']:9.3f} s  "
                  f"(median of {record['repeats']} x {record['steps']} steps)",
                  f"  step on images (ViT runs) {record['seconds_per_step_images']:8.3f} s  "
                  f"(median of {record['repeats']} x {record['image_steps']})   ratio "
                  f"{record['images_over_cached']:.1f}x "
                  f"(matmul FLOPs: {record['flops_images_over_cached']:.1f}x = ViT forward "
                  f"{record['backbone_flops_per_image'] / 1e9:.2f} + decoder training "
                  f"{record['decoder_training_flops_per_image'] / 1e9:.2f} GFLOPs per image over the latter)",
                  f"  features once: {1000 * record['feature_seconds_per_image']:.1f} ms per image",
                  f"  extrapolated to Flickr8k ({record['epoch_images']} images, {record['epoch_steps']} steps an "
                  f"epoch): epoch {record['epoch_seconds_cached']:.0f} s cached vs "
                  f"{record['epoch_seconds_images']:.0f} s on images; {record['epochs']} epochs: "
                  f"{record['feature_seconds']:.0f} s of features + {record['epochs']} x "
                  f"{record['epoch_seconds_cached']:.0f} s = {record['run_seconds_cached']:.0f} s vs "
                  f"{record['run_seconds_images']:.0f} s ({record['run_images_over_cached']:.1f}x)"]

    for record in _rows(records, "time_to_faithfulness"):
        target = f"{100 * record['target']:.0f}%"
        if record["reached"]:
            result = f"{target} reached after {record['seconds']:.0f} s of training (step {record['step']})"
        else:
            best = record["best"] or {"faithfulness": float("nan"), "seconds": float("nan"), "step": 0}
            result = (f"{target} not reached in {record['steps_trained']} steps; best "
                      f"{100 * best['faithfulness']:.1f}% after {best['seconds']:.0f} s (step {best['step']})")
        curve = ", ".join(f"{p['step']}: {100 * p['faithfulness']:.0f}% @ {p['seconds']:.0f}s" for p in record["curve"])
        lines += ["", f"Time to {target} faithfulness: quick profile ({record['summary']}; {record['backend']}, XLA "
                      f"{'on' if record['jit_compile'] else 'off'}), greedy captions of {record['val_scenes']} "
                      f"validation scenes every {record['every']} steps",
                  f"  {result}; data, model and first step {record['first_step_seconds'] or 0:.0f} s, "
                  f"evaluations {record['evaluation_seconds']:.0f} s (not counted)",
                  f"  curve (step: faithfulness @ training seconds): {curve}"]

    header = (f"{'figure':<15}{'config':<9}{'what':<15}{'batch':>6}{'xla':>5}{'s/step':>9}{'per s':>10}"
              f"{'MFU':>8}{'ratio':>8}")
    lines += ["", "minicap against the same model from stock Keras layers (MFU), and decoding", header]
    for r in records:
        if r["figure"] == "training":
            what, rate, ratio = r["model"], r["images_per_second"], r["minicap_over_stock"]
            xla, sec, mfu = "on" if r["jit_compile"] else "off", r["seconds_per_step"], f"{100 * r['mfu']:.1f}%"
        elif r["figure"] == "decoding":
            what = r["method"] + (f"-{r['beam_width']}" if r["method"] == "beam" else "") + (
                " cached" if r["cached"] else " naive")
            rate, ratio, xla, sec, mfu = r["captions_per_second"], r["cached_over_naive"], "fn", r["seconds"], ""
        else:
            continue
        ratio = "" if ratio is None else f"{ratio:.2f}x"
        lines.append(f"{r['figure']:<15}{r['config']:<9}{what:<15}{r['batch_size']:>6}{xla:>5}{sec:>9.4f}"
                     f"{rate:>10.1f}{mfu:>8}{ratio:>8}")
    lines += [f"{s['figure']:<15}{s['config']:<9}{s['reason']}" for s in report["skipped"]]
    return "\n".join(lines)
