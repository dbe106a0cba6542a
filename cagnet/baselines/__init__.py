"""The baselines of the CaGNet paper on the same backbone, data and evaluator (method.md §7),
calibration, self-training, few-shot extension, and `cagnet compare`.

- `spnet.py`: SPNet (fixed semantic projection) as a method of the training loop;
- `calibration.py`, `calibration_run.py`: calibrated stacking (SPNet-c, and any model),
  T chosen on held-out validation classes;
- `zs3net.py`: ZS3Net's GMMN generator and classifier retraining;
- `pseudo_labels.py`, `self_training.py`: self-training (CaGNet top-p, ZS3Net top-p %);
- `shots.py`, `fewshot.py`: new classes from K labelled images, its two baselines and
  `cagnet fewshot`;
- `compare/`: the `cagnet compare` pipeline, its recipe, stages and table.
"""
