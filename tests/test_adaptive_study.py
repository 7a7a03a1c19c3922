"""The ``adaptive`` preset of ``trsplat bench optimizers`` (issue #24): the variants it expands to."""

from __future__ import annotations

from trsplat.bench.study import aggregate as agg
from trsplat.bench.study import spec as sp


def test_adaptive_preset_expands_to_the_issue_variants(tmp_path) -> None:
    spec = sp.load_spec(preset="adaptive", data_root=tmp_path)
    assert set(spec.variants) == {"adam", "tr-hutchinson-paper", "tr-none-paper-printed-bounds",
                                  "tr-hutchinson-paper-adaptive-cap16-op1", "tr-gnb-paper-adaptive-cap16-op1",
                                  "tr-none-paper-adaptive-cap16-op1", "tr-none-paper-x16-op1"}
    assert set(spec.scenes) == {"nerf_synthetic_chair", "colmap_bird", "synthetic"}
    assert (spec.iters, spec.seeds, spec.reference) == (7000, [0, 1, 2], "adam")
    assert spec.eval_iterations() == [700 * k for k in range(1, 11)]
    assert spec.table_iterations() == [2800, 3500, 7000]
    for scene in spec.scenes:  # the same settings on every scene: no per-scene tuning
        cfg = {v: spec.run_config(scene, v, 1, tmp_path / "o") for v in spec.variants}
        assert cfg["adam"].optim.optimizer == "adam"
        published = cfg["tr-hutchinson-paper"].optim
        assert (published.optimizer, published.curvature, published.tr_radius, published.tr_bounds,
                published.tr_split_budget, published.eps_start, published.eps_end) == \
            ("tr", "hutchinson", "fixed", "kernel", True, 1e-6, 1e-8)
        best_fixed = cfg["tr-none-paper-printed-bounds"].optim
        assert (best_fixed.curvature, best_fixed.tr_radius, best_fixed.tr_bounds, best_fixed.tr_split_budget) == \
            ("none", "fixed", "paper", False)
        for curvature in ("hutchinson", "gnb", "none"):
            o = cfg[f"tr-{curvature}-paper-adaptive-cap16-op1"].optim
            assert (o.optimizer, o.curvature, o.tr_radius, o.tr_bounds, o.eps_start, o.eps_end) == \
                ("tr", curvature, "adaptive", "kernel", 1e-6, 1e-8)
            assert (o.tr_radius_test, o.tr_radius_test_every, o.tr_radius_scale_max, o.tr_radius_scale_min,
                    o.tr_radius_opacity_max, o.tr_damping) == ("step", 10, 16.0, None, 1.0, "none")
            cfg[f"tr-{curvature}-paper-adaptive-cap16-op1"].validate()
        # the fixed control: the radius the adaptive one reaches at its cap, from the first step
        fixed = cfg["tr-none-paper-x16-op1"].optim
        assert (fixed.optimizer, fixed.curvature, fixed.tr_radius, fixed.tr_bounds, fixed.eps_start, fixed.eps_end,
                fixed.tr_opacity_eps_scale) == ("tr", "none", "fixed", "kernel", 1.6e-5, 1.6e-7, 0.0625)
        cfg["tr-none-paper-x16-op1"].validate()
    # the curvature gain of each adaptive variant is measured against its own no-curvature control
    for curvature in ("hutchinson", "gnb"):
        assert agg.curvature_partner(spec, f"tr-{curvature}-paper-adaptive-cap16-op1") == \
            "tr-none-paper-adaptive-cap16-op1"
    assert spec.variants["tr-gnb-paper-adaptive-cap16-op1"].meta == {
        "optimizer": "tr", "curvature": "gnb", "eps": "paper",
        "ablation": "tr_radius=adaptive,tr_radius_opacity_max=1.0,tr_radius_scale_max=16.0"}
    assert spec.variants["tr-none-paper-x16-op1"].meta == {
        "optimizer": "tr", "curvature": "none", "eps": "1.6e-05->1.6e-07", "ablation": "tr_opacity_eps_scale=0.0625"}
