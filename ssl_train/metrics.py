"""Metric names, one constant each, under the very names they are logged and stored with.

Two families: the scalars Lightning logs during training (`train/loss`, `val/knn_top1`: trackers, history.jsonl and the
report's curves read them), and the keys of metrics.json (`linear_top1`: the summary line, the report, sweep summaries
and model cards read them). Evaluator scores are `<eval option>_<score>` (eval=linear gives `linear_top1`), and the two
baselines put their prefix before that (`raw_input_linear_top1`). This module imports nothing: anything may use it.
"""

from __future__ import annotations

# Logged during training (self.log names)
TRAIN_PREFIX, PROBE_PREFIX, VAL_PREFIX = "train/", "probe/", "val/"  # step values, online probe on train batches, evaluations
TRAIN_LOSS = "train/loss"
TRAIN_IMAGES_PER_S = "train/images_per_s"  # ThroughputMeter: source images/s over training batches
PROBE_ONLINE_LOSS = "probe/online_loss"
PROBE_ONLINE_TOP1 = "probe/online_top1"
DATA_SKIPPED_IMAGES = "data/skipped_images"
VAL_ONLINE_TOP1 = "val/online_top1"
VAL_KNN_TOP1 = "val/knn_top1"
VAL_ALIGNMENT = "val/alignment"
VAL_UNIFORMITY = "val/uniformity"
VAL_RANKME = "val/rankme"
VAL_LIDAR = "val/lidar"
VAL_EMBEDDING_STD = "val/embedding_std"

# metrics.json: what the run was
METHOD, BACKBONE, DATA, MODALITY = "method", "backbone", "data", "modality"
SEED, EPOCHS, GLOBAL_BATCH_SIZE, EFFECTIVE_LR = "seed", "epochs", "global_batch_size", "effective_lr"
OUTPUT_DIR, EVAL_SPLIT, INITIAL_WEIGHTS = "output_dir", "eval_split", "initial_weights"
CKPT_PATH, EVAL_FEATURES = "ckpt_path", "eval_features"  # checkpoint evaluation (python -m ssl_train.eval)

# metrics.json: what training measured
STEPS, FIT_TIME_S, WALL_TIME_S = "steps", "fit_time_s", "wall_time_s"
IMAGES_PER_S = "train_images_per_s"
SKIPPED_IMAGES = "skipped_images"
ONLINE_PROBE_TOP1, ONLINE_KNN_TOP1, ONLINE_ALIGNMENT = "online_probe_top1", "online_knn_top1", "online_alignment"
ONLINE_UNIFORMITY, ONLINE_RANKME, ONLINE_LIDAR, ONLINE_EMBEDDING_STD = "online_uniformity", "online_rankme", "online_lidar", "online_embedding_std"
LOGGED_DURING_TRAINING = {  # logged name -> metrics.json key: the last value logged during training
    TRAIN_IMAGES_PER_S: IMAGES_PER_S,
    VAL_ONLINE_TOP1: ONLINE_PROBE_TOP1,
    VAL_KNN_TOP1: ONLINE_KNN_TOP1,
    VAL_ALIGNMENT: ONLINE_ALIGNMENT,
    VAL_UNIFORMITY: ONLINE_UNIFORMITY,
    VAL_RANKME: ONLINE_RANKME,
    VAL_LIDAR: ONLINE_LIDAR,
    VAL_EMBEDDING_STD: ONLINE_EMBEDDING_STD,
}

# metrics.json: the evaluation of the trained encoder (<eval option>_<score>)
LINEAR_TOP1 = "linear_top1"
KNN_TOP1 = "knn_k20_top1"
ZERO_SHOT_TOP1, ZERO_SHOT_CHANCE = "zero_shot_top1", "zero_shot_chance"
IMAGE_RETRIEVAL_MAP_AT_R = "image_retrieval_map_at_r"
REPR_COLLAPSED, REPR_EMBEDDING_STD = "repr_collapsed", "repr_embedding_std"
REPR_ALIGNMENT, REPR_LIDAR = "repr_alignment", "repr_lidar"

# metrics.json: the two baselines, the same evaluation under a prefix
RAW_INPUT, RANDOM_INIT = "raw_input", "random_init"


def baseline_key(baseline: str, key: str) -> str:
    """The metrics.json key of a baseline's score: baseline_key(RAW_INPUT, LINEAR_TOP1) == 'raw_input_linear_top1'."""
    return f"{baseline}_{key}"


RAW_INPUT_LINEAR_TOP1 = baseline_key(RAW_INPUT, LINEAR_TOP1)
RANDOM_INIT_LINEAR_TOP1 = baseline_key(RANDOM_INIT, LINEAR_TOP1)
RAW_INPUT_KNN_TOP1 = baseline_key(RAW_INPUT, KNN_TOP1)
RANDOM_INIT_KNN_TOP1 = baseline_key(RANDOM_INIT, KNN_TOP1)
RANDOM_INIT_ZERO_SHOT_TOP1 = baseline_key(RANDOM_INIT, ZERO_SHOT_TOP1)
