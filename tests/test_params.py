import copy
import math
import re
from pathlib import Path

import pytest
import yaml
from helpers import one_line_error
from pydantic import ValidationError

from retinaseg.core import params
from retinaseg.core.params import AugmentParams, DataParams, Params, PrepareParams
from retinaseg.core.tasks import Task

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture
def defaults():
    return yaml.safe_load((PROJECT / "params.yaml").read_text())


def rejected(defaults, block, key, value, *fragments):
    """Validate ``defaults`` with ``block.key`` set to ``value``; return the one-line error."""
    bad = copy.deepcopy(defaults)
    bad[block][key] = value
    return one_line_error(lambda: params.validate(bad), "params.yaml: ", *fragments)


def test_project_params_are_valid(defaults):
    loaded = params.validate(defaults)
    assert isinstance(loaded, Params)
    assert loaded.model.depth == defaults["model"]["depth"]
    assert loaded.augment.zoom == tuple(defaults["augment"]["zoom"])
    assert loaded.transfer.init_from == defaults["transfer"]["init_from"]
    assert params.load(PROJECT / "params.yaml") == loaded


def test_read_returns_the_plain_yaml(defaults):
    assert params.read(PROJECT / "params.yaml") == defaults


@pytest.mark.parametrize("block, key, value, expected", [
    ("model", "depth", 9, "model.depth = 9 is not allowed; expected an integer from 2 to 6"),
    ("train", "loss", "foo", "train.loss = 'foo' is not allowed; expected dice | bce | dice_bce"),
    ("train", "mixed_precision", "float16", "train.mixed_precision = 'float16'"),
    ("prepare", "threshold", 1.5, "prepare.threshold = 1.5"),
    ("prepare", "train_ids", "0-27", "prepare.train_ids = '0-27'"),
    ("prepare", "train_ids", "1-90", "prepare.train_ids = '1-90' is not allowed; expected 'official' or id ranges"),
    ("augment", "zoom", [1.0, 0.7], "augment.zoom"),
    ("model", "batch_norm", "yes", "model.batch_norm = 'yes' is not allowed; expected true | false"),
    ("transfer", "freeze_encoder_epochs", -1, "transfer.freeze_encoder_epochs = -1"),
    ("transfer", "init_from", "imagenet", "transfer.init_from = 'imagenet' is not a task; expected one of binary"),
    ("evaluate", "threshold", 2, "evaluate.threshold = 2 is not allowed; expected auto"),
    ("data", "source", " ", "data.source = ' ' is not allowed; expected synthetic | diaretdb1"),
])
def test_bad_value_names_key_and_allowed_values(defaults, block, key, value, expected):
    rejected(defaults, block, key, value, expected)


@pytest.mark.parametrize("key, value, allowed", [
    ("synthetic", "photo", "realistic | easy"),
    ("num_images", 1, "an integer from 2 to 89"),
    ("num_images", 90, "an integer from 2 to 89"),
    ("num_images", 0, "an integer from 2 to 89"),
    ("image_width", 16, "an integer from 32 to 6000"),
    ("image_height", 31, "an integer from 32 to 6000"),
    ("image_width", 6001, "an integer from 32 to 6000"),
])
def test_data_limits_of_the_synthetic_generator(defaults, key, value, allowed):
    """The generator no longer checks its arguments: the data block is where these limits live."""
    rejected(defaults, "data", key, value, f"data.{key} = {value!r} is not allowed; expected {allowed}")


@pytest.mark.parametrize("key, value", [("num_images", 2), ("num_images", 89), ("image_width", 32),
                                        ("image_height", 6000), ("synthetic", "easy")])
def test_data_limits_are_inclusive(defaults, key, value):
    good = copy.deepcopy(defaults)
    good["data"][key] = value
    assert getattr(params.validate(good).data, key) == value


