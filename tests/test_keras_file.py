"""keras_file: a saved model rewritten so that its bytes depend on the model alone, and loading as before."""

import json
import zipfile

import keras
import numpy as np

from retinaseg.model.keras_file import (
    ZIP_EPOCH,
    make_reproducible,
    renumber_shared_objects,
)


def small_model():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(2, 3, padding="same")(inputs)
    return keras.Model(inputs, keras.layers.BatchNormalization()(x))


def test_the_same_weights_saved_twice_give_the_same_bytes_and_load_alike(tmp_path):
    keras.utils.set_random_seed(0)
    model = small_model()
    first, second = tmp_path / "first.keras", tmp_path / "second.keras"
    model.save(first)
    with zipfile.ZipFile(first) as saved:  # what differs between saves without the rewrite
        assert "date_saved" in json.loads(saved.read("metadata.json"))
    model.save(second)
    for path in (first, second):
        make_reproducible(path)
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as rewritten:
        assert {info.date_time for info in rewritten.infolist()} == {ZIP_EPOCH}
        assert "date_saved" not in json.loads(rewritten.read("metadata.json"))
    sample = np.random.default_rng(0).random((1, 8, 8, 3), dtype=np.float32)
    np.testing.assert_array_equal(keras.saving.load_model(first).predict(sample, verbose=0),
                                  model.predict(sample, verbose=0))
    assert not list(tmp_path.glob(".*partial*")), "rewritten in place, atomically"


def test_shared_objects_are_numbered_by_first_appearance():
    config = b'{"a": {"shared_object_id": 140001}, "b": {"shared_object_id": 99}, "c": {"shared_object_id": 140001}}'
    assert renumber_shared_objects(config) == \
        b'{"a": {"shared_object_id": 1}, "b": {"shared_object_id": 2}, "c": {"shared_object_id": 1}}'
