r"""iLIDS-VID, fine-tuned from a MARS checkpoint; evaluation over the 10 person splits.

    python -m data_prep.build --dataset=ilidsvid --manual_dir=/data/i-LIDS-VID \
        --data_dir=/data/reid
    python -m reid_jax.main --config=configs/ilidsvid.py --workdir=/tmp/ilidsvid \
        --config.dataset.data_dir=/data/reid --config.init.checkpoint=/tmp/mars/checkpoints

Training uses the train people of `--config.dataset.split_index` (default 0); evaluation reports
the mean and standard deviation over all 10 splits (query camera 1, gallery camera 2).
"""

from reid_jax import config as config_lib


def get_config():
  config = config_lib.default_config()
  config.dataset.name = "ilidsvid"
  # 150 training people: P=16 x K=4 keeps 9 steps per epoch; fine-tuning needs fewer epochs.
  config.data.P = 16
  config.data.batch_size = 64
  config.optim.base_lr = 1e-4
  config.optim.total_epochs = 100
  config.optim.decay_start_epoch = 50
  config.train.eval_every_epochs = 25
  config.train.checkpoint_every_steps = 200
  return config
