r"""MARS with the paper's settings: ResNet3D-50 NL, 8 x 256 x 128 clips, P=32 x K=4, 300 epochs.

    python -m data_prep.build --dataset=mars --manual_dir=/data/MARS --data_dir=/data/reid
    python -m reid_jax.main --config=configs/mars.py --workdir=/tmp/mars \
        --config.dataset.data_dir=/data/reid \
        --config.init.torchvision_resnet50=/weights/resnet50-0676ba61.pth

Overrides worth knowing: `--config.model.name=resnet50_tp|resnet3d50` (the paper's ablation),
`--config.model.dtype=bfloat16` (accelerators), `--config.model.remat=True` (memory),
`--config.eval.protocol=mars_no_query_in_gallery` (the PyTorch codebases' protocol),
`--config.eval.rerank=True`, `--config.mode=eval` (restore the latest checkpoint and evaluate).
"""

from reid_jax import config as config_lib


def get_config():
  config = config_lib.default_config()
  config.dataset.name = "mars"
  return config
