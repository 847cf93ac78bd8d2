"""The configuration every run starts from, and the checks that reject impossible ones.

`configs/*.py` start from `default_config()` and change what their dataset needs; any field can
be overridden on the command line (`--config.data.P=16`). `validate` runs once, in
`reid_jax.modes.run_mode`, before any mode starts, so a bad value fails in a second with the
field's name instead of minutes later in a traceback. Each value is checked by what owns it (the
network's `Architecture`, the learning-rate schedule, the dataset, the distances, the export);
`validate` builds those owners and relabels their errors with the config field's full name, and
checks itself only what no owner sees (fields that must agree with each other or the devices).
"""

from __future__ import annotations

import json
import math
import os

import ml_collections

from data_prep import datasets
from data_prep.errors import FieldError, UserError
from reid_jax import distances, modes
from reid_jax.models import architecture
from reid_jax.schedule import LearningRateSchedule


def default_config() -> ml_collections.ConfigDict:
  """The paper's settings on MARS (section 4.2)."""
  c = ml_collections.ConfigDict()
  c.mode = "train"  # a name of reid_jax.modes.MODES (`python -m reid_jax.main --help` lists them)
  c.seed = 0

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = "mars"
  c.dataset.data_dir = ""  # where `python -m data_prep.build` wrote it (default <workdir>/data)
  c.dataset.manual_dir = ""  # the download; if set, a missing build is made from it
  # Synthetic MARS-layout data generated into manual_dir when it is missing (0 identities: off).
  # The fields are `data_prep.synthetic.generate`'s arguments.
  c.dataset.synthetic = ml_collections.ConfigDict(
    dict(
      identities=0,
      test_identities=0,  # 0: as many as `identities`
      cameras=4,
      tracklets_per_camera=2,
      min_len=16,
      max_len=32,
      height=128,
      width=64,
      junk=8,
      distractors=8,
      seed=0,
    )
  )
  c.dataset.split_index = 0  # the person split trained on (datasets with person splits)

  c.data = ml_collections.ConfigDict()
  c.data.P = 32  # identities per global batch (the global batch is P x K clips)
  c.data.K = 4  # tracklets per identity
  c.data.num_frames = 8
  c.data.stride = 8  # training clips: 8 frames every 8th from a 64-frame window
  c.data.height = 256
  c.data.width = 128
  c.data.eval_batch_size = 64  # global chunks per evaluation step

  c.model = ml_collections.ConfigDict()
  c.model.name = "resnet3d50_nl"
  c.model.stage_depths = (3, 4, 6, 3)
  c.model.width = 64
  c.model.bottleneck_dim = 512
  c.model.dropout_rate = 0.5
  c.model.last_stride = 2
  c.model.stem_pool_padding = 1  # 0 for the Caffe2 Kinetics checkpoints (see configs/mars.py)
  c.model.nonlocal_scale = True  # as the Kinetics non-local weights; False: the paper's Eq. 5
  c.model.nonlocal_pool = True
  c.model.attention_impl = "einsum"
  # Convolution kernel gradients: "auto" (tap-wise matmuls on CPUs, XLA's elsewhere) | "xla".
  c.model.conv_grads = "auto"
  c.model.remat = False
  c.model.dtype = "float32"  # "bfloat16" on accelerators: compute only, parameters stay f32

  c.loss = ml_collections.ConfigDict(
    dict(label_smoothing=0.1, triplet_margin=0.3, triplet_metric="euclidean", triplet_weight=1.0)
  )

  # Adam with PyTorch-style (coupled) weight decay and the paper's schedule (reid_jax.optim,
  # reid_jax.schedule).
  c.optim = ml_collections.ConfigDict(
    dict(
      base_lr=3e-4,
      weight_decay=5e-4,
      # False leaves 1-D parameters (BatchNorm scales, biases) undecayed; PyTorch's Adam
      # decays every parameter, hence True.
      decay_norm_and_bias=True,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      decay_start_epoch=150,
      total_epochs=300,
      final_factor=0.001,
      # Global-norm gradient clipping threshold; 0 disables it.
      grad_clip_norm=0.0,
    )
  )

  c.train = ml_collections.ConfigDict()
  c.train.log_every_steps = 10
  c.train.checkpoint_every_steps = 500
  c.train.keep_checkpoints = 3
  c.train.eval_every_epochs = 50  # 0: evaluate only at the end

  c.eval = ml_collections.ConfigDict()
  c.eval.protocol = ""  # default: the dataset's first protocol (data_prep.datasets.<name>)
  c.eval.metric = "euclidean"  # euclidean | cosine
  c.eval.rerank = False
  c.eval.max_rank = 50
  c.eval.step = -1  # checkpoint step to evaluate (-1: the latest)
  # iLIDS-VID / PRID2011: comma-separated `extract` outputs of the 10 split models, in split
  # order; `eval` mode then reports the mean and std over the splits.
  c.eval.split_features = ""
  c.eval.num_ranked_queries = 4  # ranked-results sheets written by the report
  c.eval.top_k = 10

  # `embed` mode: one feature per tracklet of a user's footage (reid_jax/footage/).
  c.embed = ml_collections.ConfigDict()
  c.embed.input = ""  # tracklet folders, camera folders of tracklets, videos, or one video
  c.embed.tracks = ""  # one video's MOTChallenge track file (default: <video stem>.txt beside it)
  c.embed.output = ""  # default <workdir>/embeddings.npz
  c.embed.min_length = 1  # tracks with fewer frames are left out (counted in the log)
  # Leave out (and count) bad track lines, boxes outside their frame, boxes a damaged or too short
  # video cannot place and frames that do not decode, instead of stopping.
  c.embed.skip_bad = False
  c.embed.min_visibility = 0.0  # MOTChallenge ground truth: boxes less visible are left out
  c.embed.frame_stride = 1  # every n-th frame of each track (1: all, as evaluation)

  # `search` mode: the nearest gallery tracklets of each query tracklet (reid_jax/footage/).
  c.search = ml_collections.ConfigDict()
  c.search.query = ""  # an embed output (default <workdir>/embeddings.npz)
  c.search.gallery = ""  # another embed output (default: the query file)
  c.search.top_k = 10
  c.search.threshold = -1.0  # a match is at most this far; < 0: <workdir>/threshold.json if any
  c.search.output = ""  # default <workdir>/search
  c.search.num_sheets = 4  # ranked sheets (pictures) of the first queries
  c.search.cross_camera_only = False  # leave out every pair of one camera

  # `calibrate` mode: the distance that separates same-person from different-person pairs.
  c.calibrate = ml_collections.ConfigDict()
  c.calibrate.false_match_rate = 0.01  # the threshold's share of different-person pairs under it

  # `export` mode: the feature function for serving (reid_jax/export.py).
  c.export = ml_collections.ConfigDict()
  c.export.platforms = "cpu"  # comma-separated: cpu, cuda, tpu (of jax_export, saved_model)
  c.export.formats = "jax_export,saved_model"  # comma-separated: jax_export, saved_model, onnx

  # Initial weights: at most one source. Each implies the input normalisation the model is
  # trained with (recorded in its checkpoints; see reid_jax/data/normalize.py).
  c.init = ml_collections.ConfigDict()
  c.init.kinetics_i3d = ""  # Kinetics I3D checkpoint (Caffe2 .pkl, PySlowFast or
  # pytorchvideo .pyth), for resnet3d50 / resnet3d50_nl
  c.init.torchvision_resnet50 = ""  # 2D ResNet-50 to inflate: torchvision (ImageNet),
  # torchreid or fast-reid (re-id)
  c.init.temporal_init = "mean"  # inflation rule of the 2D weights: mean | center
  c.init.checkpoint = ""  # a checkpoint directory to fine-tune from (its classifier excluded)
  return c


