r"""MARS with the paper's settings: ResNet3D-50 NL from Kinetics, 8 x 256 x 128 clips, P=32 x K=4.

    python -m data_prep.build --dataset=mars --manual_dir=/data/MARS --data_dir=/data/reid
    python -m reid_jax.main --config=configs/mars.py --workdir=/tmp/mars \
        --config.dataset.data_dir=/data/reid \
        --config.init.kinetics_i3d=/weights/i3d_nonlocal_8x8_IN_pretrain_400k.pkl

Every row of the paper's Tables 2 and 3 is a config argument (`--config=configs/mars.py:ROW`)
that sets the model and its initialisation; give the downloaded file with the override shown.
The paper's MARS numbers (rank-1 / mAP) are beside each row:

| ROW             | model           | initial weights (download)                         | paper       |
|-----------------|-----------------|----------------------------------------------------|-------------|
| `baseline`      | `resnet50_tp`   | ImageNet: torchvision `resnet50-0676ba61.pth` [1]  | 77.9 / 69.0 |
| `resnet3d50`    | `resnet3d50`    | Kinetics: `i3d_baseline_8x8_IN_pretrain_400k.pkl` [2] | 80.0 / 72.6 |
| `resnet3d50_nl` (default) | `resnet3d50_nl` | Kinetics: `i3d_nonlocal_8x8_IN_pretrain_400k.pkl` [2] | 84.3 / 77.0 |
| `imagenet`      | `resnet3d50_nl` | ImageNet, inflated: `resnet50-0676ba61.pth` [1]    | 78.4 / 69.8 |
| `reid`          | `resnet3d50_nl` | 2D re-id ResNet-50, inflated, e.g. fast-reid `duke_bot_R50.pth` [3] | 79.9 / 71.3 |

    # Table 2, baseline; Table 3, ImageNet
    python -m reid_jax.main --config=configs/mars.py:baseline --workdir=/tmp/mars_baseline \
        --config.dataset.data_dir=/data/reid \
        --config.init.torchvision_resnet50=/weights/resnet50-0676ba61.pth
    python -m reid_jax.main --config=configs/mars.py:imagenet --workdir=/tmp/mars_imagenet \
        --config.dataset.data_dir=/data/reid \
        --config.init.torchvision_resnet50=/weights/resnet50-0676ba61.pth
    # Table 2, ResNet3D-50; Tables 2 and 3, ResNet3D-50 NL from Kinetics
    python -m reid_jax.main --config=configs/mars.py:resnet3d50 --workdir=/tmp/mars_3d \
        --config.dataset.data_dir=/data/reid \
        --config.init.kinetics_i3d=/weights/i3d_baseline_8x8_IN_pretrain_400k.pkl
    python -m reid_jax.main --config=configs/mars.py --workdir=/tmp/mars \
        --config.dataset.data_dir=/data/reid \
        --config.init.kinetics_i3d=/weights/i3d_nonlocal_8x8_IN_pretrain_400k.pkl
    # Table 3, ReID
    python -m reid_jax.main --config=configs/mars.py:reid --workdir=/tmp/mars_reid \
        --config.dataset.data_dir=/data/reid \
        --config.init.torchvision_resnet50=/weights/duke_bot_R50.pth

[1] https://download.pytorch.org/models/resnet50-0676ba61.pth (torchvision's IMAGENET1K_V1)
[2] https://s3.amazonaws.com/video-nonlocal/i3d_baseline_8x8_IN_pretrain_400k.pkl and
    https://s3.amazonaws.com/video-nonlocal/i3d_nonlocal_8x8_IN_pretrain_400k.pkl (the Non-local
    release, Caffe2; also in the PySlowFast model zoo as I3D_8x8_R50.pkl and I3D_NLN_8x8_R50.pkl).
    These rows set `model.stem_pool_padding=0`, the Caffe2 network's stem pool; for a PySlowFast
    `.pyth` or pytorchvideo's `I3D_8x8_R50.pyth` add `--config.model.stem_pool_padding=1`.
[3] https://github.com/JDAI-CV/fast-reid/releases/download/v0.1.1/duke_bot_R50.pth (trained on
    DukeMTMC-reID; the paper pre-trained on CUHK03, VIPeR and DukeMTMC-reID). Any torchreid or
    fast-reid ResNet-50 file works.

The input normalisation follows the initial weights (Kinetics: 0.45 / 0.225; the others:
ImageNet's) and is recorded in the checkpoints, so `eval` and `extract` use the same.

Overrides worth knowing: `--config.model.dtype=bfloat16` (accelerators), `--config.model.remat=True`
(memory), `--config.model.nonlocal_pool=False --config.model.nonlocal_scale=False` (the paper's
printed non-local block, Eq. 5 / Fig. 5; for the 2D initialisations only),
`--config.eval.protocol=mars_no_query_in_gallery` (the PyTorch codebases' protocol),
`--config.eval.rerank=True`, `--config.mode=eval` (restore the latest checkpoint and evaluate).
"""

from reid_jax import config as config_lib

# ROW -> (model, init field, default file name, stem_pool_padding)
ROWS = {
  "baseline": ("resnet50_tp", "torchvision_resnet50", "resnet50-0676ba61.pth", 1),
  "resnet3d50": ("resnet3d50", "kinetics_i3d", "i3d_baseline_8x8_IN_pretrain_400k.pkl", 0),
  "resnet3d50_nl": ("resnet3d50_nl", "kinetics_i3d", "i3d_nonlocal_8x8_IN_pretrain_400k.pkl", 0),
  "imagenet": ("resnet3d50_nl", "torchvision_resnet50", "resnet50-0676ba61.pth", 1),
  "reid": ("resnet3d50_nl", "torchvision_resnet50", "duke_bot_R50.pth", 1),
}


def get_config(row: str = "resnet3d50_nl"):
  if row not in ROWS:
    raise ValueError(f"configs/mars.py:{row}: unknown row; choose one of {sorted(ROWS)}")
  model, init_field, default_file, stem_pool_padding = ROWS[row]
  config = config_lib.default_config()
  config.dataset.name = "mars"
  config.model.name = model
  config.model.stem_pool_padding = stem_pool_padding
  config.init[init_field] = default_file
  return config
