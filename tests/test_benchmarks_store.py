from benchmark_modules import load_benchmark


def test_store_benchmark_runs_tiny(capsys):
    mod = load_benchmark("store_read")
    rates = mod.main(["--n", "12", "--source-size", "48", "--size", "16", "--batch", "4"])
    assert len(rates) == 3 and all(r > 0 for r in rates.values())
    assert "store is" in capsys.readouterr().out
