"""The documentation: a short README, current figures rendered from the committed metrics, and links that resolve.

docs/results.md is written by ``make docs`` (``retinaseg.compare.docs``) from ``metrics/``; every
other page cites the current run's figures through it, so a page that differs from what the
metrics render is stale.
"""

import json
import re
from pathlib import Path

import pytest

from retinaseg.compare import docs
from retinaseg.core.errors import PipelineError

PROJECT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 200
PAGES = [PROJECT / "README.md", *sorted((PROJECT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def test_results_page_is_what_the_committed_metrics_render():
    rendered = docs.render(PROJECT)
    committed = (PROJECT / docs.RESULTS).read_text()
    assert committed == rendered, f"{docs.RESULTS} is out of date with metrics/: run `make docs` and commit it"


def test_readme_is_short():
    lines = len((PROJECT / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, (f"README.md has {lines} lines, at most {README_MAX_LINES}: "
                                       "move the detail into a page under docs/")


def prose(text: str) -> list[str]:
    """The lines of a markdown file outside fenced code blocks, with inline code spans removed."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(re.sub(r"`[^`]*`", "", line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: link text kept, lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a markdown file's headings; a repeated one gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found, fenced = set(), False
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = re.match(r"#{1,6} (.+?)[ #]*$", line)
        if match and not fenced:
            base = slug(match.group(1))
            found.add(f"{base}-{seen[base]}" if base in seen else base)
            seen[base] = seen.get(base, 0) + 1
    return found


def broken_links(page: Path) -> list[str]:
    broken = []
    for line in prose(page.read_text()):
        for target in LINK.findall(line):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                broken.append(f"{target}: no such file")
            elif anchor and (resolved.suffix != ".md" or anchor not in anchors(resolved)):
                broken.append(f"{target}: no heading with the anchor #{anchor}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=[str(page.relative_to(PROJECT)) for page in PAGES])
def test_every_relative_link_resolves(page):
    assert broken_links(page) == []


def test_slugs_are_githubs():
    assert slug("Lesion detection: experiments over seeds") == "lesion-detection-experiments-over-seeds"
    assert slug("Models that travel: the Model Registry") == "models-that-travel-the-model-registry"
    assert slug("Same inputs, same results") == "same-inputs-same-results"
    assert slug("What to train on: experiments (pixel scores, before FROC)") == \
        "what-to-train-on-experiments-pixel-scores-before-froc"


def test_a_broken_link_and_a_missing_anchor_are_found(tmp_path):
    (tmp_path / "other.md").write_text("# Title\n\n## A section\n\n## A section\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#a-section) [twice](other.md#a-section-1) [gone](missing.md) "
                    "[no anchor](other.md#nowhere) "
                    "`[code](missing.md)` [web](https://example.org)\n```\n[fenced](missing.md)\n```\n")
    assert broken_links(page) == ["missing.md: no such file", "other.md#nowhere: no heading with the anchor #nowhere"]


def metrics_tree(root: Path, bench: dict) -> None:
    """A minimal metrics/ folder: one model, its comparison row, and ``bench``."""
    (root / "metrics/eval/binary").mkdir(parents=True)
    (root / "metrics/train/binary").mkdir(parents=True)
    (root / "metrics/eval/binary/summary.json").write_text(json.dumps(
        {"binary": {"hemorrhages": {"cpm": 0.25, "dice": 0.5}, "found": 0.4, "fp": 3.0, "area": None}}))
    (root / "metrics/train/binary/train.json").write_text(json.dumps({"binary": {"best_val_dice": 0.6,
                                                                                 "train_s": 120.4}}))
    header = ("variant", *[name for name in docs.TEST_COLUMNS if name != "variant"], "parameters")
    row = ["binary", *(["0.1"] * (len(header) - 1))]
    (root / "metrics/comparison.md").write_text("# Test-split comparison\n\nData: synthetic.\n\n"
                                                + "\n".join(docs.table(header, [row])) + "\n\nRules:\n")
    (root / "metrics/bench.json").write_text(json.dumps(bench))


BENCH = {"created": "2026-01-02T00:00:00+00:00", "tiny": False, "contaminated": False, "wall_seconds": 120.0,
         "hardware": {"cpu": "CPU", "cores": 2, "flags": {"avx2": True}, "gpus": [], "tensorflow": "2",
                      "keras": "3"},
         "sections": {"dvc_noop": {"repro_seconds": {"median": 0.9}}},
         "targets": [{"name": "dvc repro no-op seconds", "value": 0.9, "limit": "<= 3", "pass": True}]}


def test_rendering_quotes_the_metrics_and_only_the_bench_sections_present(tmp_path):
    metrics_tree(tmp_path, BENCH)
    page = docs.render(tmp_path)
    assert "| binary | hemorrhages | 0.250 | 0.500 |" in page
    assert "| binary | 0.400 | 3.00 | n/a | 0.600 | 120 |" in page
    assert "| no-op `dvc repro` | 0.90 s |" in page and "| dvc repro no-op seconds | 0.9 | <= 3 | yes |" in page
    assert "Data: synthetic." in page
    assert "distribute" not in page and "determinism" not in page and "matmul peak" not in page


def test_rendering_adds_the_device_sections_when_bench_json_has_them(tmp_path):
    sections = {"determinism": {"model": "d4/16", "batch": 8, "cost": 0.05},
                "distribute": {"model": "d4/16", "global_batch": 8, "device": "logical CPU", "speedup_2_vs_1": 0.97,
                               "devices": {"1": {"images_per_second": {"median": 21.3}},
                                           "2": {"images_per_second": {"median": 20.7}}}},
                "other": {}}
    metrics_tree(tmp_path, {**BENCH, "sections": sections})
    page = docs.render(tmp_path)
    assert "| TensorFlow op determinism, extra step time | +5 % (d4/16, batch 8) |" in page
    assert ("| training under `train.distribute: mirrored`, 1 / 2 logical CPU devices | 21.3 / 20.7 images/s, x0.97"
            in page)
    assert "Also in bench.json, not rendered here: other." in page


def test_rendering_quotes_the_roofline_and_a_skipped_no_op(tmp_path):
    sections = {"dvc_noop": {"skipped": "pipeline not up to date"},
                "roofline": {"model": "d4/16", "peak": {"precision": "bfloat16", "gflops": 400.0},
                             "bandwidth": {"gbs": {"median": 30.0}},
                             "train_step": {"images_per_second": {"median": 11.0}, "gflops": {"median": 200.0},
                                            "roofline": {"bound_images_per_second": 22.0, "binds": "compute",
                                                         "arithmetic_intensity": 54.0, "ridge_point": 13.3,
                                                         "fraction_of_bound": 0.5}},
                             "pipeline_epoch": {"images_per_second": {"median": 8.8}, "fraction_of_bare_step": 0.8}}}
    metrics_tree(tmp_path, {**BENCH, "sections": sections})
    page = docs.render(tmp_path)
    assert "| no-op `dvc repro` | skipped: pipeline not up to date |" in page
    assert "| training step of params.yaml's model (d4/16) | 11.0 images/s, 200 GFLOP/s |" in page
    assert "22.0 images/s: compute binds (bfloat16 peak 400 GFLOP/s, triad 30 GB/s, 54 FLOP/B" in page
    assert "the step reaches 50 %" in page and "8.8 images/s, 80 % of the bare step" in page


def test_a_missing_column_of_the_comparison_is_one_line_naming_it(tmp_path):
    metrics_tree(tmp_path, BENCH)
    table = tmp_path / "metrics/comparison.md"
    table.write_text(table.read_text().replace("truth FP / image", "truth FPs"))
    with pytest.raises(PipelineError, match="no column 'truth FP / image'"):
        docs.render(tmp_path)
