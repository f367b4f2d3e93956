"""The short table printed after a run: one line per headline figure, then the targets."""

from __future__ import annotations

from collections.abc import Iterator

from benchmarks.measure import CONTAMINATION_CORES

Row = tuple[str, dict | None, str, str]  # figure, stats, unit, note


def _peak(result: dict) -> Iterator[Row]:
    for dtype in ("float32", "bfloat16"):
        entry = result.get(dtype, {})
        yield f"{dtype} matmul n={entry.get('n')}", entry.get("gflops"), "GFLOP/s", entry.get("skipped", "")


def _train_step(result: dict) -> Iterator[Row]:
    for label, net in result.get("nets", {}).items():
        for name, variant in net["variants"].items():
            notes = [f"{variant['gflops']['median']:.0f} GFLOP/s" if "gflops" in variant else variant["skipped"]]
            notes += [f"{value:.0%} of {key.split('_')[2]} peak" for key, value in variant.items()
                      if key.startswith("fraction_of_")]
            notes += [f"x{variant[key]:.2f} {key.removeprefix('speedup_').replace('_', ' ')}"
                      for key in ("speedup_vs_float32", "speedup_vs_no_xla") if key in variant]
            yield f"{label} {name}", variant.get("images_per_second"), "images/s", ", ".join(notes)
        if "top_ops" in net.get("op_breakdown", {}):
            breakdown = net["op_breakdown"]
            tops = ", ".join(f"{op['op']} {op['share']:.0%}" for op in breakdown["top_ops"][:4])
            yield f"{label} float32 kernel time", None, "", f"conv ops {breakdown['conv_share']:.0%}; {tops}"


def _input_stall(result: dict) -> Iterator[Row]:
    if "ratio" in result:
        note = (f"{result['pipeline_step_seconds']['median']:.3f} s vs "
                f"{result['in_memory_step_seconds']['median']:.3f} s per step")
        yield "pipeline / in-memory step", {"median": result["ratio"]}, "ratio", note
        yield "step through tf.data", result["pipeline_step_seconds"], "s", result["model"]


def _determinism(result: dict) -> Iterator[Row]:
    if "cost" in result:
        seconds = result["step_seconds"]
        yield "step, op determinism on", seconds["deterministic"], "s", (
            f"off: {seconds['nondeterministic']['median']:.3f} s, cost {result['cost']:+.1%}")


def _distribute(result: dict) -> Iterator[Row]:
    for count, entry in result.get("devices", {}).items():
        note = entry.get("skipped", "")
        if count == "2" and "speedup_2_vs_1" in result:
            note = f"x{result['speedup_2_vs_1']:.2f} vs 1; {result['note']}"
        yield f"mirrored, {count} {result['device']}", entry.get("images_per_second"), "images/s", note


def _augmentation(result: dict) -> Iterator[Row]:
    if "speedup" in result:
        yield "Keras-style (scipy per channel)", result["keras_style"]["images_per_second"], "images/s", ""
        yield "retinaseg.augment.warps", result["ours"]["images_per_second"], "images/s", f"x{result['speedup']:.1f}"


def _prepare(result: dict) -> Iterator[Row]:
    if "seconds" in result:
        width, height = result["size"]
        yield (f"{result['images']} images {width}x{height}", result["seconds"], "s",
               f"peak RSS {result['peak_rss_mib']['bound']:.0f} MiB (bound)")


def _inference(result: dict) -> Iterator[Row]:
    for key in ("training_size", "full_resolution"):
        entry = result.get(key, {})
        size = "x".join(map(str, entry.get("size", []))) or key
        yield f"predict {size}", entry.get("images_per_second"), "images/s", entry.get("skipped", "")