@pytest.mark.parametrize("key, value, allowed", [
    ("copies", -1, "an integer from 0 to 100"),
    ("copies", 1.5, "an integer from 0 to 100"),
    ("copies", True, "an integer from 0 to 100"),
    ("seed", -1, "an integer from 0 to 2147483647"),
    ("zoom", [1.0, 0.7], "[min, max] with 0.1 <= min <= max <= 2"),
    ("zoom", [0.0, 1.0], "[min, max] with 0.1 <= min <= max <= 2"),
    ("zoom", [0.7, 2.5], "[min, max] with 0.1 <= min <= max <= 2"),
    ("zoom", [0.7], "[min, max] with 0.1 <= min <= max <= 2"),
    ("zoom", 0.8, "[min, max] with 0.1 <= min <= max <= 2"),
    ("brightness", 1.0, "a number from 0 to 0.99"),
    ("brightness", -0.1, "a number from 0 to 0.99"),
    ("contrast", 1.0, "a number from 0 to 0.99"),
    ("rotation_deg", -5.0, "a number from 0 to 180"),
    ("rotation_deg", 181, "a number from 0 to 180"),
    ("shift", 1.5, "a number from 0 to 0.5"),
    ("shift", 0.6, "a number from 0 to 0.5"),  # the old augment code allowed shift <= 1
    ("shear_deg", 90.0, "a number from 0 to 45"),
    ("shear_deg", 50, "a number from 0 to 45"),  # the old augment code allowed shear < 90
    ("shear_deg", math.nan, "a number from 0 to 45"),
    ("horizontal_flip", 1, "true | false"),
])
def test_augment_limits_are_checked_by_params(defaults, key, value, allowed):
    """augment() no longer checks its ranges: every bad range is refused here, naming the key."""
    rejected(defaults, "augment", key, value, f"augment.{key} = {value!r} is not allowed; expected {allowed}")


@pytest.mark.parametrize("update", [{"shift": 0.6}, {"shear_deg": 50.0}, {"zoom": (1.0, 0.7)}, {"copies": -1}])
def test_a_block_built_in_code_obeys_the_same_limits(defaults, update):
    """The limit lives on the field, so a block constructed directly is checked like one read from YAML."""
    fields = {**params.validate(defaults).augment.model_dump(), **update}
    with pytest.raises(ValidationError, match=next(iter(update))):
        AugmentParams(**fields)


@pytest.mark.parametrize("block, key, value", [
    ("train", "lr", "0.001"),
    ("train", "epochs", "15"),
    ("train", "epochs", 15.0),
    ("model", "depth", True),
    ("data", "seed", "0"),
    ("evaluate", "threshold", "0.5"),
    ("prepare", "crop_to_fundus", "true"),
    ("prepare", "train_ids", True),
])
def test_wrong_type_is_rejected_naming_the_key(defaults, block, key, value):
    """Values are not coerced: a quoted number or a bool for an integer is an error, not a silent conversion."""
    rejected(defaults, block, key, value, f"{block}.{key} = {value!r} is not allowed; expected ")


def test_unknown_key_lists_allowed_keys(defaults):
    bad = copy.deepcopy(defaults)
    bad["model"]["deph"] = 4
    one_line_error(lambda: params.validate(bad),
                   "unknown key 'model.deph'; allowed keys: depth, base_filters, dropout, batch_norm, upsampling")


@pytest.mark.parametrize("key, value, allowed", [
    ("distribute", "horovod", "none | mirrored | multi_worker"),
    ("distribute", None, "none | mirrored | multi_worker"),  # `distribute:` written without a value
    ("distribute", False, "none | mirrored | multi_worker"),
    ("cpu_devices", 0, "an integer from 1 to 64"),
    ("cpu_devices", 65, "an integer from 1 to 64"),
    ("cpu_devices", True, "an integer from 1 to 64"),
    ("cpu_devices", "2", "an integer from 1 to 64"),
])
def test_distribution_limits(defaults, key, value, allowed):
    rejected(defaults, "train", key, value, f"train.{key} = {value!r} is not allowed; expected {allowed}")


def test_training_is_on_one_device_unless_asked(defaults):
    """params.yaml says so, and a train block written before the keys existed means the same."""
    assert defaults["train"]["distribute"] == "none"
    train = params.validate(defaults).train
    assert (train.distribute, train.cpu_devices) == ("none", 2)
    del defaults["train"]["distribute"], defaults["train"]["cpu_devices"]
    assert params.validate(defaults).train == train
    for mode in ("mirrored", "multi_worker"):
        defaults["train"]["distribute"] = mode
        assert params.validate(defaults).train.distribute == mode


def test_missing_key_and_unknown_block(defaults):
    bad = copy.deepcopy(defaults)
    del bad["train"]["lr"]
    one_line_error(lambda: params.validate(bad), "missing key 'train.lr' (a number from 1e-07 to 1.0)")
    bad = copy.deepcopy(defaults)
    bad["trian"] = {}
    one_line_error(lambda: params.validate(bad), "unknown block 'trian'; allowed blocks: data, tasks, prepare")


