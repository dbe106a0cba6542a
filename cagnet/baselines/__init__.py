"""The CaGNet paper's baselines (SPNet, SPNet-c, ZS3Net, self-training), few-shot extension and
`cagnet compare`, on the same backbone, data and evaluator (method.md §7)."""