INIT_SOURCES = ("kinetics_i3d", "torchvision_resnet50", "checkpoint")
# What a missing init file's error adds: where the paper's files come from.
INIT_DOWNLOADS = {
  "kinetics_i3d": (
    "; the Kinetics I3D checkpoints are "
    "https://s3.amazonaws.com/video-nonlocal/i3d_nonlocal_8x8_IN_pretrain_400k.pkl"
    " (non-local) and .../i3d_baseline_8x8_IN_pretrain_400k.pkl (see "
    "configs/mars.py)"
  ),
  "torchvision_resnet50": (
    "; torchvision's ImageNet ResNet-50 is "
    "https://download.pytorch.org/models/resnet50-0676ba61.pth, or give "
    "a torchreid / fast-reid ResNet-50 (see configs/mars.py)"
  ),
}


def split_dataset_finetuning(name: str) -> ml_collections.ConfigDict:
  """iLIDS-VID / PRID2011: fine-tuning a MARS model on one person split (about 150 / 89 train
  people, so P=16 x K=4 and fewer, slower epochs than MARS training)."""
  config = default_config()
  config.dataset.name = name
  config.data.P = 16
  config.optim.base_lr = 1e-4
  config.optim.total_epochs = 100
  config.optim.decay_start_epoch = 50
  config.train.eval_every_epochs = 25
  config.train.checkpoint_every_steps = 200
  # The network of configs/mars.py's default row (Kinetics Caffe2 weights), which this config
  # fine-tunes; a MARS model of another row needs its own value.
  config.model.stem_pool_padding = 0
  return config