def test_missing_or_malformed_block(defaults):
    bad = copy.deepcopy(defaults)
    del bad["model"]
    one_line_error(lambda: params.validate(bad), "missing block 'model' with keys depth, base_filters")
    bad = copy.deepcopy(defaults)
    bad["model"] = 4
    one_line_error(lambda: params.validate(bad), "'model' must be a mapping with keys depth, base_filters")


def test_errors_name_the_source_file(defaults, tmp_path):
    bad = copy.deepcopy(defaults)
    bad["model"]["depth"] = 9
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(bad))
    one_line_error(lambda: params.load(path), f"{path}: model.depth = 9")


def test_image_size_must_divide_by_two_to_the_depth(defaults):
    bad = copy.deepcopy(defaults)
    bad["prepare"]["image_size"] = 200
    bad["model"]["depth"] = 4
    one_line_error(lambda: params.validate(bad), "prepare.image_size = 200 is not divisible by 2^model.depth = 16")
    bad["model"]["depth"] = 3
    params.validate(bad)


def test_categorical_loss_needs_several_classes(defaults):
    bad = copy.deepcopy(defaults)
    bad["train"]["loss"] = "cce"
    one_line_error(lambda: params.validate(bad), "train.loss = 'cce' needs several classes but task 'binary'")
    del bad["tasks"]["binary"]
    bad["tasks"]["exudates"] = {"hard": ["hardexudates"], "soft": ["softexudates"]}
    bad["transfer"]["init_from"] = "exudates"
    params.validate(bad)


@pytest.mark.parametrize("key, value, expected", [
    ("task", "segmentation", "transfer.task = 'segmentation' is not a task; expected one of binary, multiclass"),
    ("task", "binary", "transfer.init_from = 'binary' is transfer.task, the task being trained; name another task"),
])
def test_transfer_names_two_different_tasks(defaults, key, value, expected):
    bad = copy.deepcopy(defaults)
    bad["transfer"][key] = value
    one_line_error(lambda: params.validate(bad), expected)


def test_variants_are_every_task_then_the_transferred_one(defaults):
    assert params.validate(defaults).variants == ["binary", "multiclass", "multiclass_transfer"]
    defaults["tasks"]["bright"] = {"bright": ["hardexudates", "softexudates"]}
    assert params.validate(defaults).variants == ["binary", "multiclass", "bright", "multiclass_transfer"]


def test_tasks_name_known_lesion_types(defaults):
    bad = copy.deepcopy(defaults)
    bad["tasks"]["multiclass"]["red"] = ["hemorrhage"]
    one_line_error(lambda: params.validate(bad), "tasks.multiclass.red = ['hemorrhage']; expected a list of "
                   "lesion types from hardexudates, softexudates, hemorrhages, redsmalldots")


@pytest.mark.parametrize("change, expected", [
    (lambda tasks: tasks.clear(), "'tasks' must map task names to {class: [lesion types]}"),
    (lambda tasks: tasks.update(binary={}), "tasks.binary must map class names to lists of lesion types"),
    (lambda tasks: tasks.update(binary=["hemorrhages"]), "tasks.binary must map class names"),
    (lambda tasks: tasks["multiclass"].update(background=["hemorrhages"]),
     "tasks.multiclass.background is reserved; the background plane is added automatically"),
    (lambda tasks: tasks["multiclass"].update(red="hemorrhages"), "tasks.multiclass.red = 'hemorrhages'; expected"),
    (lambda tasks: tasks["multiclass"].update(red=[]), "tasks.multiclass.red = []; expected a list of lesion types"),
])
def test_tasks_errors(defaults, change, expected):
    bad = copy.deepcopy(defaults)
    change(bad["tasks"])
    one_line_error(lambda: params.validate(bad), expected)


def test_tasks_must_be_a_mapping(defaults):
    bad = copy.deepcopy(defaults)
    bad["tasks"] = ["binary"]
    one_line_error(lambda: params.validate(bad), "'tasks' must map task names to {class: [lesion types]}")


def test_encoder_cannot_stay_frozen_for_every_epoch(defaults):
    bad = copy.deepcopy(defaults)
    bad["transfer"]["freeze_encoder_epochs"] = bad["train"]["epochs"]
    one_line_error(lambda: params.validate(bad), f"transfer.freeze_encoder_epochs = {bad['train']['epochs']} "
                   "leaves no epoch")


def test_load_reports_missing_file(tmp_path):
    one_line_error(lambda: params.load(tmp_path / "params.yaml"), f"{tmp_path / 'params.yaml'}: not found")


