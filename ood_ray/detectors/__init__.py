"""OOD detectors behind one contract (see :mod:`ood_ray.detectors.base`), registered explicitly."""

from ood_ray.detectors.base import Detector, NotFittedError, Registry
from ood_ray.detectors.clf_entropy import ClassifierEntropy
from ood_ray.detectors.energy import Energy
from ood_ray.detectors.ensemble import EnsembleEntropy, MutualInformation
from ood_ray.detectors.entropy import Entropy
from ood_ray.detectors.knn import KNN, KNNMean
from ood_ray.detectors.mahalanobis import Mahalanobis, RelativeMahalanobis
from ood_ray.detectors.maxlogit import MaxLogit
from ood_ray.detectors.msp import MSP

REGISTRY = Registry()
for _cls in (MSP, MaxLogit, Energy, Entropy, EnsembleEntropy, MutualInformation, ClassifierEntropy, KNN, KNNMean,
             Mahalanobis, RelativeMahalanobis):
    REGISTRY.register(_cls)

#: Per-model scores computed from one classifier's logits, in column order.
LOGIT_DETECTORS = ("msp", "maxlogit", "energy", "entropy")
#: Scores over all classifiers of the run (they must share a class space).
ENSEMBLE_DETECTORS = ("ensemble_entropy", "mutual_information")
#: Scores fitted on labelled reference embeddings, then applied to every embedding.
FITTED_EMBEDDING_DETECTORS = ("clf_entropy", "mahalanobis", "rmd")

__all__ = ["ENSEMBLE_DETECTORS", "FITTED_EMBEDDING_DETECTORS", "LOGIT_DETECTORS", "REGISTRY", "Detector", "NotFittedError", "Registry"]
