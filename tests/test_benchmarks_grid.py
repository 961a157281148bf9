import importlib.util
from pathlib import Path


def test_grid_benchmark_runs_tiny(capsys):
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "grid_speed.py"
    spec = importlib.util.spec_from_file_location("grid_speed", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    seconds = mod.main(["--profile", "smoke", "--n", "40", "--inits", "2", "--workers", "2"])
    assert len(seconds) == 3 and all(s > 0 for s in seconds.values())
    out = capsys.readouterr().out
    assert "speed-up" in out and "2 workers, shared features" in out and "features per run" in out
