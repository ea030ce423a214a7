"""Every probe of one representation's frozen features, with the linear solver and the kNN bank chosen by size.

`probe_features` is what the `probes` evaluator (contrastive.train.evaluators) runs for each representation:
the linear probe (full-batch L-BFGS, `linear_probe`, or mini-batch Adam, `sgd_probe`), weighted kNN (the
bank on the device, or streamed in blocks), the ridge probe, the class-mean classifier, and the uniformity
and tolerance of the test features.
"""

from __future__ import annotations

import numpy as np

from contrastive.eval import _common, sgd_probe
from contrastive.eval.geometry import tolerance, uniformity
from contrastive.eval.knn import knn_accuracy
from contrastive.eval.linear_probe import DEFAULT_L2_GRID, linear_probe
from contrastive.eval.mean_classifier import mean_classifier_accuracy
from contrastive.eval.ridge_probe import ridge_probe

LINEAR_SOLVERS = ("auto", "lbfgs", "minibatch")
# N x D of the train features above which `auto` fits the linear probe by mini-batches: every digits
# encoder (at most 1,352 x 2,048 = 2.8M) stays on the full-batch L-BFGS path, a CIFAR or ImageNet train
# split does not (on the 2-core CPU a 40,000 x 64, 50-class problem took 372 s by L-BFGS, 9 s by mini-batches).
FULL_BATCH_MAX_ELEMENTS = 4_000_000
KNN_BANK_BLOCK = 65536  # train rows per kNN bank block; a smaller train split is one block, on the device
PROBE_OPTIONS = {"knn_k": 200, "knn_temperature": 0.07,
                 "knn_bank_block": KNN_BANK_BLOCK, "knn_query_block": 256, "linear_solver": "auto",
                 "full_batch_max_elements": FULL_BATCH_MAX_ELEMENTS, "minibatch_size": sgd_probe.DEFAULT_BATCH_SIZE,
                 "minibatch_epochs": sgd_probe.DEFAULT_EPOCHS,
                 "minibatch_learning_rate": sgd_probe.DEFAULT_LEARNING_RATE, "block_rows": _common.BLOCK_ROWS,
                 "linear_probe_l2_grid": DEFAULT_L2_GRID}


def probe_features(seed: int, train_feats, train_labels, test_feats, test_labels, *, knn_k: int,
                   knn_temperature: float, **options) -> dict:
    """Every probe of one representation's features, fitted on train and scored on test.

    `options`: the other `PROBE_OPTIONS` (defaults where absent). The linear probe is `linear_probe`'s
    full-batch L-BFGS (`linear_solver='lbfgs'`) or `sgd_probe.minibatch_linear_probe` ('minibatch'), the
    same objective and L2 choice (the best of `linear_probe_l2_grid` on a held-out part of train; one value
    is used directly, as a paper's fixed penalty); 'auto' takes mini-batches when N x D of the train features exceeds
    `full_batch_max_elements`. kNN compares `knn_query_block` test rows at a time with the bank, sent to
    the device in blocks of `knn_bank_block` train rows when there are more (0: always the whole bank).
    The ridge probe and the mean classifier accumulate their sums over blocks of `block_rows` rows when
    a split has more (a smaller one is one whole-array program, as before).

    Memory at ImageNet scale (1.28M x 2048 float32 train features: 10.5 GB on the host, 0.4 GB for 50k
    test rows): the mini-batch probe and the streamed kNN hold on the device what their docstrings say
    (~0.3 GB and ~1.1 GB); the ridge probe one block of 65,536 rows (0.5 GB) beside its 2 x D x D Grams
    (34 MB), the mean classifier one block and the C x D class sums; tolerance takes the whole test
    features onto the device and uniformity O(1024 x N_test). Train features that do not fit host memory
    are not supported.
    """
    o = {**PROBE_OPTIONS, **options}
    tr, te = np.asarray(train_feats, np.float32), np.asarray(test_feats, np.float32)
    solver = o["linear_solver"]
    if solver == "auto":
        solver = "minibatch" if tr.size > o["full_batch_max_elements"] else "lbfgs"
    if solver == "minibatch":
        probe = sgd_probe.minibatch_linear_probe(tr, train_labels, te, test_labels, seed=seed,
                                                 batch_size=o["minibatch_size"], epochs=o["minibatch_epochs"],
                                                 learning_rate=o["minibatch_learning_rate"],
                                                 l2_grid=tuple(o["linear_probe_l2_grid"]))
    else:
        probe = linear_probe(tr, train_labels, te, test_labels, seed=seed, l2_grid=tuple(o["linear_probe_l2_grid"]))
    knn = knn_accuracy(tr, train_labels, te, test_labels, k=knn_k, temperature=knn_temperature,
                       batch_size=o["knn_query_block"], bank_block=o["knn_bank_block"])
    ridge = ridge_probe(tr, train_labels, te, test_labels, seed=seed, block_rows=o["block_rows"])
    return {"linear_probe": float(probe["accuracy"]), "knn": float(knn), "linear_probe_l2": float(probe["l2"]),
            "ridge_probe": float(ridge["accuracy"]),
            "mean_classifier": float(mean_classifier_accuracy(tr, train_labels, te, test_labels,
                                                              block_rows=o["block_rows"])),
            "uniformity": float(uniformity(te)), "tolerance": float(tolerance(te, test_labels)),
            "feature_dim": int(tr.shape[1]), "linear_solver": solver}
