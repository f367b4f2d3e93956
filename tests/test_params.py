import copy
from pathlib import Path

import pytest
import yaml

from retinaseg import params
from retinaseg.errors import PipelineError

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture
def defaults():
    return yaml.safe_load((PROJECT / "params.yaml").read_text())


def test_project_params_are_valid(defaults):
    assert params.validate(defaults) is defaults


@pytest.mark.parametrize("block, key, value, expected", [
    ("model", "depth", 9, "model.depth = 9 is not allowed; expected an integer from 2 to 6"),
    ("train", "loss", "foo", "train.loss = 'foo' is not allowed; expected dice | bce | dice_bce"),
    ("train", "mixed_precision", "float16", "train.mixed_precision = 'float16'"),
    ("prepare", "threshold", 1.5, "prepare.threshold = 1.5"),
    ("prepare", "train_ids", "0-27", "prepare.train_ids = '0-27'"),
    ("augment", "zoom", [1.0, 0.7], "augment.zoom"),
    ("model", "batch_norm", "yes", "model.batch_norm = 'yes' is not allowed; expected true | false"),
    ("transfer", "freeze_encoder_epochs", -1, "transfer.freeze_encoder_epochs = -1"),
    ("transfer", "init_from", "imagenet", "transfer.init_from = 'imagenet' is not a task; expected one of binary"),
])
def test_bad_value_names_key_and_allowed_values(defaults, block, key, value, expected):
    bad = copy.deepcopy(defaults)
    bad[block][key] = value
    with pytest.raises(PipelineError, match=expected.replace("|", r"\|").replace("[", r"\[")):
        params.validate(bad)


def test_unknown_key_lists_allowed_keys(defaults):
    bad = copy.deepcopy(defaults)
    bad["model"]["deph"] = 4
    with pytest.raises(PipelineError, match=r"unknown key 'model.deph'; allowed keys: depth, base_filters"):
        params.validate(bad)


def test_missing_key_and_unknown_block(defaults):
    bad = copy.deepcopy(defaults)
    del bad["train"]["lr"]
    with pytest.raises(PipelineError, match=r"missing key 'train.lr'"):
        params.validate(bad)
    bad = copy.deepcopy(defaults)
    bad["trian"] = {}
    with pytest.raises(PipelineError, match=r"unknown block 'trian'"):
        params.validate(bad)


def test_image_size_must_divide_by_two_to_the_depth(defaults):
    bad = copy.deepcopy(defaults)
    bad["prepare"]["image_size"] = 200
    bad["model"]["depth"] = 4
    with pytest.raises(PipelineError, match=r"prepare.image_size = 200 is not divisible by 2\^model.depth = 16"):
        params.validate(bad)
    bad["model"]["depth"] = 3
    params.validate(bad)


def test_categorical_loss_needs_several_classes(defaults):
    bad = copy.deepcopy(defaults)
    bad["train"]["loss"] = "cce"
    with pytest.raises(PipelineError, match=r"train.loss = 'cce' needs several classes but task 'binary'"):
        params.validate(bad)
    del bad["tasks"]["binary"]
    bad["transfer"]["init_from"] = "multiclass"
    params.validate(bad)


def test_tasks_name_known_lesion_types(defaults):
    bad = copy.deepcopy(defaults)
    bad["tasks"]["multiclass"]["red"] = ["hemorrhage"]
    with pytest.raises(PipelineError, match=r"tasks.multiclass.red = \['hemorrhage'\].*hardexudates"):
        params.validate(bad)


def test_load_reports_missing_file(tmp_path):
    with pytest.raises(PipelineError, match=r"params.yaml: not found"):
        params.load("train", tmp_path / "params.yaml")


@pytest.mark.parametrize("spec, expected", [("1-3", [1, 2, 3]), ("1-2,5", [1, 2, 5]), (4, [4]), ("official", None)])
def test_train_ids(spec, expected):
    assert params.train_ids(spec) == expected


def test_flatten():
    assert params.flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": 3}) == {"a.b": 1, "a.c.d": [1, 2], "e": 3}


def test_encoder_cannot_stay_frozen_for_every_epoch(defaults):
    bad = copy.deepcopy(defaults)
    bad["transfer"]["freeze_encoder_epochs"] = bad["train"]["epochs"]
    with pytest.raises(PipelineError, match=r"transfer.freeze_encoder_epochs = \d+ leaves no epoch"):
        params.validate(bad)
