from benchmark_modules import load_benchmark


def test_finetune_benchmark_runs_tiny(capsys):
    mod = load_benchmark("finetune_speed")
    rates = mod.main(["--profile", "smoke", "--steps", "1", "--device", "cpu", "--n", "8", "--batch", "4"])
    assert len(rates) == 4 and all(r > 0 for r in rates.values())
    out = capsys.readouterr().out
    assert "vs plain" in out and "ours (in-memory store)" in out
