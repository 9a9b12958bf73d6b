"""Matryoshka sparse autoencoders: math, file formats, feature catalogue, steering."""

from maira_sae.sae.catalogue import FeatureCatalogue, FeatureInterpretation
from maira_sae.sae.formats import SaeFormatError, load_sae, write_dictionary_learning
from maira_sae.sae.interventions import Intervention, SteeringMode
from maira_sae.sae.model import FeatureOutOfRange, MatryoshkaSAE, SaeMetadata
from maira_sae.sae.steering import apply_interventions, validate_intervention

__all__ = [
    "FeatureCatalogue",
    "FeatureInterpretation",
    "FeatureOutOfRange",
    "Intervention",
    "MatryoshkaSAE",
    "SaeFormatError",
    "SaeMetadata",
    "SteeringMode",
    "apply_interventions",
    "load_sae",
    "validate_intervention",
    "write_dictionary_learning",
]