def _roofline(result: dict) -> Iterator[Row]:
    step, memory, epoch = result["train_step"], result["bandwidth"], result["pipeline_epoch"]
    peak = result["peak"]
    fractions = ", ".join(f"{step[key]:.0%} of {key.split('_')[2]} peak"
                          for key in step if key.startswith("fraction_of_"))
    yield "train step", step["images_per_second"], "images/s", f"{step['gflops']['median']:.0f} GFLOP/s, {fractions}"
    yield "memory bandwidth (triad)", memory["gbs"], "GB/s", (
        f"{memory['array_mib']:.0f} MiB arrays, {memory['threads']} threads")
    line = step["roofline"]
    yield "train step roofline bound", {"median": line["bound_images_per_second"]}, "images/s", (
        f"{line['binds']} binds ({peak['precision']} peak {peak['gflops']:.0f} GFLOP/s; "
        f"{line['arithmetic_intensity']:.0f} FLOP/B vs ridge {line['ridge_point']:.0f}); "
        f"step at {line['fraction_of_bound']:.0%}")
    allocated = step["allocated"]
    yield "train step bytes (analytic)", {"median": step["bytes"]["per_image"] / 1e6}, "MB/image", (
        f"profiled step allocated x{allocated['allocated_over_analytic_written']:.2f} the analytic writes")
    if "top_ops" in step["kernel_time"]:
        kernels = step["kernel_time"]
        tops = ", ".join(f"{op['op']} {op['share']:.0%}" for op in kernels["top_ops"][:4])
        yield "train step kernel time", None, "", f"conv ops {kernels['conv_share']:.0%}; {tops}"
    parts = epoch["overheads_seconds_per_epoch"]
    yield "epoch through train_task", epoch["images_per_second"], "images/s", (
        f"{epoch['fraction_of_bare_step']:.0%} of bare step; s/epoch: " + ", ".join(
            f"{name.replace('_', ' ')} {seconds:.2f}" for name, seconds in parts.items()))
    for key in ("training_size", "full_resolution"):
        entry = result["inference"][key]
        size = "x".join(map(str, entry.get("size", []))) or key
        note = entry.get("skipped") or (f"{entry['roofline']['fraction_of_bound']:.0%} of roofline bound "
                                        f"({entry['roofline']['binds']} binds)")
        yield f"predict {size}", entry.get("images_per_second"), "images/s", note


def _dvc_noop(result: dict) -> Iterator[Row]:
    yield "dvc repro (nothing to do)", result.get("repro_seconds"), "s", result.get("skipped", "")


ROWS = {"peak": _peak, "train_step": _train_step, "input_stall": _input_stall, "determinism": _determinism,
        "distribute": _distribute, "augmentation": _augmentation,
        "prepare": _prepare, "inference": _inference, "roofline": _roofline, "dvc_noop": _dvc_noop}


def _number(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def table(report: dict) -> str:
    lines = [f"{'section':<13}{'figure':<34}{'median':>8}  {'min..max (reps)':<20}{'unit':<10}note"]
    for name, result in report["sections"].items():
        if "error" in result:
            lines.append(f"{name:<13}ERROR {result['error']}")
            continue
        for figure, figures, unit, note in ROWS[name](result):
            median = _number(figures["median"]) if figures else "-"
            spread = (f"{_number(figures['min'])}..{_number(figures['max'])} ({figures['reps']})"
                      if figures and "reps" in figures else "")
            lines.append(f"{name:<13}{figure:<34}{median:>8}  {spread:<20}{unit:<10}{note}")
    lines.append("targets:")
    for goal in report["targets"]:
        verdict = {True: "PASS", False: "FAIL", None: "n/a "}[goal["pass"]]
        value = "-" if goal["value"] is None else _number(goal["value"])
        lines.append(f"  {verdict} {goal['name']}: {value} ({goal['limit']})")
    busy = {name: result["load"]["other_load_cores"] for name, result in report["sections"].items()
            if (result["load"]["other_load_cores"] or 0) > CONTAMINATION_CORES}
    if busy:
        cores = "; ".join(f"{name} {value:.2f}" for name, value in busy.items())
        lines.append(f"load: CONTAMINATED, cores used by other processes during {cores}")
    else:
        lines.append(f"load: no section saw other processes use more than {CONTAMINATION_CORES} cores")
    return "\n".join(lines)