def test_load_reports_bad_yaml_and_a_file_that_is_no_mapping(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("model: [1,\n")
    one_line_error(lambda: params.load(path), f"{path}: not valid YAML")
    path.write_text("- 1\n")
    one_line_error(lambda: params.load(path), f"{path}: expected a mapping of blocks data, tasks, prepare")


def test_blocks_are_typed(defaults):
    loaded = params.load(PROJECT / "params.yaml")
    assert type(loaded.train.lr) is float and loaded.train.lr == defaults["train"]["lr"]
    assert type(loaded.train.epochs) is int and type(loaded.train.jit_compile) is bool
    assert type(loaded.augment.zoom) is tuple and all(type(z) is float for z in loaded.augment.zoom)
    assert loaded.augment.zoom == tuple(defaults["augment"]["zoom"])
    # an integer written for a float field is read as a float
    assert type(loaded.augment.rotation_deg) is float and loaded.augment.rotation_deg == defaults["augment"]["rotation_deg"]
    assert isinstance(loaded.data, DataParams) and isinstance(loaded.prepare, PrepareParams)
    assert loaded.tasks["multiclass"] == {name: tuple(lesions) for name, lesions in
                                          defaults["tasks"]["multiclass"].items()}


def test_blocks_are_frozen():
    loaded = params.load(PROJECT / "params.yaml")
    with pytest.raises(ValidationError, match="frozen"):
        loaded.train.lr = 0.1


def test_task_returns_the_named_task():
    loaded = params.load(PROJECT / "params.yaml")
    task = loaded.task("multiclass")
    assert isinstance(task, Task) and task.name == "multiclass"
    assert task.plane_names == ["background", *loaded.tasks["multiclass"]]
    one_line_error(lambda: loaded.task("ternary"), "no task 'ternary'", "known tasks: binary, multiclass")


@pytest.mark.parametrize("spec, expected", [("1-3", [1, 2, 3]), ("1-2,5", [1, 2, 5]), (4, [4]), ("official", None),
                                            ("3, 1-2", [1, 2, 3]), ("89", [89])])
def test_train_id_list(defaults, spec, expected):
    prepare = params.validate(defaults).prepare.model_copy(update={"train_ids": spec})
    assert prepare.train_id_list == expected


@pytest.mark.parametrize("text", ["", "0", "90", "3-1", "a", "-3", "1-90", "1,,2", None, True, 2.0,
                                  "1-"])
def test_parse_id_ranges_refuses_malformed_or_out_of_range(text):
    assert params.parse_id_ranges(text) is None


def test_as_written_keeps_values_as_the_file_writes_them(tmp_path, defaults):
    flat = params.as_written(("train", "augment"), "binary", PROJECT / "params.yaml")
    assert flat["train.lr"] == defaults["train"]["lr"]
    assert flat["augment.rotation_deg"] == defaults["augment"]["rotation_deg"]
    assert type(flat["augment.rotation_deg"]) is type(defaults["augment"]["rotation_deg"])
    assert flat["augment.zoom"] == defaults["augment"]["zoom"]
    assert flat["task.binary.hemorrhages"] == ["hemorrhages"]
    assert not any(key.startswith(("model.", "task.multiclass", "data.")) for key in flat)


def test_flatten():
    assert params.flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": 3}) == {"a.b": 1, "a.c.d": [1, 2], "e": 3}



def test_missing_tasks_block_says_what_tasks_must_be(defaults):
    bad = copy.deepcopy(defaults)
    del bad["tasks"]
    one_line_error(lambda: params.validate(bad), "tasks")


@pytest.mark.parametrize("change", [lambda tasks: tasks.update({1: {"red": ["hemorrhages"]}}),
                                    lambda tasks: tasks["multiclass"].update({True: ["hemorrhages"]})])
def test_a_task_or_class_name_that_yaml_reads_as_no_string_is_a_one_line_error(defaults, change):
    """YAML reads ``1:`` as an int and ``yes:``/``on:`` as a bool key."""
    bad = copy.deepcopy(defaults)
    change(bad["tasks"])
    one_line_error(lambda: params.validate(bad), "tasks.")


# --- Params as people write them -------------------------------------------------------------------------


def written(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def with_line(key, value):
    """The project's params.yaml with the (unique, two-space indented) line ``key:`` set to ``value``."""
    text = (PROJECT / "params.yaml").read_text()
    text, count = re.subn(rf"^  {key}: .*$", f"  {key}: {value}", text, flags=re.M)
    assert count == 1
    return text


def line_of(text, prefix, occurrence=0):
    return [number for number, line in enumerate(text.splitlines(), 1) if line.startswith(prefix)][occurrence]


@pytest.mark.parametrize("key, text, value", [("lr", "1e-4", 1e-4), ("lr", "1E-4", 1e-4), ("lr", "5e-06", 5e-6),
                                              ("lr", "1.0e-4", 1e-4), ("lr", "1e0", 1.0),
                                              ("rotation_deg", "1E+1", 10.0), ("dropout", ".5", 0.5)])
def test_a_number_written_with_an_exponent_is_a_number(tmp_path, key, text, value):
    """YAML 1.1 (PyYAML) reads 1e-4 as the text '1e-4'; papers and the tutorial write the rate so."""
    path = written(tmp_path, with_line(key, text))
    flat = params.flatten(params.read(path))
    name = next(name for name in flat if name.endswith(f".{key}"))
    assert flat[name] == value and type(flat[name]) is float
    block = name.split(".")[0]
    assert getattr(getattr(params.load(path), block), key) == value


@pytest.mark.parametrize("value", ["1e-4", "1e-5", "3E-6", "2.5e-5", "0.01"])
def test_a_rate_set_with_dvc_exp_run_is_read_as_dvc_reads_it(tmp_path, value):
    """``dvc exp run -S train.lr=1e-5`` writes ``lr: 1e-05`` (1e-4 it writes as 0.0001) with DVC's own code."""
    from dvc.utils.hydra import apply_overrides
    from dvc.utils.serialize import load_yaml
    path = written(tmp_path, (PROJECT / "params.yaml").read_text())
    apply_overrides(path, [f"train.lr={value}"])
    assert params.load(path).train.lr == float(value)
    assert params.read(path) == load_yaml(path)  # `dvc params diff` and `dvc exp show` see the same values


@pytest.mark.parametrize("text", ["1e-4", "1E+3", "1e4", "-1e-4", "+1e4", "1.e5", "1.0e-4", "1.0e4", "1_0e-4",
                                  "1.5e-05", ".5", "-.5", "+.5", ".5e-3", "1.", "10", "0.1", "-0", "1_000",
                                  "1e", "e4", ".5e3", "1e-4.5", "1.2.3", "0x1A", ".", "1-27", "2e", ".e1"])
def test_numbers_read_as_dvc_reads_them(tmp_path, text):
    """DVC reads params with ruamel's YAML 1.2; params.read agrees on every number form (and what is text)."""
    from dvc.utils.serialize import load_yaml
    path = written(tmp_path, f"v: {text}\n")
    ours, dvc = params.read(path)["v"], load_yaml(path)["v"]
    assert (ours, type(ours)) == (dvc, type(dvc))


def test_the_loader_leaves_pyyaml_safe_load_alone():
    assert yaml.safe_load("v: 1e-4") == {"v": "1e-4"}


def test_a_key_written_twice_names_the_key_and_both_lines(tmp_path):
    text = with_line("epochs", "15\n  lr: 0.01")
    path = written(tmp_path, text)
    first, second = line_of(text, "  lr:"), line_of(text, "  lr:", 1)
    one_line_error(lambda: params.load(path),
                   f"{path}: key 'train.lr' is written twice, on lines {first} and {second}; keep one")


def test_a_block_written_twice_names_the_block_and_both_lines(tmp_path):
    text = (PROJECT / "params.yaml").read_text() + "\ntrain:\n  lr: 0.01\n"
    path = written(tmp_path, text)
    first, second = line_of(text, "train:"), line_of(text, "train:", 1)
    one_line_error(lambda: params.load(path), f"{path}: block 'train' is written twice, on lines {first} and {second}")


@pytest.mark.parametrize("text, expected", [
    ("tasks:\n  binary:\n    red: [hemorrhages]\n    red: [redsmalldots]\n",
     "key 'tasks.binary.red' is written twice, on lines 3 and 4"),
    ("a:\n  - {x: 1, x: 2}\n", "key 'a[0].x' is written twice, on lines 2 and 2"),
    ("a: &one {x: 1}\nb:\n  <<: *one\n  x: 2\n  y: *one\n", None),  # a merge key overriding is no duplicate
    ("a: {x: 1, 'x': 2}\n", "key 'a.x' is written twice"),
    ("a: {1: 1, '1': 2}\n", None),  # an integer and a text key are two keys
])
def test_duplicate_keys_at_any_level(tmp_path, text, expected):
    path = written(tmp_path, text)
    if expected is None:
        params.read(path)
    else:
        one_line_error(lambda: params.read(path), f"{path}: {expected}")


@pytest.mark.parametrize("value", [0, 0.0, -0.1])
def test_prepare_threshold_must_be_above_zero(defaults, value):
    """binarize() counts confidence >= threshold as lesion, so 0 makes every pixel a lesion."""
    rejected(defaults, "prepare", "threshold", value,
             f"prepare.threshold = {value!r} is not allowed; expected a number above 0 up to 1")


@pytest.mark.parametrize("value", [1e-6, 0.5, 1, 1.0])
def test_prepare_threshold_up_to_one(defaults, value):
    good = copy.deepcopy(defaults)
    good["prepare"]["threshold"] = value
    assert params.validate(good).prepare.threshold == value


BAD_NAMES = {"my task": "my task", "1st": "1st", "_binary": "_binary", "-binary": "-binary", "a" * 41: "a" * 41,
             "bin/ary": "bin/ary", "bin.ary": "bin.ary", "binär": "binär", "a{b}": "a{b}",
             "": "''", "x\n": "'x\\n'", " x": "' x'"}  # name -> as the message shows it
GOOD_NAMES = ["a" * 40, "B", "bin-ary_2", "Binary"]


@pytest.mark.parametrize("name, shown", BAD_NAMES.items())
def test_a_task_name_must_be_safe_as_a_file_name(defaults, name, shown):
    bad = copy.deepcopy(defaults)
    bad["tasks"][name] = {"hemorrhages": ["hemorrhages"]}
    one_line_error(lambda: params.validate(bad), f"params.yaml: tasks.{shown}: a task name names files",
                   "letters, digits, _ and -, starting with a letter, at most 40 characters")


@pytest.mark.parametrize("name, shown", BAD_NAMES.items())
def test_a_class_name_must_be_safe_as_a_file_name(defaults, name, shown):
    bad = copy.deepcopy(defaults)
    bad["tasks"]["multiclass"][name] = ["hemorrhages"]
    one_line_error(lambda: params.validate(bad), f"params.yaml: tasks.multiclass.{shown}: a class name names files",
                   "letters, digits, _ and -, starting with a letter, at most 40 characters")


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_safe_task_and_class_names_are_accepted(defaults, name):
    good = copy.deepcopy(defaults)
    good["tasks"][name] = {name: ["hemorrhages"]}
    assert params.validate(good).task(name).lesion_names == [name]


#: The top-level keys of eval.json, beside which each class's scores are written under the class name.
EVAL_JSON_KEYS = ("macro", "micro", "per_image", "task", "variant", "thresholds", "threshold_source",
                  "operating_point", "target_fp_per_image", "max_area_ratio", "froc_rule", "threshold_beta", "min_component_px", "drop_on_optic_disc", "pr_thresholds", "core_threshold",
                  "n_images", "lesion_classes")


@pytest.mark.parametrize("name", EVAL_JSON_KEYS)
def test_a_class_name_must_not_clash_with_an_eval_json_key(defaults, name):
    bad = copy.deepcopy(defaults)
    bad["tasks"]["multiclass"][name] = ["hemorrhages"]
    one_line_error(lambda: params.validate(bad), f"params.yaml: tasks.multiclass.{name}: eval.json writes each "
                   f"class's scores under its name beside its own key '{name}', so choose another class name")


def test_the_reserved_class_names_are_the_keys_eval_json_writes():
    """Score a tiny random task and compare the summary's own keys with the names the eval.json model reserves."""
    import numpy as np

    from retinaseg.core.outputs import EvalRecord
    from retinaseg.evaluation.score import Scoring, score
    task = Task("multiclass", {"red": ("hemorrhages",), "bright": ("hardexudates",)})
    rng = np.random.default_rng(0)
    shape = (2, 32, 32, task.num_planes)
    reference = {"images": rng.integers(0, 255, (*shape[:3], 3), dtype=np.uint8), "fov": np.ones(shape[1:3], bool),
                 "ids": np.arange(1, 3), task.name: rng.random(shape) > 0.8,
                 f"core_{task.name}": rng.random(shape) > 0.9}
    scoring = Scoring.fixed(dict.fromkeys(task.lesion_names, 0.5), "params", pr_thresholds=11)
    summary, _, _ = score(reference, rng.random(shape).astype(np.float32), task, scoring, "v", 0.75)
    own_keys = set(summary.as_written()) - set(task.lesion_names)
    assert own_keys == set(EvalRecord.reserved_keys()) == set(EVAL_JSON_KEYS)
