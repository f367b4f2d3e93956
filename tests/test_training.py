import numpy as np
import pytest

from helpers import one_line_error
from retinaseg import training
from retinaseg.errors import PipelineError
from retinaseg.preprocess import augment_training_set, prepare_dataset
from retinaseg.synthetic import generate

AUGMENT = {"copies": 1, "seed": 0, "rotation_deg": 10, "shift": 0.05, "zoom": [0.9, 1.0], "shear_deg": 0,
           "horizontal_flip": True, "vertical_flip": False, "brightness": 0.0, "contrast": 0.0}
MODEL = {"depth": 2, "base_filters": 4, "dropout": 0.0, "batch_norm": True, "upsampling": "transpose"}
TASKS = {"binary": {"hemorrhages": ["hemorrhages"]},
         "multiclass": {"red": ["hemorrhages", "redsmalldots"], "bright": ["hardexudates", "softexudates"]}}
TRAIN = {"target": "mask", "loss": "dice", "lr": 0.001, "epochs": 1, "batch_size": 2, "seed": 0, "val_fraction": 0.25,
         "mixed_precision": "float32", "jit_compile": False, "threads": 0}


@pytest.fixture(scope="module")
def arrays(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    generate(root / "raw", num_images=6, size=(80, 62), seed=1)
    prepare_dataset(root / "raw", root / "prepared", tasks=TASKS,
                    threshold=0.1, image_size=16, crop_to_fundus=True, train_ids=[1, 2, 3, 4], workers=1)
    augment_training_set(root / "prepared", root / "augmented", AUGMENT)
    return root


def test_validation_ids_are_a_seeded_subset_of_training_ids():
    ids = np.arange(1, 28)
    held_out = training.validation_ids(ids, 0.15, seed=42)
    assert len(held_out) == 4 and set(held_out) <= set(ids)
    assert held_out.tolist() == training.validation_ids(ids, 0.15, seed=42).tolist()
    assert training.validation_ids(ids, 0.0, seed=42).size == 0


def test_nan_loss_stops_with_a_clear_message_and_no_outputs(arrays, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    make_dataset = training.make_dataset

    def poisoned(*args, **kwargs):
        return make_dataset(*args, **kwargs).map(lambda x, y: (x, y * np.nan))

    monkeypatch.setattr(training, "make_dataset", poisoned)
    with pytest.raises(PipelineError, match=r"train binary: the loss became NaN at epoch 1; lower train.lr"):
        training.train_task("binary", prepared_dir=arrays / "prepared", augmented_dir=arrays / "augmented",
                            model_dir=tmp_path / "models" / "binary", curve_path=tmp_path / "curve.tsv",
                            model_params=MODEL, train_params=TRAIN, logged_params={})
    assert list((tmp_path / "models").iterdir()) == [], "no model folder, not even a partial one"
    assert not list(tmp_path.glob("*.tsv")), "no training curve, not even a partial one"


def test_transfer_copies_the_binary_model_and_keeps_the_encoder_frozen(arrays, tmp_path, monkeypatch):
    import json

    import keras

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    common = {"prepared_dir": arrays / "prepared", "augmented_dir": arrays / "augmented", "model_params": MODEL,
              "train_params": TRAIN, "logged_params": {}}
    binary = training.train_task("binary", model_dir=tmp_path / "binary", curve_path=tmp_path / "b.tsv", **common)
    transfer = training.train_task("multiclass", model_dir=tmp_path / "transfer", curve_path=tmp_path / "t.tsv",
                                   variant="multiclass_transfer", init_dir=tmp_path / "binary",
                                   freeze_encoder_epochs=1, **common)
    assert transfer["init_from_run_id"] == binary["run_id"] and transfer["frozen_encoder_epochs"] == 1
    assert json.loads((tmp_path / "transfer" / "run.json").read_text())["classes"] == ["background", "red", "bright"]
    source = keras.saving.load_model(tmp_path / "binary" / "model.keras", compile=False)
    target = keras.saving.load_model(tmp_path / "transfer" / "model.keras", compile=False)
    for name in ("down0_conv1", "down1_conv2", "down0_bn1"):  # frozen for the only epoch: unchanged
        for new, old in zip(target.get_layer(name).get_weights(), source.get_layer(name).get_weights()):
            np.testing.assert_array_equal(new, old)
    decoder_new, decoder_old = (m.get_layer("up0_conv1").get_weights()[0] for m in (target, source))
    assert decoder_new.shape == decoder_old.shape and not np.array_equal(decoder_new, decoder_old)
    assert target.get_layer("probabilities").get_weights()[0].shape[-1] == 3


def test_transfer_from_a_missing_model_names_it(arrays, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    one_line_error(lambda: training.train_task(
        "multiclass", prepared_dir=arrays / "prepared", augmented_dir=arrays / "augmented",
        model_dir=tmp_path / "t", curve_path=tmp_path / "t.tsv", model_params=MODEL, train_params=TRAIN,
        logged_params={}, init_dir=tmp_path / "binary"), "binary/model.keras: missing", "dvc repro train@binary")


def test_confidence_target_trains_on_soft_planes(arrays, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    make_dataset, seen = training.make_dataset, []

    def recording(images, masks, *args, **kwargs):
        dataset = make_dataset(images, masks, *args, **kwargs)
        seen.append(np.concatenate([y.numpy() for _, y in dataset]))
        return dataset

    monkeypatch.setattr(training, "make_dataset", recording)
    summary = training.train_task("binary", prepared_dir=arrays / "prepared", augmented_dir=arrays / "augmented",
                                  model_dir=tmp_path / "soft", curve_path=tmp_path / "soft.tsv", model_params=MODEL,
                                  train_params={**TRAIN, "target": "confidence"}, logged_params={})
    targets = seen[0]
    assert 0 <= targets.min() and targets.max() <= 1
    assert np.any((targets > 0) & (targets < 1)), "soft values between none and full agreement"
    assert summary["epochs"] == 1 and (tmp_path / "soft" / "model.keras").exists()
