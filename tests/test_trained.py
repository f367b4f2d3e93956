"""load_trained: the one loader of a trained model and its run.json."""

import json

import numpy as np
import pytest
from helpers import one_line_error

from retinaseg.core.params import ModelParams
from retinaseg.core.tasks import Task
from retinaseg.model.trained import is_mlflow_uri, load_trained
from retinaseg.model.unet import build_unet

TINY = ModelParams(depth=2, base_filters=4, dropout=0.5, batch_norm=True, upsampling="transpose")
MULTICLASS = Task("multiclass", {"red": ("hemorrhages", "redsmalldots"), "bright": ("hardexudates", "softexudates")})
RUN = {"task": "multiclass", "classes": ["background", "red", "bright"], "image_size": 32, "crop_to_fundus": False,
       "run_id": "0123456789abcdef0123456789abcdef", "variant": "multiclass"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny multi-class U-Net saved as training does, and its predictions on a fixed batch."""
    folder = tmp_path_factory.mktemp("models") / "multiclass"
    folder.mkdir()
    model = build_unet(32, MULTICLASS, TINY)
    model.save(folder / "model.keras")
    batch = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
    return folder, batch, model.predict(batch, verbose=0)


def with_run_json(saved, tmp_path, run):
    """A copy of the saved model folder with the given run.json (None: without one)."""
    folder = tmp_path / "variant"
    folder.mkdir()
    (folder / "model.keras").write_bytes((saved[0] / "model.keras").read_bytes())
    if run is not None:
        (folder / "run.json").write_text(json.dumps(run))
    return folder


def test_a_model_folder_gives_the_model_with_its_run_json(saved, tmp_path, capsys):
    folder = with_run_json(saved, tmp_path, RUN)
    trained = load_trained(folder)
    assert trained.task == Task.from_planes("multiclass", RUN["classes"])
    assert trained.task.plane_names == RUN["classes"] and trained.task.is_multiclass
    assert (trained.image_size, trained.crop_to_fundus, trained.location) == (32, False, str(folder))
    assert trained.run.as_written() == RUN and trained.require("run_id") == RUN["run_id"]
    np.testing.assert_allclose(trained.model.predict(saved[1], verbose=0), saved[2], atol=1e-6)
    assert "note:" not in capsys.readouterr().out


def test_a_model_file_reads_the_run_json_beside_it(saved, tmp_path):
    folder = with_run_json(saved, tmp_path, RUN)
    trained = load_trained(str(folder / "model.keras"))
    assert trained.run.as_written() == RUN and trained.location == str(folder / "model.keras")
    one_line_error(lambda: trained.require("val_ids"), str(folder / "model.keras"), "'val_ids'", "dvc repro")


@pytest.mark.parametrize("name", ["models/nope", "models/nope/model.keras"])
def test_a_missing_model_is_one_line_naming_the_path(tmp_path, name):
    one_line_error(lambda: load_trained(tmp_path / name), str(tmp_path / "models" / "nope"), "missing",
                   "models/<variant>", "runs:/")


def test_a_corrupt_model_file_is_one_line_naming_the_file(tmp_path):
    junk = tmp_path / "variant" / "model.keras"
    junk.parent.mkdir()
    junk.write_bytes(b"not a model")
    for spec in (junk, junk.parent):
        one_line_error(lambda: load_trained(spec), str(junk), "not a readable Keras model")


def test_a_corrupt_run_json_is_one_line_naming_it(saved, tmp_path):
    folder = with_run_json(saved, tmp_path, None)
    (folder / "run.json").write_text("{not json")
    one_line_error(lambda: load_trained(folder), str(folder / "run.json"), "not valid JSON")


def test_a_mistyped_run_json_is_one_line_naming_it(saved, tmp_path):
    folder = with_run_json(saved, tmp_path, {**RUN, "image_size": "32"})
    one_line_error(lambda: load_trained(folder), str(folder / "run.json"), "image_size = '32'", "dvc repro train@")


def test_without_run_json_the_settings_are_read_from_the_model_and_noted(saved, tmp_path, capsys):
    folder = with_run_json(saved, tmp_path, None)
    trained = load_trained(folder)
    assert trained.task.plane_names == ["background", "class1", "class2"] and trained.task.kind == "multiclass"
    assert (trained.image_size, trained.crop_to_fundus, trained.run.as_written()) == (32, True, {})
    out = capsys.readouterr().out
    assert out.startswith(f"note: no run.json found for {folder}; ") and out.count("\n") == 1
    assert "classes=['background', 'class1', 'class2']" in out and "image_size=32" in out
    one_line_error(lambda: trained.require("run_id"), str(folder), "'run_id'")


def test_a_run_json_missing_some_keys_notes_only_those(saved, tmp_path, capsys):
    folder = with_run_json(saved, tmp_path, {"task": "multiclass", "classes": RUN["classes"], "image_size": 32})
    trained = load_trained(folder)
    assert trained.task.lesion_names == ["red", "bright"] and trained.crop_to_fundus is True
    out = capsys.readouterr().out
    assert "lacks crop_to_fundus; using crop_to_fundus=True" in out and "classes=" not in out


@pytest.mark.parametrize("change, says", [
    ({"classes": ["hemorrhages"], "task": "binary"}, "1 classes at 32 px but the model has 3 planes at 32 px"),
    ({"image_size": 64}, "3 classes at 64 px but the model has 3 planes at 32 px"),
])
def test_a_run_json_that_disagrees_with_the_model_is_an_error(saved, tmp_path, change, says):
    folder = with_run_json(saved, tmp_path, {**RUN, **change})
    one_line_error(lambda: load_trained(folder), str(folder), says, "run.json")


def test_only_uris_go_to_mlflow():
    assert is_mlflow_uri("runs:/abc/model") and is_mlflow_uri("models:/seg/1") and is_mlflow_uri("s3://b/m")
    assert not is_mlflow_uri("models/binary") and not is_mlflow_uri("models/binary/model.keras")


def test_mlflow_runs_uri_loads_the_logged_model_and_its_run_json(saved, tmp_path, monkeypatch, capsys):
    import mlflow

    from retinaseg.tracking import mlflow_runs

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    folder = with_run_json(saved, tmp_path, RUN)
    model = load_trained(folder).model
    with mlflow.start_run(experiment_id=mlflow_runs.setup()) as run:
        mlflow.tensorflow.log_model(model, name="model", pip_requirements=[])
        mlflow.log_artifact(str(folder / "run.json"))
    uri = f"runs:/{run.info.run_id}/model"
    trained = load_trained(uri)
    assert trained.location == uri and trained.run.as_written() == RUN
    assert trained.task.lesion_names == ["red", "bright"]
    np.testing.assert_allclose(trained.model.predict(saved[1], verbose=0), saved[2], atol=1e-6)
    assert "note:" not in capsys.readouterr().out
    one_line_error(lambda: load_trained("runs:/0123456789abcdef0123456789abcdef/model"),
                   "runs:/0123456789abcdef0123456789abcdef/model", "cannot load it from", "mlflow ui")


def test_a_registered_model_carries_what_predict_needs_without_a_run_json(saved, tmp_path, monkeypatch, capsys):
    """Training logs classes, image size and crop as the model's metadata: the registered version alone suffices."""
    import mlflow

    from retinaseg.evaluation import registry
    from retinaseg.tracking import mlflow_runs

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    settings = {key: RUN[key] for key in ("task", "classes", "image_size", "crop_to_fundus")}
    with mlflow.start_run(experiment_id=mlflow_runs.setup()) as run:
        mlflow.tensorflow.log_model(load_trained(with_run_json(saved, tmp_path, RUN)).model, name="model",
                                    pip_requirements=[], metadata=settings)
    registry.register(run.info.run_id, "multiclass", "multiclass", 0.5)
    trained = load_trained("models:/retinaseg-multiclass@champion")
    assert trained.run.as_written() == settings and trained.task.lesion_names == ["red", "bright"]
    assert "note:" not in capsys.readouterr().out, "nothing had to be guessed"


def test_a_registry_alias_loads_the_champion_and_its_run_json(saved, tmp_path, monkeypatch):
    import mlflow

    from retinaseg.evaluation import registry
    from retinaseg.tracking import mlflow_runs

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    folder = with_run_json(saved, tmp_path, RUN)
    with mlflow.start_run(experiment_id=mlflow_runs.setup()) as run:
        mlflow.tensorflow.log_model(load_trained(folder).model, name="model", pip_requirements=[])
        mlflow.log_artifact(str(folder / "run.json"))
    version, champion = registry.register(run.info.run_id, "multiclass", "multiclass", 0.5)
    assert str(champion.version) == str(version.version) == "1"
    for uri in ("models:/retinaseg-multiclass@champion", "models:/retinaseg-multiclass/1"):
        trained = load_trained(uri)
        assert trained.location == uri and trained.run.as_written() == RUN
        np.testing.assert_allclose(trained.model.predict(saved[1], verbose=0), saved[2], atol=1e-6)
    one_line_error(lambda: load_trained("models:/retinaseg-multiclass@nope"), "models:/retinaseg-multiclass@nope",
                   "cannot load it from", "alias")


def test_mlflow_uri_without_a_store_creates_none(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    one_line_error(lambda: load_trained("runs:/abc/model"), "runs:/abc/model", f"{tmp_path}/mlflow.db",
                   "MLFLOW_TRACKING_URI")
    assert not (tmp_path / "mlflow.db").exists()
