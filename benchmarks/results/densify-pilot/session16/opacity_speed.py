"""Offline check (docs/densification.md, session 16). Fastest possible opacity rise under the Hellinger opacity radius: a +inf logit step every
iteration, clipped by the trust region, with the paper's ε schedule (1500 iterations)."""
import torch
from trsplat.optim.hellinger import TrustRegionConfig, clip_step
from trsplat.optim.schedules import exponential_decay

def rise(o0, t0, t1, eps_start, eps_end, op_scale, iters=1500):
    cfg = TrustRegionConfig(opacity_eps_scale=op_scale)
    p = {"means": torch.zeros(1, 3), "log_scales": torch.zeros(1, 3), "quats": torch.tensor([[1.0, 0, 0, 0]]),
         "opacity_logits": torch.logit(torch.tensor([o0])), "sh_dc": torch.zeros(1, 1, 3), "sh_rest": torch.zeros(1, 15, 3)}
    for t in range(t0, t1 + 1):
        eps = exponential_decay(t, start=eps_start, end=eps_end, max_steps=iters)
        st = clip_step(p, {"opacity_logits": torch.tensor([1e30])}, eps, cfg, backend="torch")[0]["opacity_logits"]
        p["opacity_logits"] = p["opacity_logits"] + st
    return float(torch.sigmoid(p["opacity_logits"]))

for name, es, ee, sc in [("paper eps, op x1", 1e-6, 1e-8, 1.0), ("paper eps, op x16", 1e-6, 1e-8, 16.0),
                         ("eps x16, op 0.0625", 1.6e-5, 1.6e-7, 0.0625), ("eps x16, op x1", 1.6e-5, 1.6e-7, 1.0)]:
    print(f"{name}: init 0.1 at 1 -> {rise(0.1, 1, 1500, es, ee, sc):.3f} at 1500; reset 0.01 at 150 -> "
          f"{rise(0.01, 151, 300, es, ee, sc):.3f} at 300; reset 0.01 at 600 -> {rise(0.01, 601, 1500, es, ee, sc):.3f} at 1500")

# the same with ADC's reset schedule at other run lengths (paper ε, op x1): first reset, one interval, last reset
for iters, r1, r2, last in [(1500, 150, 300, 600), (7000, 700, 1400, 2800), (30000, 3000, 6000, 12000)]:
    print(f"{iters} iterations: init 0.1 -> {rise(0.1, 1, iters, 1e-6, 1e-8, 1.0, iters):.3f}; reset at {r1} -> "
          f"{rise(0.01, r1 + 1, r2, 1e-6, 1e-8, 1.0, iters):.3f} at {r2}; last reset {last} -> "
          f"{rise(0.01, last + 1, iters, 1e-6, 1e-8, 1.0, iters):.3f} at the end")
