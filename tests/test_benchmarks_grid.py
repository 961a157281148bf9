import pytest

from benchmark_modules import load_benchmark


@pytest.mark.slow
def test_grid_benchmark_runs_tiny(capsys):
    mod = load_benchmark("grid_speed")
    seconds = mod.main(["--profile", "smoke", "--n", "40", "--inits", "2", "--workers", "2"])
    assert len(seconds) == 3 and all(s > 0 for s in seconds.values())
    out = capsys.readouterr().out
    assert "speed-up" in out and "2 workers, shared features" in out and "features per run" in out
