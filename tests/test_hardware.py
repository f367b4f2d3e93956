from retinaseg import hardware


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
