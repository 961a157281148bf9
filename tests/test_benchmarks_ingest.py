from benchmark_modules import load_benchmark


def test_ingest_benchmark_runs_at_smoke_size(capsys):
    rates = load_benchmark("ingest_speed").main(["--smoke"])
    assert rates["identical"] == 1.0 and rates["projected_16_core_min"] > 0
    assert all(v > 0 for k, v in rates.items())
    out = capsys.readouterr().out
    assert "| store, 2 workers |" in out and "projected for LIDC-IDRI (244,527 slices) on 16 cores" in out
