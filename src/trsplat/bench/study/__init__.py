"""The optimizer study, ``trsplat bench optimizers`` (docs/optimizer_study.md): spec, runner, aggregate, report."""