# Model fields that may differ between a checkpoint and the model that continues from it.
MODEL_RUNTIME_FIELDS = (
  "dtype",
  "remat",
  "attention_impl",
  "conv_grads",
  "dropout_rate",
  "bottleneck_dim",
)


class NetworkMismatch(UserError, ValueError):
  """The config builds another network than a checkpoint holds; the message names the field."""


def check_same_network(
  config, saved_config_json: str, source: str, *, may_differ: tuple[str, ...] = ()
) -> None:
  """Raises NetworkMismatch naming the first `config.model` field that differs from the saved
  run's, other than those that only change how it runs (and the head) and `may_differ`."""
  saved = json.loads(saved_config_json)["model"]
  if saved.get("name") != config.model.name:
    raise NetworkMismatch(
      f"config.model.name is {config.model.name!r}, but {source} holds {saved.get('name')!r}"
    )
  for field, value in model_overrides(config).items():
    if field in MODEL_RUNTIME_FIELDS + may_differ or field not in saved:
      continue
    if (list(value) if isinstance(value, tuple) else value) != saved[field]:
      raise NetworkMismatch(
        f"config.model.{field} is {value!r}, but {source} was trained with {saved[field]!r}"
      )


def model_overrides(config) -> dict:
  """`create_model` keyword arguments from `config.model` (all but the name)."""
  return {
    k: (tuple(v) if isinstance(v, (list, tuple)) else v)
    for k, v in config.model.items()
    if k != "name"
  }


def data_dir(config, workdir: str) -> str:
  """Where the config's built datasets live: `dataset.data_dir`, default `<workdir>/data`."""
  return config.dataset.data_dir or os.path.join(workdir, "data")


def train_batch_size(config) -> int:
  """Clips per global training batch: P identities x K tracklets."""
  return config.data.P * config.data.K


def protocol(config) -> str:
  """The protocol's name: `eval.protocol`, else the dataset's default."""
  return config.eval.protocol or datasets.get(config.dataset.name).default_protocol.name


class ConfigError(UserError, ValueError):
  """An impossible setting; the message names the field."""


def _check(ok: bool, field: str, message: str):
  if not ok:
    raise ConfigError(f"config.{field}: {message}")


def _owned(field: str, make, *, section_of=None):
  """`make()`, its errors relabelled with the config field: a FieldError of field `f` becomes
  `config.<section>.<f>` (`section_of(f)`, default `field`), any other ValueError
  `config.<field>`."""
  try:
    return make()
  except FieldError as e:
    section = section_of(e.field) if section_of else field
    raise ConfigError(f"config.{section}.{e.field}: {e.message}") from None
  except ValueError as e:
    raise ConfigError(f"config.{field}: {e}") from None


