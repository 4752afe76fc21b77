"""ML-kNN (Zhang & Zhou 2007) against its formulas written out as loops, a hand-worked case, and its place as
the multi-label kNN of the probe workflow (DINOv2-radiology, papers/004)."""

from __future__ import annotations

import math

import pytest
import torch

from common.evaluation.mlknn import fit_mlknn, mlknn_predict
from common.evaluation.probes import knn_predict


def nearest(query: list[float], train: list[list[float]], k: int, skip: int | None = None) -> list[int]:
    """Indices of the k training rows of highest cosine similarity to ``query`` (``skip``: left out)."""

    def cosine(u, v):
        return sum(a * b for a, b in zip(u, v, strict=True)) / math.sqrt(
            sum(a * a for a in u) * sum(b * b for b in v)
        )

    order = sorted((i for i in range(len(train)) if i != skip), key=lambda i: -cosine(query, train[i]))
    return order[:k]


def mlknn_reference(train, labels, test, k, s=1.0):
    """The paper's Fig. 1, one label and one sample at a time: priors, frequency arrays c / c', likelihoods,
    then the posterior of each test label."""
    train, labels, test = train.tolist(), labels.tolist(), test.tolist()
    m, num_labels = len(train), len(labels[0])
    neighbours = [nearest(train[i], train, k, skip=i) for i in range(m)]
    scores = [[0.0] * num_labels for _ in test]
    for label in range(num_labels):
        p1 = (s + sum(y[label] for y in labels)) / (s * 2 + m)
        c, c_not = [0] * (k + 1), [0] * (k + 1)
        for i in range(m):
            delta = sum(labels[a][label] for a in neighbours[i])
            if labels[i][label] == 1:
                c[delta] += 1
            else:
                c_not[delta] += 1
        for t, query in enumerate(test):
            count = sum(labels[a][label] for a in nearest(query, train, k))
            e1 = (s + c[count]) / (s * (k + 1) + sum(c))
            e0 = (s + c_not[count]) / (s * (k + 1) + sum(c_not))
            scores[t][label] = p1 * e1 / (p1 * e1 + (1 - p1) * e0)
    return torch.tensor(scores, dtype=torch.float64)


@pytest.mark.parametrize("k,s", [(1, 1.0), (4, 1.0), (7, 0.5)])
def test_mlknn_equals_the_papers_formulas_as_loops(k, s):
    g = torch.Generator().manual_seed(k)
    train, test = torch.randn(30, 5, generator=g), torch.randn(9, 5, generator=g)
    labels = torch.randint(0, 2, (30, 4), generator=g)
    labels[:, 3] = 0  # a label no training sample carries
    scores = mlknn_predict(train, labels, test, k=k, smoothing=s)
    assert torch.allclose(scores, mlknn_reference(train, labels, test, k, s), atol=1e-12)
    model = fit_mlknn(train, labels, k, s, chunk=7)  # chunked neighbour search, same model
    assert torch.allclose(model.posterior(test), scores, atol=1e-12)
    assert torch.equal(model.predict(test), (scores > 0.5).long())
    assert torch.allclose(model.likelihood.sum(-1), torch.ones(2, 4, dtype=torch.float64))


def test_mlknn_hand_case():
    """Four points, one label, k = 1, s = 1. Nearest other sample: a<->b, c<->d; labels a, b, d = 1, c = 0.
    C: a 1, b 1, c 1 (d), d 0 (c). Prior P(H1) = (1 + 3) / (2 + 4) = 2/3. Label-1 samples have C = 1, 1, 0:
    P(E0|H1) = (1 + 1) / (2 + 3) = 2/5, P(E1|H1) = 3/5; the label-0 sample has C = 1: P(E0|H0) = 1/3,
    P(E1|H0) = 2/3. A query next to a (C = 1): (2/3 3/5) / (2/3 3/5 + 1/3 2/3) = 9/14; next to c (C = 0):
    (2/3 2/5) / (2/3 2/5 + 1/3 1/3) = 12/17, still present (the prior outweighs the one negative
    neighbour, where a vote would say absent)."""
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.0], [-0.9, -0.1]])
    labels = torch.tensor([[1], [1], [0], [1]])
    query = torch.tensor([[1.0, 0.05], [-1.0, 0.02]])
    model = fit_mlknn(train, labels, k=1)
    assert model.prior.item() == pytest.approx(2 / 3)
    assert torch.allclose(
        model.likelihood[:, 0], torch.tensor([[1 / 3, 2 / 3], [2 / 5, 3 / 5]], dtype=torch.float64)
    )
    assert torch.allclose(model.posterior(query), torch.tensor([[9 / 14], [12 / 17]], dtype=torch.float64))
    assert model.predict(query).tolist() == [[1], [1]]
    vote = knn_predict(train, labels, query, k=1, multilabel="weighted")
    assert vote.tolist() == [[1.0], [0.0]]


def test_knn_predict_uses_mlknn_for_multilabel_and_keeps_multiclass():
    g = torch.Generator().manual_seed(3)
    train, test = torch.randn(20, 4, generator=g), torch.randn(5, 4, generator=g)
    labels = torch.randint(0, 2, (20, 3), generator=g)
    assert torch.allclose(
        knn_predict(train, labels, test, k=3), mlknn_predict(train, labels, test, k=3).float()
    )
    classes = labels[:, 0]
    assert torch.equal(
        knn_predict(train, classes, test, k=3), knn_predict(train, classes, test, k=3, multilabel="weighted")
    )
    with pytest.raises(ValueError, match="multilabel must be one of"):
        knn_predict(train, labels, test, k=3, multilabel="vote")


def test_mlknn_errors():
    x = torch.randn(5, 3)
    y = torch.tensor([[0, 1]] * 5)
    with pytest.raises(ValueError, match=r"k must be in \[1, 4\]"):
        fit_mlknn(x, y, k=5)
    with pytest.raises(ValueError, match="0/1"):
        fit_mlknn(x, y * 2, k=1)
    with pytest.raises(ValueError, match="smoothing"):
        fit_mlknn(x, y, k=1, smoothing=0)
    with pytest.raises(ValueError, match="D=2"):
        fit_mlknn(x, y, k=1).posterior(torch.randn(2, 2))
