import pytest

from benchmark_modules import load_benchmark


@pytest.mark.slow
def test_explain_benchmark_runs_tiny(capsys):
    mod = load_benchmark("explain_speed")
    times = mod.main(["--profile", "smoke", "--n", "6", "--threads", "1", "--inits", "random"])
    assert set(times) == {"monai import", "grad-cam only", "all CAMs", "profile"}
    assert all(wall > 0 and cpu >= 0 for wall, cpu in times.values())
    out = capsys.readouterr().out
    assert "added by the other methods" in out and "occlusion on 3 images" in out