def validate(config, *, num_devices: int) -> None:
  """Raises ConfigError naming the field of the first impossible setting."""
  _check(config.mode in modes.MODES, "mode", f"{config.mode!r} is not one of {modes.NAMES}")

  # The network and the clips it is fed.
  arch = _owned("model", lambda: architecture(config.model.name, **model_overrides(config)))
  d = config.data
  for field in ("P", "K", "num_frames", "stride", "height", "width", "eval_batch_size"):
    _check(int(d[field]) >= 1, f"data.{field}", f"must be a positive integer, got {d[field]}")
  _owned(
    "data",
    lambda: arch.check_clip(d.num_frames, d.height, d.width),
    section_of=lambda f: "data" if f in ("num_frames", "height", "width") else "model",
  )

  # The batches over the devices.
  _check(
    d.K >= 2 or config.loss.triplet_weight == 0,
    "data.K",
    f"batch-hard triplets need K >= 2 tracklets per identity, got {d.K}",
  )
  _check(
    train_batch_size(config) % num_devices == 0,
    "data.P",
    f"the batch of P x K = {d.P} x {d.K} clips does not divide over {num_devices} devices",
  )
  _check(
    d.eval_batch_size % num_devices == 0,
    "data.eval_batch_size",
    f"{d.eval_batch_size} does not divide over {num_devices} devices",
  )

  # The dataset (and the synthetic one to generate), its protocol and person split.
  dataset = _owned("dataset.name", lambda: datasets.get(config.dataset.name))
  if config.dataset.synthetic.identities:
    from data_prep import synthetic

    _owned(
      "dataset.synthetic",
      lambda: synthetic.check_settings(**config.dataset.synthetic.to_dict()),
    )
  _owned("eval.protocol", lambda: dataset.protocol(protocol(config)))
  _owned("dataset.split_index", lambda: dataset.check_split_index(config.dataset.split_index))
  for field in ("eval.metric", "loss.triplet_metric"):
    section, name = field.split(".")
    _owned(field, lambda: distances.check_metric(config[section][name]))

  # Initial weights and the optimiser's schedule.
  _check(
    config.init.temporal_init in ("mean", "center"),
    "init.temporal_init",
    f"{config.init.temporal_init!r} is not mean or center",
  )
  sources = [f"init.{k}" for k in INIT_SOURCES if config.init[k]]
  _check(
    len(sources) <= 1,
    sources[-1] if sources else "init",
    f"at most one initialisation, got {' and '.join(sources)}",
  )
  _owned("optim", lambda: LearningRateSchedule.from_config(config.optim))
  _check(config.train.checkpoint_every_steps >= 1, "train.checkpoint_every_steps", "must be >= 1")
  _check(config.train.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1")
  _check(config.train.log_every_steps >= 1, "train.log_every_steps", "must be >= 1")

  # The footage, search, calibration and export modes.
  _check(
    config.mode != "embed" or bool(config.embed.input),
    "embed.input",
    "embed mode needs the footage: a folder of tracklets or videos, or one video",
  )
  _check(config.embed.min_length >= 1, "embed.min_length", "must be >= 1")
  _check(
    0 <= config.embed.min_visibility <= 1,
    "embed.min_visibility",
    f"must lie in [0, 1], got {config.embed.min_visibility}",
  )
  _check(config.embed.frame_stride >= 1, "embed.frame_stride", "must be >= 1")
  _check(config.search.top_k >= 1, "search.top_k", f"must be >= 1, got {config.search.top_k}")
  _check(config.search.num_sheets >= 0, "search.num_sheets", "must be >= 0")
  _check(
    math.isfinite(config.search.threshold),
    "search.threshold",
    f"must be a number (< 0: the workdir's threshold.json), got {config.search.threshold}",
  )
  _check(
    0 < config.calibrate.false_match_rate < 1,
    "calibrate.false_match_rate",
    f"must lie in (0, 1), got {config.calibrate.false_match_rate}",
  )
  from reid_jax import export  # deferred: the registry of platforms, nothing is exported

  _owned("export.platforms", lambda: export.platforms_of(config.export.platforms))
  _owned("export.formats", lambda: export.formats_of(config.export.formats))
  _check(
    config.mode != "export" or config.model.attention_impl != "cudnn",
    "model.attention_impl",
    "cudnn attention cannot be exported (JAX lowers it as a Python-partitioned call, which "
    "jax.export cannot serialize); export with --config.model.attention_impl=xla, the same weights",
  )
