"""catsdogs info: versions and devices."""

import json

import cv2

from catsdogs import __version__
from catsdogs.cli import cli


def test_info_lists_versions_and_devices(runner, monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n")
    monkeypatch.setattr("catsdogs.backend.CPUINFO_FILE", cpuinfo)
    result = runner.invoke(cli, ["info", "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    assert facts["catsdogs"] == __version__ and facts["opencv"] == cv2.__version__
    assert facts["backend"] in ("tensorflow", "jax", "torch", "numpy")
    assert facts["keras"].startswith("3.") and facts["onnxruntime"]
    assert facts["devices"]  # GPU names, or ["CPU"]
    assert facts["cpu_bfloat16"] is True  # where train --precision bfloat16 is faster
    assert facts["cpu_amx"] is False  # where bfloat16 is fastest: AVX512_BF16 is not AMX
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512_bf16 amx_tile amx_bf16\n")
    assert json.loads(runner.invoke(cli, ["info", "--json"]).stdout)["cpu_amx"] is True
    lines = runner.invoke(cli, ["info"]).stdout
    assert "keras:" in lines and "devices:" in lines
