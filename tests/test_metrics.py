import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from ssl_lib import metrics as M


def _rand(n, c, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    y[:c] = np.arange(c)
    p = rng.dirichlet(np.ones(c), n)
    return y, p


def test_binary_metrics_match_sklearn():
    y, p = _rand(60, 2)
    assert M.accuracy(y, p) == pytest.approx(accuracy_score(y, p.argmax(1)))
    assert M.auc(y, p) == pytest.approx(roc_auc_score(y, p[:, 1]))
    assert M.f1(y, p) == pytest.approx(f1_score(y, p.argmax(1), pos_label=1))


def test_multiclass_metrics_match_sklearn():
    y, p = _rand(120, 5, seed=1)
    assert M.auc(y, p) == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert M.auc(y, p) == pytest.approx(np.mean([roc_auc_score(y == k, p[:, k]) for k in range(5)]))
    assert M.f1(y, p) == pytest.approx(f1_score(y, p.argmax(1), average="macro"))
    # the authors' OrganSMNIST F1 is micro, which is the accuracy for single-label tasks
    assert M.f1_seed(y, p, "micro") == pytest.approx(M.accuracy(y, p))
    assert M.f1_seed(y, p, "micro") != pytest.approx(M.f1(y, p))


def test_hand_computed_binary_case_and_positive_class():
    y = np.array([1, 1, 0, 0])
    p = np.array([[0.2, 0.8], [0.6, 0.4], [0.9, 0.1], [0.7, 0.3]])  # predictions 1, 0, 0, 0
    assert M.accuracy(y, p) == pytest.approx(0.75)
    assert M.f1(y, p) == pytest.approx(2 / 3)  # finding: tp=1, fp=0, fn=1
    assert M.f1(y, p, pos_label=0) == pytest.approx(0.8)  # none: tp=2, fp=1, fn=0
    assert M.f1_seed(y, p, "negative_class") == pytest.approx(0.8)  # COVID code scores NonCOVID
    assert M.f1_seed(y, p, "same") == pytest.approx(2 / 3)
    # swap what the labels mean: the finding's F1 becomes the other class's F1
    assert M.f1(1 - y, p[:, ::-1]) == pytest.approx(0.8)
    y2, s = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
    assert M.auc(y2, np.c_[1 - s, s]) == pytest.approx(0.75)
    assert M.auc(1 - y2, np.c_[s, 1 - s]) == pytest.approx(0.75)


def test_compute_metrics_keys_and_single_class_auc_is_nan():
    y, p = _rand(30, 2, seed=3)
    out = M.compute_metrics(y, p, seed_variant="negative_class")
    assert set(out) == {"accuracy", "auc", "f1", "f1_seed"}
    assert np.isnan(M.auc(np.zeros(4, int), p[:4]))


def test_bad_input_is_one_clear_error():
    with pytest.raises(M.MetricError, match="probs must be"):
        M.accuracy([0, 1], np.ones((3, 2)))
    with pytest.raises(M.MetricError, match="labels must lie"):
        M.f1([0, 2], np.ones((2, 2)) / 2)
    with pytest.raises(M.MetricError, match="variant"):
        M.f1_seed([0, 1], np.eye(2), "macro")


def test_metric_definitions_table():
    t = M.metric_definitions()
    assert list(t["metric"]) == ["accuracy", "auc", "f1", "f1_seed"]
    assert t.shape == (4, 4)
    assert "NonCOVID" in t.loc[t["metric"] == "f1_seed", "binary tasks"].item()
