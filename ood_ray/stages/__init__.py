"""The stages of an audit (see :mod:`ood_ray.stages.base` for the contract)."""
