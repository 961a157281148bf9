import importlib.util
from pathlib import Path


def test_finetune_benchmark_runs_tiny(capsys):
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "finetune_speed.py"
    spec = importlib.util.spec_from_file_location("finetune_speed", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rates = mod.main(["--profile", "smoke", "--steps", "1", "--device", "cpu", "--n", "8", "--batch", "4"])
    assert len(rates) == 4 and all(r > 0 for r in rates.values())
    out = capsys.readouterr().out
    assert "vs plain" in out and "ours (in-memory store)" in out
