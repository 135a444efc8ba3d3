"""headstart: transfer learning for image classification on a CPU.

A folder of a few labelled images becomes a trained classifier in seconds::

    import headstart
    clf = headstart.Classifier().fit("photos/")   # photos/<class>/<images>
    print(clf.predict(["new.jpg"]))
"""

__version__ = "0.1.0"

from .backbones import DEFAULT_BACKBONE, Backbone, list_backbones, load_backbone
from .data import Dataset, ImageSet, Skipped, load_dataset
from .decode import read_image
from .errors import BackboneError, DataError, HeadstartError, ModelError
from .evaluate import evaluate
from .export import export
from .features import FeatureCache, extract_features
from .health import Health, check
from .heads import AutoHead, LinearHead, MLPHead
from .model import Classifier, Predictions

__all__ = [
    "__version__",
    "DEFAULT_BACKBONE",
    "AutoHead",
    "Backbone",
    "BackboneError",
    "Classifier",
    "DataError",
    "Dataset",
    "FeatureCache",
    "HeadstartError",
    "Health",
    "ImageSet",
    "LinearHead",
    "MLPHead",
    "ModelError",
    "Predictions",
    "Skipped",
    "check",
    "evaluate",
    "export",
    "extract_features",
    "list_backbones",
    "load_backbone",
    "load_dataset",
    "read_image",
]
