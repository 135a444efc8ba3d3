"""headstart: transfer learning for image classification on a CPU.

A folder of a few labelled images becomes a trained classifier in seconds::

    import headstart
    clf = headstart.Classifier().fit("photos/")   # photos/<class>/<images>
    print(clf.predict(["new.jpg"]))
"""

__version__ = "0.1.0"

# Public names and the module defining each. They are imported on first use (PEP 562), so
# that ``import headstart.fit.health`` or the CLI does not pay for scikit-learn or PyTorch.
_ORIGIN = {
    "DEFAULT_BACKBONE": "backbone.build", "Backbone": "backbone.build", "list_backbones": "backbone.build",
    "load_backbone": "backbone.build",
    "Dataset": "io.dataset", "ImageSet": "io.dataset", "Skipped": "io.dataset", "load_dataset": "io.dataset",
    "read_image": "io.decode",
    "BackboneError": "errors", "DataError": "errors", "HeadstartError": "errors",
    "ModelError": "errors", "PathError": "errors",
    "evaluate": "insight.evaluate", "export": "deploy.export",
    "FeatureCache": "backbone.features", "extract_features": "backbone.features",
    "Health": "fit.health", "check": "fit.health",
    "AutoHead": "heads", "LinearHead": "heads", "MLPHead": "heads",
    "Classifier": "fit.classifier", "Predictions": "fit.classifier",
    "Callback": "fit.callbacks", "Callbacks": "fit.callbacks", "FinetuneConfig": "fit.finetune", "TrainingSummary": "fit.summary",
    "domain_gap": "fit.domain", "Review": "insight.review", "Suggestion": "insight.review",
}


def __getattr__(name: str) -> object:
    if name in _ORIGIN:
        import importlib

        value = getattr(importlib.import_module(f".{_ORIGIN[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'headstart' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_ORIGIN))


__all__ = [
    "__version__",
    "DEFAULT_BACKBONE",
    "AutoHead",
    "Backbone",
    "BackboneError",
    "Callback",
    "Callbacks",
    "Classifier",
    "DataError",
    "Dataset",
    "FeatureCache",
    "FinetuneConfig",
    "HeadstartError",
    "Health",
    "ImageSet",
    "LinearHead",
    "MLPHead",
    "ModelError",
    "PathError",
    "Predictions",
    "Review",
    "Skipped",
    "Suggestion",
    "TrainingSummary",
    "check",
    "domain_gap",
    "evaluate",
    "export",
    "extract_features",
    "list_backbones",
    "load_backbone",
    "load_dataset",
    "read_image",
]
