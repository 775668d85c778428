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

# MLflow's SQL stores keep an experiment's name in a VARCHAR(256) column
# (mlflow/store/tracking/dbmodels/models.py, SqlExperiment.name): PostgreSQL and MySQL refuse a
# longer one once the run is under way, while MLflow's own check allows 500 and SQLite stores
# anything. 256 is the length every store takes.
MAX_EXPERIMENT_NAME_LENGTH = 256
# ... and a run's name in a VARCHAR(250) (SqlRun.name): the same refusal, after the run began.
MAX_RUN_NAME_LENGTH = 250
# PyTorch seeds its CPU generator (MT19937) with a seed's low 32 bits: 2**32 draws as 0 does,
# and -1 as 2**32 - 1. Seeds outside 0..2**32 - 1 would repeat other seeds' runs.
MAX_SEED = 2**32 - 1
