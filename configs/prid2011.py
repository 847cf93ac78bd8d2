r"""PRID2011, fine-tuned from a MARS checkpoint; evaluation over the 10 person splits.

    python -m data_prep.build --dataset=prid2011 --manual_dir=/data/prid_2011 \
        --data_dir=/data/reid
    python -m reid_jax.main --config=configs/prid2011.py --workdir=/tmp/prid2011 \
        --config.dataset.data_dir=/data/reid --config.init.checkpoint=/tmp/mars/checkpoints

Only the 178 people with more than 21 frames in both cameras are used; splits come from
`splits_prid2011.json` when it lies in the download, else from the documented seed (2011).
Training uses the train people of `--config.dataset.split_index` (default 0) and evaluation
scores that split (query cam_a, gallery cam_b). The published figure is the mean over 10 such models:

    for s in 0 1 2 3 4 5 6 7 8 9; do
      python -m reid_jax.main --config=configs/prid2011.py --workdir=/tmp/prid2011_$s \
          --config.dataset.data_dir=/data/reid --config.init.checkpoint=/tmp/mars/checkpoints \
          --config.dataset.split_index=$s
      python -m reid_jax.main --config=configs/prid2011.py --workdir=/tmp/prid2011_$s \
          --config.dataset.data_dir=/data/reid --config.dataset.split_index=$s \
          --config.mode=extract
    done
    python -m reid_jax.main --config=configs/prid2011.py --workdir=/tmp/prid2011_mean \
        --config.dataset.data_dir=/data/reid --config.mode=eval \
        --config.eval.split_features=$(ls /tmp/prid2011_?/features_step*.npz | paste -sd,)
"""

from reid_jax import config as config_lib


def get_config():
  return config_lib.split_dataset_finetuning("prid2011")
