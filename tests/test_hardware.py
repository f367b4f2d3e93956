import os
import sys

import pytest

from retinaseg.core import stage
from retinaseg.core.errors import PipelineError
from retinaseg.training import hardware


def test_auto_precision_follows_native_bf16_support():
    assert hardware.resolve_precision("auto", flags={"avx2", "avx512_bf16"}, gpu=False) == "bfloat16"
    assert hardware.resolve_precision("auto", flags={"amx_bf16"}, gpu=False) == "bfloat16"
    assert hardware.resolve_precision("auto", flags={"avx2", "avx512f"}, gpu=False) == "float32"
    assert hardware.resolve_precision("auto", flags=set(), gpu=True) == "bfloat16"
    assert hardware.resolve_precision("float32", flags={"amx_bf16"}, gpu=True) == "float32"


def test_cpu_flags_reads_the_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512_bf16\n")
    assert hardware.cpu_flags(info) == {"fpu", "sse", "avx512_bf16"}
    assert hardware.cpu_flags(tmp_path / "missing") == set()


def test_configure_leaves_float32_where_bf16_is_emulated(monkeypatch):
    import keras

    monkeypatch.setattr(hardware, "cpu_flags", lambda cpuinfo=None: {"avx2"})
    monkeypatch.setattr(hardware, "has_gpu", lambda: False)
    try:
        assert hardware.configure("auto") == "float32"
        assert keras.mixed_precision.global_policy().name == "float32"
        assert hardware.configure("bfloat16") == "bfloat16"
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_stages_quiet_tensorflow_unless_the_user_chose_a_level(monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    stage.quiet_tensorflow()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    stage.run(lambda argv: None)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"


def test_stage_errors_are_one_line_and_exit_1(monkeypatch, capsys):
    def main(argv):
        assert argv == ["--flag"]
        raise PipelineError("params.yaml: train.lr = 2 is not allowed")

    monkeypatch.setattr(sys, "argv", ["stage", "--flag"])
    with pytest.raises(SystemExit) as exit_info:
        stage.run(main)
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == "error: params.yaml: train.lr = 2 is not allowed\n"
