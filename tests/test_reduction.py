import numpy as np
import pandas as pd
import pytest

from ssl_lib.data.store import SliceRecord, write_store
from ssl_lib.reduction import reduce_indices, reduced_size, stop_reducing, stratified_order
from ssl_lib.tasks import TASKS, cv_splits, fold_of, task_splits


def _labels(counts, seed=0):
    y = np.repeat(np.arange(len(counts)), counts)
    return np.random.default_rng(seed).permutation(y)


@pytest.mark.parametrize("n, fractions, sizes", [
    (425, (0.75, 0.5, 0.25), (318, 212, 106)),  # the paper's Table 3 sizes
    (13952, (0.75, 0.5, 0.25, 0.1, 0.05), (10464, 6976, 3488, 1395, 697)),
    (145, (0.75,), (108,)),
])
def test_paper_sizes(n, fractions, sizes):
    assert tuple(reduced_size(n, f) for f in fractions) == sizes


def test_subsets_are_stratified_nested_and_seeded():
    y = _labels([150, 60, 30], seed=1)
    idx = np.arange(1000, 1000 + len(y))
    lab = dict(zip(idx, y))
    prev = set(idx)
    for f in (1.0, 0.75, 0.5, 0.25, 0.1, 0.05):
        sub = reduce_indices(idx, y, f, seed=3)
        assert len(sub) == reduced_size(len(y), f) and len(set(sub)) == len(sub)
        assert set(sub) <= prev  # nested
        prev = set(sub)
        got = np.bincount([lab[i] for i in sub], minlength=3)
        assert np.all(np.abs(got - f * np.array([150, 60, 30])) <= 1), (f, got)
    assert np.array_equal(reduce_indices(idx, y, 0.5, 3), reduce_indices(idx, y, 0.5, 3))
    assert not np.array_equal(reduce_indices(idx, y, 0.5, 3), reduce_indices(idx, y, 0.5, 4))
    assert not np.array_equal(reduce_indices(idx, y, 0.5, 3, fold=0), reduce_indices(idx, y, 0.5, 3, fold=1))
    assert np.array_equal(np.sort(stratified_order(y, 0)), np.arange(len(y)))
    with pytest.raises(ValueError, match="fraction"):
        reduce_indices(idx, y, 0.0, 0)


def test_stop_rule_ignores_random_init():
    rows = [("covid", "random", 0.5, 0.9), ("covid", "spark", 0.5, 0.6), ("covid", "spark", 0.5, 0.75),
            ("covid", "byol", 0.5, 0.69), ("covid", "byol", 1.0, 0.8)]
    res = pd.DataFrame(rows, columns=["task", "init", "fraction", "f1"])
    assert stop_reducing(res, "covid", 0.5)  # spark 0.675, byol 0.69: all below 0.7
    assert not stop_reducing(res, "covid", 1.0)
    assert not stop_reducing(res, "covid", 0.5, threshold=0.68)
    assert not stop_reducing(res, "organs", 0.5)  # no rows yet


def _store(tmp_path, given):
    rng = np.random.default_rng(0)
    recs = []
    for p in range(40):
        label = int(p % 3 == 0)
        split = ["train"] * 6 + ["val", "test"] if given else [""]
        for k in range(1 + p % 3):  # patients with 1-3 slices
            recs.append(SliceRecord(rng.integers(0, 255, (8, 8)).astype(np.uint8), f"pat{p}", label,
                                    split[p % len(split)], f"{p}_{k}"))
    return write_store(recs, tmp_path / ("given" if given else "cv"), size=8, name="t", task="binary",
                       class_names=["no hemorrhage", "hemorrhage"])


def test_no_patient_crosses_splits_or_cv_folds(tmp_path):
    store = _store(tmp_path, given=False)
    folds = cv_splits(store, TASKS["brain"])
    assert len(folds) == 5
    pats = store.patients
    tests = []
    for s in folds:
        sets = [set(pats[i]) for i in (s.train, s.val, s.test)]
        assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
        assert len(s.val) > 0 and len(set(s.train) | set(s.val) | set(s.test)) == len(store)
        tests.append(s.test)
        assert 0 < store.labels[s.test].mean() < 1  # stratified: both classes in every test fold
    assert np.array_equal(np.sort(np.concatenate(tests)), np.arange(len(store)))  # test folds partition
    assert task_splits(store, "brain", seed=7).fold == fold_of("brain", 7) == 2
    assert np.array_equal(task_splits(store, "brain", seed=2).test, folds[2].test)
    given = _store(tmp_path, given=True)
    s = task_splits(given, "covid")
    assert s.fold == -1 and set(given.patients[s.train]).isdisjoint(given.patients[s.test])


def test_paper_profile_stops_on_the_authors_f1():
    from ssl_lib.finetune import get_profile

    # OrganSMNIST: macro F1 below 0.7 for every method, the authors' micro F1 (f1_seed) above it
    rows = [("organs", init, 0.25, 0.62, 0.78) for init in ("byol", "spark")]
    res = pd.DataFrame(rows, columns=["task", "init", "fraction", "f1", "f1_seed"])
    prof = get_profile("paper")
    assert prof.stop_metric == "f1_seed" and prof.stop_f1 == 0.7
    assert not stop_reducing(res, "organs", 0.25, threshold=prof.stop_f1, metric=prof.stop_metric)  # the paper goes on
    assert stop_reducing(res, "organs", 0.25, threshold=prof.stop_f1, metric="f1")  # our F1 would stop here
