"""Evaluation at the end of training: probes of the learned features beside two baselines.

The same linear probe and kNN classifier are fitted on the train split and scored on the test split for
three representations: the learned encoder's features, the raw pixels, and the features of the encoder
as initialised (same seed, no training). Learning is worth something only where it beats both.

Image-text runs (`evaluate_image_text`) are read as CLIP reads them (Radford et al. 2021): zero-shot
test accuracy with a prompt-template ensemble, image->text and text->image Recall@1/5/10 over every test
caption, and the same linear probe and kNN of the image tower's features.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from contrastive import eval as evaluation
from contrastive.data.augment import AugmentConfig, augment_views
from contrastive.data.image_text import KEYS as IMAGE_TEXT_KEYS
from contrastive.data.pipeline import InMemorySource, read_all
from contrastive.models.encoders import build_model
from contrastive.train.step import images_to_float, init_state, make_encode_fn

REPRESENTATIONS = ("learned", "random_init", "raw_pixels")
RECALL_KS = (1, 5, 10)


def _batched(fn, x: np.ndarray, batch_size: int) -> np.ndarray:
    """fn over rows of x, `batch_size` rows per call (the last call padded: one compilation)."""
    out = []
    for start in range(0, len(x), batch_size):
        chunk = x[start:start + batch_size]
        pad = batch_size - len(chunk)
        chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)]) if pad else chunk
        out.append(np.asarray(jax.device_get(fn(chunk)))[: batch_size - pad])
    return np.concatenate(out)


def _features(encode, params, model_state, images: np.ndarray, pixel_max: float, batch_size: int):
    return _batched(lambda chunk: encode(params, model_state, images_to_float(chunk, pixel_max)), images, batch_size)


def _probes(config, train_feats, train_labels, test_feats, test_labels) -> dict:
    tr, te = np.asarray(train_feats, np.float32), np.asarray(test_feats, np.float32)
    probe = evaluation.linear_probe(tr, train_labels, te, test_labels, seed=config.seed)
    knn = evaluation.knn_accuracy(tr, train_labels, te, test_labels, k=min(config.eval.knn_k, len(train_labels)),
                                  temperature=config.eval.knn_temperature)
    ridge = evaluation.ridge_probe(tr, train_labels, te, test_labels, seed=config.seed)
    return {"linear_probe": float(probe["accuracy"]), "knn": float(knn), "linear_probe_l2": float(probe["l2"]),
            "ridge_probe": float(ridge["accuracy"]),
            "mean_classifier": float(evaluation.mean_classifier_accuracy(tr, train_labels, te, test_labels)),
            "uniformity": float(evaluation.uniformity(te)), "tolerance": float(evaluation.tolerance(te, test_labels)),
            "feature_dim": int(tr.shape[1])}


def view_geometry(config, encode, state, images: np.ndarray, pixel_max: float, plot_path=None) -> dict:
    """Alignment of two augmented views of each test image (Wang & Isola 2020) and, with `plot_path`, the
    histograms of their positive (same image) and negative (different images) cosine similarities."""
    x = images_to_float(images, pixel_max)
    views = augment_views(jax.random.PRNGKey(config.seed), x, jnp.arange(len(x)),
                          AugmentConfig(**{**config.augment, "num_views": 2}))
    f1, f2 = (_features(encode, state.params, state.model_state, np.asarray(views[:, v]), 1.0,
                        config.eval.batch_size) for v in (0, 1))
    out = {"alignment": float(evaluation.alignment(f1, f2))}
    if plot_path is not None:
        pos, neg = evaluation.positive_negative_similarities(f1, f2)
        evaluation.similarity_histograms(pos, neg, plot_path, title="learned features, two views per test image")
        out["similarity_histograms"] = pathlib.Path(plot_path).name  # beside eval.json
    return out


def evaluate(config, graphdef, state, train_source, test_source, pixel_max: float, plot_path=None) -> dict:
    """{representation: {'linear_probe', 'knn', 'ridge_probe', 'mean_classifier' accuracies, 'uniformity',
    'tolerance'}} for the three representations, the probe settings, and the learned features' view
    `alignment` (plus a similarity-histogram PNG at `plot_path`)."""
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
        results[name] = _probes(config, feats[name][0], train["label"], feats[name][1], test["label"])
    results["learned"].update(view_geometry(config, encode, state, test["image"], pixel_max, plot_path))
    return results


def format_table(results: dict) -> str:
    rows = [f"{'features':<12} {'dim':>5} {'linear probe':>13} {'kNN (k=' + str(results['knn_k']) + ')':>12} "
            f"{'ridge':>8} {'mean cls':>9} {'uniformity':>11} {'tolerance':>10}"]
    for name in REPRESENTATIONS:
        r = results[name]
        rows.append(f"{name:<12} {r['feature_dim']:>5} {100 * r['linear_probe']:>12.2f}% {100 * r['knn']:>11.2f}% "
                    f"{100 * r['ridge_probe']:>7.2f}% {100 * r['mean_classifier']:>8.2f}% {r['uniformity']:>11.3f} "
                    f"{r['tolerance']:>10.3f}")
    if "alignment" in results["learned"]:
        rows.append(f"learned view alignment {results['learned']['alignment']:.3f}"
                    + (f"; similarity histograms in {results['learned']['similarity_histograms']}"
                       if "similarity_histograms" in results["learned"] else ""))
    rows.append(f"(train {results['num_train']} / test {results['num_test']} images)")
    return "\n".join(rows)


def evaluate_image_text(config, graphdef, state, train_source, test_source, tokenizer, classnames,
                        pixel_max: float) -> dict:
    """Zero-shot accuracy, retrieval Recall@K both ways, and probes of the image tower (eval.json)."""
    train, test = (s.arrays if isinstance(s, InMemorySource) else read_all(s, IMAGE_TEXT_KEYS)
                   for s in (train_source, test_source))
    bs = config.eval.batch_size

    @jax.jit
    def embed(params, model_state, images, tokens):
        model = nnx.merge(graphdef, params, model_state)
        return model.embed_image(images) if images is not None else model.embed_text(tokens)

    def images(x):
        return _batched(lambda c: embed(state.params, state.model_state, images_to_float(c, pixel_max), None), x, bs)

    def texts(tokens):
        return _batched(lambda c: embed(state.params, state.model_state, None, c), tokens, bs)

    image_emb = images(test["image"])
    real = np.arange(test["tokens"].shape[1])[None, :] < test["num_captions"][:, None]  # [N, K]
    text_to_image = np.nonzero(real)[0]
    text_emb = texts(test["tokens"][real])
    ks = tuple(k for k in RECALL_KS if k <= min(len(image_emb), len(text_emb)))  # a tiny test split has < 10
    results = {"num_train": int(len(train["image"])), "num_test": int(len(image_emb)),
               "num_test_captions": int(len(text_emb)),
               "retrieval": evaluation.image_text_retrieval(image_emb, text_emb, text_to_image=text_to_image, ks=ks)}
    if classnames:
        # A caption is a hit for any image of the class it names: the best the captions can tell apart.
        class_level = evaluation.retrieval_recall(text_emb, image_emb, query_ids=test["label"][text_to_image],
                                                  key_ids=test["label"], ks=ks)
        results["retrieval"].update({f"text_to_image_class/{k}": v for k, v in class_level.items()})
        class_emb = evaluation.class_embeddings_from_templates(
            lambda prompts: texts(tokenizer.encode(prompts)), classnames, list(config.eval.zero_shot_templates))
        results["zero_shot"] = evaluation.zero_shot_classify(image_emb, class_emb, test["label"])
        results["num_templates"] = len(config.eval.zero_shot_templates)
        encode = make_encode_fn(graphdef)
        feats = [_features(encode, state.params, state.model_state, x, pixel_max, bs)
                 for x in (train["image"], test["image"])]
        results["learned"] = _probes(config, feats[0], train["label"], feats[1], test["label"])
        results["knn_k"] = min(config.eval.knn_k, len(train["label"]))
    return results


def format_image_text_table(results: dict) -> str:
    r = results["retrieval"]
    rows = []
    if "zero_shot" in results:
        rows.append(f"zero-shot top-1 ({results['num_templates']} templates): {100 * results['zero_shot']:.2f}%")
    rows.append(f"{'retrieval':<22} {'R@1':>7} {'R@5':>7} {'R@10':>7}")
    for direction in ("image_to_text", "text_to_image", "text_to_image_class"):
        if f"{direction}/recall@1" in r:
            rows.append(f"{direction:<22} " + " ".join(
                f"{100 * r[f'{direction}/recall@{k}']:>6.2f}%" if f"{direction}/recall@{k}" in r else f"{'-':>7}"
                for k in RECALL_KS))
    if "learned" in results:
        lr = results["learned"]
        rows.append(f"image tower features ({lr['feature_dim']}-d): linear probe {100 * lr['linear_probe']:.2f}%, "
                    f"kNN (k={results['knn_k']}) {100 * lr['knn']:.2f}%")
    rows.append(f"(train {results['num_train']} / test {results['num_test']} images, "
                f"{results['num_test_captions']} test captions)")
    return "\n".join(rows)
