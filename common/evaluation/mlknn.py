"""ML-kNN (Zhang & Zhou 2007, "ML-KNN: A lazy learning approach to multi-label learning", Pattern
Recognition 40(7), Sec. 3 and Fig. 1): the multi-label kNN of DINOv2-radiology (papers/004, Sec. 3.3.1, its
reference [55]).

With ``m`` training samples, ``k`` neighbours, smoothing ``s`` (the paper's ``s = 1``, Laplace smoothing) and
``C_i(l)`` the number of sample ``i``'s ``k`` nearest *other* training samples that carry label ``l``:

- prior (Fig. 1, steps 1-2): ``P(H1_l) = (s + sum_i y_il) / (2 s + m)``, ``P(H0_l) = 1 - P(H1_l)``;
- likelihood (steps 3-12): ``c_l[j] = #{i : y_il = 1, C_i(l) = j}``,
  ``c'_l[j] = #{i : y_il = 0, C_i(l) = j}``, ``P(E_j | H1_l) = (s + c_l[j]) / (s (k + 1) + sum_p c_l[p])``,
  the same with ``c'`` for ``H0_l``;
- test sample ``t`` with ``C_t(l)`` among its ``k`` nearest training samples (steps 13-18): the MAP decision
  ``y_t(l) = argmax_b P(H_b_l) P(E_{C_t(l)} | H_b_l)`` and the score (the label's posterior probability)
  ``r_t(l) = P(H1_l) P(E | H1_l) / sum_b P(H_b_l) P(E | H_b_l)``.

Neighbours are the most cosine-similar on l2-normalised features, the distance of the collection's kNN
probe (:func:`common.evaluation.probes.knn_predict`; the paper's Euclidean distance ranks l2-normalised
features the same way). scikit-learn has no ML-kNN (scikit-multilearn's is unmaintained), hence this one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def _normalised(feats, name: str) -> torch.Tensor:
    x = torch.as_tensor(feats, dtype=torch.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be (N, D), got shape {tuple(x.shape)}")
    return nn.functional.normalize(x, dim=1)


def nearest_neighbours(
    queries: torch.Tensor, train: torch.Tensor, k: int, chunk: int, exclude_self: bool = False
):
    """Yield ``(similarity, index)`` ``(n, k)`` for ``chunk`` queries at a time: the ``k`` training samples of
    highest cosine similarity (the features are l2-normalised); ``exclude_self`` (queries are the training
    samples) leaves each sample out of its own neighbours."""
    for start in range(0, queries.shape[0], chunk):
        similarity = queries[start : start + chunk] @ train.T
        if exclude_self:
            rows = torch.arange(similarity.shape[0])
            similarity[rows, rows + start] = float("-inf")
        yield similarity.topk(k, dim=1)


def neighbour_label_counts(
    queries: torch.Tensor, train: torch.Tensor, labels: torch.Tensor, k: int, exclude_self: bool, chunk: int
) -> torch.Tensor:
    """``(N_query, C)``: per label, how many of each query's ``k`` most cosine-similar training samples carry
    it (:func:`nearest_neighbours`)."""
    counts = [labels[index].sum(1) for _, index in nearest_neighbours(queries, train, k, chunk, exclude_self)]
    return torch.cat(counts).long()


@dataclass
class MLkNN:
    """A fitted ML-kNN: ``prior`` ``(C,)`` = ``P(H1_l)``, ``likelihood`` ``(2, C, k + 1)`` =
    ``P(E_j | H_b_l)`` at ``[b, l, j]``, and the l2-normalised training features and 0/1 labels."""

    k: int
    smoothing: float
    prior: torch.Tensor
    likelihood: torch.Tensor
    train: torch.Tensor
    labels: torch.Tensor
    chunk: int = 1024

    def posterior(self, test_feats) -> torch.Tensor:
        """``(N_test, C)`` posterior probabilities ``r_t(l)`` (float64), the ML-kNN score."""
        test = _normalised(test_feats, "test_feats")
        if test.shape[1] != self.train.shape[1]:
            raise ValueError(
                f"test features have D={test.shape[1]}, the training features D={self.train.shape[1]}"
            )
        counts = neighbour_label_counts(test, self.train, self.labels, self.k, False, self.chunk)
        label_index = torch.arange(counts.shape[1])
        positive = self.prior * self.likelihood[1, label_index, counts]
        negative = (1 - self.prior) * self.likelihood[0, label_index, counts]
        return positive / (positive + negative)

    def predict(self, test_feats) -> torch.Tensor:
        """``(N_test, C)`` 0/1 MAP decisions (a tie goes to ``H0``, the first hypothesis)."""
        return (self.posterior(test_feats) > 0.5).long()


def fit_mlknn(train_feats, train_labels, k: int = 10, smoothing: float = 1.0, chunk: int = 1024) -> MLkNN:
    """ML-kNN's priors and likelihoods from ``train_feats`` ``(N, D)`` and 0/1 ``train_labels`` ``(N, C)``."""
    train = _normalised(train_feats, "train_feats")
    labels = torch.as_tensor(train_labels)
    if labels.ndim != 2 or labels.shape[0] != train.shape[0] or not ((labels == 0) | (labels == 1)).all():
        raise ValueError(
            f"train_labels must be (N, C) 0/1 with N = {train.shape[0]} (the features), got shape "
            f"{tuple(labels.shape)}"
        )
    if not 1 <= k < train.shape[0]:
        raise ValueError(f"k must be in [1, {train.shape[0] - 1}] (the training set size - 1), got {k}")
    if smoothing <= 0:
        raise ValueError(f"smoothing must be > 0, got {smoothing}")
    labels = labels.to(torch.float64)
    m = train.shape[0]
    prior = (smoothing + labels.sum(0)) / (2 * smoothing + m)
    counts = neighbour_label_counts(train, train, labels, k, True, chunk)
    histogram = nn.functional.one_hot(counts, k + 1).to(torch.float64)  # (N, C, k + 1)
    c = torch.stack(
        [torch.einsum("nl,nlj->lj", 1 - labels, histogram), torch.einsum("nl,nlj->lj", labels, histogram)]
    )
    likelihood = (smoothing + c) / (smoothing * (k + 1) + c.sum(-1, keepdim=True))
    return MLkNN(k, smoothing, prior, likelihood, train, labels, chunk)


def mlknn_predict(
    train_feats, train_labels, test_feats, k: int = 10, smoothing: float = 1.0, chunk: int = 1024
) -> torch.Tensor:
    """ML-kNN scores ``(N_test, C)``: the posterior probability of each label (:class:`MLkNN`)."""
    return fit_mlknn(train_feats, train_labels, k, smoothing, chunk).posterior(test_feats)
