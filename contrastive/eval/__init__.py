"""Evaluations of frozen representations: probes, kNN, zero-shot, retrieval and geometry metrics.

Every function takes arrays (host or device) and returns Python numbers (or a dict of them); the
heavy lifting runs in jitted programs compiled once per input shape. Bad input raises ValueError
naming the offending argument.
"""

from contrastive.eval.geometry import (
    alignment,
    positive_negative_similarities,
    similarity_histograms,
    tolerance,
    uniformity,
)
from contrastive.eval.knn import knn_accuracy, knn_predict, knn_predict_streamed
from contrastive.eval.linear_probe import linear_probe
from contrastive.eval.mean_classifier import class_means, mean_classifier_accuracy, mean_classifier_predict
from contrastive.eval.retrieval import image_text_retrieval, positive_ranks, retrieval_recall
from contrastive.eval.ridge_probe import ridge_probe
from contrastive.eval.sgd_probe import minibatch_linear_probe
from contrastive.eval.zero_shot import class_embeddings_from_templates, zero_shot_classify, zero_shot_predict

__all__ = [
    "alignment",
    "class_embeddings_from_templates",
    "class_means",
    "image_text_retrieval",
    "knn_accuracy",
    "knn_predict",
    "knn_predict_streamed",
    "linear_probe",
    "mean_classifier_accuracy",
    "mean_classifier_predict",
    "minibatch_linear_probe",
    "positive_negative_similarities",
    "positive_ranks",
    "retrieval_recall",
    "ridge_probe",
    "similarity_histograms",
    "tolerance",
    "uniformity",
    "zero_shot_classify",
    "zero_shot_predict",
]
