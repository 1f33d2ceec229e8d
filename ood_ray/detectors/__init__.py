"""OOD detectors behind one contract (see :mod:`ood_ray.detectors.base`), registered explicitly."""

from ood_ray.detectors.base import Detector, NotFittedError, Registry
from ood_ray.detectors.clf_entropy import ClassifierEntropy
from ood_ray.detectors.energy import Energy
from ood_ray.detectors.ensemble import EnsembleEntropy, MutualInformation
from ood_ray.detectors.entropy import Entropy
from ood_ray.detectors.knn import KNN, KNNMean
from ood_ray.detectors.ash import ASH
from ood_ray.detectors.fdbd import FDBD
from ood_ray.detectors.fusion import CDFFusion
from ood_ray.detectors.gen import GEN
from ood_ray.detectors.mahalanobis import (
    Mahalanobis,
    MahalanobisPlusPlus,
    RelativeMahalanobis,
    RelativeMahalanobisPlusPlus,
)
from ood_ray.detectors.maxlogit import MaxLogit
from ood_ray.detectors.msp import MSP
from ood_ray.detectors.nnguide import NNGuide
from ood_ray.detectors.react import ReAct
from ood_ray.detectors.scale import SCALE
from ood_ray.detectors.vim import ViM

REGISTRY = Registry()
for _cls in (MSP, MaxLogit, Energy, Entropy, GEN, EnsembleEntropy, MutualInformation, ClassifierEntropy, KNN, KNNMean,
             Mahalanobis, RelativeMahalanobis, MahalanobisPlusPlus, RelativeMahalanobisPlusPlus, ReAct, ASH, SCALE, FDBD,
             ViM, NNGuide, CDFFusion):
    REGISTRY.register(_cls)

#: Per-model scores computed from one classifier's logits, in column order.
LOGIT_DETECTORS = ("msp", "maxlogit", "energy", "entropy", "gen")
#: Scores over all classifiers of the run (they must share a class space).
ENSEMBLE_DETECTORS = ("ensemble_entropy", "mutual_information")
#: Scores from the embeddings and the classifier's last linear layer (:mod:`ood_ray.detectors.head`).
HEAD_DETECTORS = ("react", "ash", "scale", "fdbd", "vim", "nnguide")
#: Scores fitted on labelled reference embeddings, then applied to every embedding.
FITTED_EMBEDDING_DETECTORS = ("clf_entropy", "mahalanobis", "rmd")

__all__ = ["ENSEMBLE_DETECTORS", "FITTED_EMBEDDING_DETECTORS", "HEAD_DETECTORS", "LOGIT_DETECTORS", "REGISTRY", "Detector", "NotFittedError", "Registry"]
