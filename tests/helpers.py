"""Assertions and data shared by several test modules."""

import pytest

from retinaseg.core.errors import PipelineError
from retinaseg.core.params import PrepareParams
from retinaseg.fetch.synthetic.generator import generate
from retinaseg.prepare.sets import prepare_dataset

#: A lower core threshold than the pipeline's 0.75 keeps a few core pixels per class at 32 px.
CORE_THRESHOLD = 0.5


def one_line_error(call, *fragments: str) -> str:
    """Run ``call``; assert it raises a single-line PipelineError containing every fragment."""
    with pytest.raises(PipelineError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    return message


def generate_and_prepare(root, *, num_images, size, style, image_size, train_ids, tasks):
    """A synthetic set generated under ``root/raw`` and prepared into ``root/prepared``; its manifest."""
    generate(root / "raw", num_images=num_images, size=size, seed=0, style=style)
    params = PrepareParams(threshold=0.1, core_threshold=CORE_THRESHOLD, image_size=image_size, crop_to_fundus=True,
                           train_ids=train_ids)
    return prepare_dataset(root / "raw", root / "prepared", tasks=tasks, params=params, workers=1)


def eval_record(variant="binary", thresholds=None, n_images=2, **by_class):
    """An eval.json model with the given class scores (``by_class``) and placeholder rules and aggregates."""
    from retinaseg.core.outputs import EvalRecord

    thresholds = thresholds if thresholds is not None else dict.fromkeys(by_class, 0.5)
    by_class = by_class or {name: {} for name in thresholds}
    return EvalRecord(variant=variant, task=variant, thresholds=thresholds, threshold_source="validation",
                      operating_point="fp_per_image", target_fp_per_image=1.0, max_area_ratio=2.0, threshold_beta=1.0,
                      min_component_px=1, drop_on_optic_disc=False, pr_thresholds=101, core_threshold=CORE_THRESHOLD,
                      n_images=n_images, lesion_classes=list(by_class), froc_rule="", by_class=by_class, macro={},
                      micro={}, per_image=[])
