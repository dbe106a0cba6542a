"""The baselines of the CaGNet paper on the same backbone, data and evaluator (method.md §7),
calibration, self-training, and `cagnet compare`.

- `spnet.py`, `spnet_training.py`: SPNet (fixed semantic projection) and its training;
- `calibration.py`, `calibration_run.py`, `curve_plot.py`: calibrated stacking (SPNet-c, and
  any model with `segment()`), T chosen on held-out validation classes;
- `gmmn.py`, `zs3net.py`: ZS3Net's GMMN generator and classifier retraining;
- `pseudo_labels.py`, `self_training.py`: self-training (CaGNet top-p, ZS3Net top-p %);
- `methods.py`: building / loading any method's network;
- `loop.py`: the baselines' iteration-seeded training loop;
- `compare*.py`: the `cagnet compare` pipeline, its recipe, stages and table.
"""
