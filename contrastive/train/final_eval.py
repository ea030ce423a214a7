"""Evaluation at the end of training: probes of the learned features beside two baselines.

The same linear probe and kNN classifier are fitted on the train split and scored on the test split for
three representations: the learned encoder's features, the raw pixels, and the features of the encoder
as initialised (same seed, no training). Learning is worth something only where it beats both.
"""

from __future__ import annotations

import jax
import numpy as np
import optax

from contrastive import eval as evaluation
from contrastive.data.pipeline import InMemorySource, read_all
from contrastive.models.encoders import build_model
from contrastive.train.step import images_to_float, init_state, make_encode_fn

REPRESENTATIONS = ("learned", "random_init", "raw_pixels")


def _features(encode, params, model_state, images: np.ndarray, pixel_max: float, batch_size: int):
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        pad = batch_size - len(chunk)  # pad so every call has the same shape: one compilation
        chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)]) if pad else chunk
        feats = encode(params, model_state, images_to_float(chunk, pixel_max))
        out.append(np.asarray(jax.device_get(feats))[: batch_size - pad])
    return np.concatenate(out)


def evaluate(config, graphdef, state, train_source, test_source, pixel_max: float) -> dict:
    """{representation: {'linear_probe': acc, 'knn': acc}} plus the probe settings used."""
    train, test = (s.arrays if isinstance(s, InMemorySource) else read_all(s) for s in (train_source, test_source))
    encode = make_encode_fn(graphdef)
    _, init = init_state(build_model(config.model, train["image"].shape[1:], seed=config.seed),
                         optax.identity(), config.seed)
    bs = config.eval.batch_size
    feats = {
        "learned": [_features(encode, state.params, state.model_state, x, pixel_max, bs)
                    for x in (train["image"], test["image"])],
        "random_init": [_features(encode, init.params, init.model_state, x, pixel_max, bs)
                        for x in (train["image"], test["image"])],
        "raw_pixels": [images_to_float(x, pixel_max).reshape(len(x), -1) for x in (train["image"], test["image"])],
    }
    k = min(config.eval.knn_k, len(train["label"]))
    results = {"knn_k": k, "knn_temperature": config.eval.knn_temperature,
               "num_train": len(train["label"]), "num_test": len(test["label"])}
    for name in REPRESENTATIONS:
        tr, te = (np.asarray(f, np.float32) for f in feats[name])
        probe = evaluation.linear_probe(tr, train["label"], te, test["label"], seed=config.seed)
        knn = evaluation.knn_accuracy(tr, train["label"], te, test["label"], k=k,
                                      temperature=config.eval.knn_temperature)
        results[name] = {"linear_probe": float(probe["accuracy"]), "knn": float(knn),
                         "linear_probe_l2": float(probe["l2"]), "feature_dim": int(tr.shape[1])}
    return results


def format_table(results: dict) -> str:
    rows = [f"{'features':<12} {'dim':>5} {'linear probe':>13} {'kNN (k=' + str(results['knn_k']) + ')':>12}"]
    for name in REPRESENTATIONS:
        r = results[name]
        rows.append(f"{name:<12} {r['feature_dim']:>5} {100 * r['linear_probe']:>12.2f}% {100 * r['knn']:>11.2f}%")
    rows.append(f"(train {results['num_train']} / test {results['num_test']} images)")
    return "\n".join(rows)
