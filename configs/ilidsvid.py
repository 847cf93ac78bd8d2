r"""iLIDS-VID, fine-tuned from a MARS checkpoint; evaluation over the 10 person splits.

    python -m data_prep.build --dataset=ilidsvid --manual_dir=/data/i-LIDS-VID \
        --data_dir=/data/reid
    python -m reid_jax.main --config=configs/ilidsvid.py --workdir=/tmp/ilidsvid \
        --config.dataset.data_dir=/data/reid --config.init.checkpoint=/tmp/mars/checkpoints

Training uses the train people of `--config.dataset.split_index` (default 0) and evaluation
scores that split (query camera 1, gallery camera 2). The published figure is the mean over 10 such models:

    for s in 0 1 2 3 4 5 6 7 8 9; do
      python -m reid_jax.main --config=configs/ilidsvid.py --workdir=/tmp/ilidsvid_$s \
          --config.dataset.data_dir=/data/reid --config.init.checkpoint=/tmp/mars/checkpoints \
          --config.dataset.split_index=$s
      python -m reid_jax.main --config=configs/ilidsvid.py --workdir=/tmp/ilidsvid_$s \
          --config.dataset.data_dir=/data/reid --config.dataset.split_index=$s \
          --config.mode=extract
    done
    python -m reid_jax.main --config=configs/ilidsvid.py --workdir=/tmp/ilidsvid_mean \
        --config.dataset.data_dir=/data/reid --config.mode=eval \
        --config.eval.split_features=$(ls /tmp/ilidsvid_?/features_step*.npz | paste -sd,)
"""

from reid_jax import config as config_lib


def get_config():
  return config_lib.split_dataset_finetuning("ilidsvid")
