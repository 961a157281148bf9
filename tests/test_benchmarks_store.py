import importlib.util
from pathlib import Path


def test_store_benchmark_runs_tiny(capsys):
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "store_read.py"
    spec = importlib.util.spec_from_file_location("store_read", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rates = mod.main(["--n", "12", "--source-size", "48", "--size", "16", "--batch", "4"])
    assert len(rates) == 3 and all(r > 0 for r in rates.values())
    assert "store is" in capsys.readouterr().out
