"""Names and choices that every layer shares. Standard library only: the CLI builds its
options from these without importing torch or MLflow."""

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "cosine", "onecycle")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
RECIPES = ("lab", "fast")
FEATURE_CACHE = ("auto", "on", "off")
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none")
RUN_MODES = ("best", "latest", "all")
FORMATS = ("table", "markdown", "csv", "json")

DEFAULT_EXPERIMENT = "mnist"
