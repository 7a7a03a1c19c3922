"""The projection of the ``cpu`` backend: :func:`project` as numba kernels, forward, VJP and JVP.

:func:`project_cpu` has the signature and the results of
:func:`trsplat.render.project.project`. It is a ``torch.autograd.Function`` whose forward
(:func:`project_forward_kernel`), ``backward`` (VJP) and ``jvp`` are each one ``prange`` pass
over the Gaussians in float64, instead of torch's ~150 small tensor ops per pass and their
autograd graph. ``project()`` also computes in float64 (see its module doc), so both cull the
same Gaussians, give the same radii and tile rectangles, and agree to float32 rounding in every
output, gradient and tangent (tested).

The derivatives follow the torch code exactly, including its piecewise choices: the x/z, y/z
clamp of the Jacobian passes gradient only inside [lo, hi] (inclusive, as ``torch.clamp``),
colour gradients pass where SH + 0.5 ≥ 0 (``clamp_min``), only ``cov2d[0, 1]`` feeds the
conic's b, normalisations use ``max(‖v‖, 1e-12)``, SH bands above ``sh_degree`` get zero
gradient. Float64 inputs fall back to plain ``project()``. Double backward, ``vmap`` and reverse
mode over the JVP are not supported (they raise).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit, prange

from trsplat.camera import Camera
from trsplat.render.composite_autograd import primal
from trsplat.render.project import LOW_PASS, NEAR_PLANE, TILE_SIZE, Projected, project
from trsplat.render.sh import C0, C1, C2, C3

__all__ = ["project_cpu"]

_EPS = 1e-12


# -- shared pieces (float64) ------------------------------------------------------------------
@njit(inline="always")
def _rotmat(w, x, y, z, r):
    r[0, 0] = 1.0 - 2.0 * (y * y + z * z)
    r[0, 1] = 2.0 * (x * y - w * z)
    r[0, 2] = 2.0 * (x * z + w * y)
    r[1, 0] = 2.0 * (x * y + w * z)
    r[1, 1] = 1.0 - 2.0 * (x * x + z * z)
    r[1, 2] = 2.0 * (y * z - w * x)
    r[2, 0] = 2.0 * (x * z - w * y)
    r[2, 1] = 2.0 * (y * z + w * x)
    r[2, 2] = 1.0 - 2.0 * (x * x + y * y)


@njit(inline="always")
def _sh_values(degree, x, y, z, basis):
    """The 16 (real) SH basis values of 3DGS along the unit direction (x, y, z)."""
    basis[:] = 0.0
    basis[0] = C0
    if degree < 1:
        return
    basis[1] = -C1 * y
    basis[2] = C1 * z
    basis[3] = -C1 * x
    if degree < 2:
        return
    xx, yy, zz = x * x, y * y, z * z
    basis[4] = C2[0] * x * y
    basis[5] = C2[1] * y * z
    basis[6] = C2[2] * (2.0 * zz - xx - yy)
    basis[7] = C2[3] * x * z
    basis[8] = C2[4] * (xx - yy)
    if degree < 3:
        return
    basis[9] = C3[0] * y * (3.0 * xx - yy)
    basis[10] = C3[1] * x * y * z
    basis[11] = C3[2] * y * (4.0 * zz - xx - yy)
    basis[12] = C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy)
    basis[13] = C3[4] * x * (4.0 * zz - xx - yy)
    basis[14] = C3[5] * z * (xx - yy)
    basis[15] = C3[6] * x * (xx - 3.0 * yy)


@njit(inline="always")
def _sh_grads(degree, x, y, z, grad):
    """The gradients (16, 3) of :func:`_sh_values` w.r.t. the direction (x, y, z)."""
    grad[:, :] = 0.0
    if degree < 1:
        return
    grad[1, 1] = -C1
    grad[2, 2] = C1
    grad[3, 0] = -C1
    if degree < 2:
        return
    xx, yy, zz = x * x, y * y, z * z
    grad[4, 0] = C2[0] * y
    grad[4, 1] = C2[0] * x
    grad[5, 1] = C2[1] * z
    grad[5, 2] = C2[1] * y
    grad[6, 0] = C2[2] * (-2.0 * x)
    grad[6, 1] = C2[2] * (-2.0 * y)
    grad[6, 2] = C2[2] * (4.0 * z)
    grad[7, 0] = C2[3] * z
    grad[7, 2] = C2[3] * x
    grad[8, 0] = C2[4] * (2.0 * x)
    grad[8, 1] = C2[4] * (-2.0 * y)
    if degree < 3:
        return
    grad[9, 0] = C3[0] * 6.0 * x * y
    grad[9, 1] = C3[0] * (3.0 * xx - 3.0 * yy)
    grad[10, 0] = C3[1] * y * z
    grad[10, 1] = C3[1] * x * z
    grad[10, 2] = C3[1] * x * y
    grad[11, 0] = C3[2] * (-2.0 * x * y)
    grad[11, 1] = C3[2] * (4.0 * zz - xx - 3.0 * yy)
    grad[11, 2] = C3[2] * 8.0 * y * z
    grad[12, 0] = C3[3] * (-6.0 * x * z)
    grad[12, 1] = C3[3] * (-6.0 * y * z)
    grad[12, 2] = C3[3] * (6.0 * zz - 3.0 * xx - 3.0 * yy)
    grad[13, 0] = C3[4] * (4.0 * zz - 3.0 * xx - yy)
    grad[13, 1] = C3[4] * (-2.0 * x * y)
    grad[13, 2] = C3[4] * 8.0 * x * z
    grad[14, 0] = C3[5] * 2.0 * x * z
    grad[14, 1] = C3[5] * (-2.0 * y * z)
    grad[14, 2] = C3[5] * (xx - yy)
    grad[15, 0] = C3[6] * (3.0 * xx - 3.0 * yy)
    grad[15, 1] = C3[6] * (-6.0 * x * y)


@njit(inline="always")
def _geometry_scratch():
    """Per-thread scratch arrays of :func:`_geometry` (pv, qn, rq, s, mm, pm, jac, tmat, cov)."""
    return (np.empty(3), np.empty(4), np.empty((3, 3)), np.empty(3), np.empty((3, 3)),
            np.empty((2, 3)), np.empty((2, 3)), np.empty((2, 3)), np.empty((2, 2)))


@njit(inline="always")
def _geometry(i, n, means, log_scales, quats, rot_v, trans_v, fx, fy, lims, pv, qn, rq, s, mm,
              pm, jac, tmat, cov):
    """Recompute the forward pass of one Gaussian in float64; returns (|q|, in_x, in_y, xz, yz)."""
    for r in range(3):
        pv[r] = (rot_v[r, 0] * means[n, 0] + rot_v[r, 1] * means[n, 1] + rot_v[r, 2] * means[n, 2]
                 + trans_v[r])
    x, y, z = pv[0], pv[1], pv[2]
    xz_raw = x / z
    yz_raw = y / z
    in_x = lims[0] <= xz_raw <= lims[1]
    in_y = lims[2] <= yz_raw <= lims[3]
    xz = min(max(xz_raw, lims[0]), lims[1])
    yz = min(max(yz_raw, lims[2]), lims[3])
    jac[0, 0] = fx / z
    jac[0, 1] = 0.0
    jac[0, 2] = -fx * xz / z
    jac[1, 0] = 0.0
    jac[1, 1] = fy / z
    jac[1, 2] = -fy * yz / z
    for r in range(2):
        for c in range(3):
            tmat[r, c] = jac[r, 0] * rot_v[0, c] + jac[r, 1] * rot_v[1, c] + jac[r, 2] * rot_v[2, c]
    for k in range(4):
        qn[k] = np.float64(quats[n, k])
    qnorm = math.sqrt(qn[0] * qn[0] + qn[1] * qn[1] + qn[2] * qn[2] + qn[3] * qn[3])
    qden = max(qnorm, _EPS)
    for k in range(4):
        qn[k] = qn[k] / qden
    _rotmat(qn[0], qn[1], qn[2], qn[3], rq)
    for k in range(3):
        s[k] = math.exp(np.float64(log_scales[n, k]))
    for r in range(3):
        for k in range(3):
            mm[r, k] = rq[r, k] * s[k]
    # cov2d = T Σ Tᵀ = P Pᵀ with P = T M (as project() computes it)
    for r in range(2):
        for c in range(3):
            pm[r, c] = tmat[r, 0] * mm[0, c] + tmat[r, 1] * mm[1, c] + tmat[r, 2] * mm[2, c]
    for r in range(2):
        for c in range(2):
            cov[r, c] = pm[r, 0] * pm[c, 0] + pm[r, 1] * pm[c, 1] + pm[r, 2] * pm[c, 2]
    return qnorm, in_x, in_y, xz, yz


@njit(inline="always")
def _load_sh(sh_dc, sh_rest, n, n_coef, out):
    """Gaussian n's first ``n_coef`` SH coefficients, dc then rest, as float64 into out (16, 3)."""
    for ch in range(3):
        out[0, ch] = np.float64(sh_dc[n, 0, ch])
    for k in range(1, n_coef):
        for ch in range(3):
            out[k, ch] = np.float64(sh_rest[n, k - 1, ch])


# -- forward (primal) ------------------------------------------------------------------------
@njit(parallel=True, fastmath=False, cache=True)
def project_forward_kernel(means, log_scales, quats, opacity_logits, sh_dc, sh_rest, rot_v,
                           trans_v, fx, fy,
                           cx, cy, lims, campos, degree, low_pass, near, width, height, tile,
                           keep, m2d, con, dep, rad, col, opa):
    """The primal of :func:`project` for every Gaussian, in float64, rounded to float32 outputs.

    Writes row n of the (N, ...) outputs and ``keep[n]`` (survives culling, as ``project()``
    decides it: z > near, det > 0, finite screen mean, non-empty tile rectangle); rows with
    ``keep[n] == False`` are left unspecified.
    """
    n_all = means.shape[0]
    n_coef = (degree + 1) * (degree + 1)
    grid_x = (width + tile - 1) // tile
    grid_y = (height + tile - 1) // tile
    chunk = 256
    for ci in prange((n_all + chunk - 1) // chunk):
        pv, qn, rq, s, mm, pm, jac, tmat, cov = _geometry_scratch()
        basis = np.empty(16)
        shc = np.empty((16, 3))
        for n in range(ci * chunk, min(n_all, (ci + 1) * chunk)):
            keep[n] = False
            z = (rot_v[2, 0] * means[n, 0] + rot_v[2, 1] * means[n, 1] + rot_v[2, 2] * means[n, 2]
                 + trans_v[2])
            if not z > near:
                continue
            _geometry(n, n, means, log_scales, quats, rot_v, trans_v, fx, fy, lims, pv, qn, rq, s,
                      mm, pm, jac, tmat, cov)
            x, y, z = pv[0], pv[1], pv[2]
            a = cov[0, 0] + low_pass
            b = cov[0, 1]
            c = cov[1, 1] + low_pass
            det = a * c - b * b
            u = fx * x / z + cx - 0.5
            v = fy * y / z + cy - 0.5
            if not (det > 0.0 and math.isfinite(u) and math.isfinite(v)):
                continue
            mid = 0.5 * (a + c)
            lam = mid + math.sqrt(max(mid * mid - det, 0.1))
            r = math.ceil(3.0 * math.sqrt(lam))
            # tile rectangle as tile_rect(): float32 screen mean, int truncation, clamp
            # (float32 arithmetic in tile_rect's order)
            uf, vf, rf = np.float32(u), np.float32(v), np.float32(r)
            tf, one = np.float32(tile), np.float32(1.0)
            x0 = min(max(np.trunc((uf - rf) / tf), 0.0), grid_x)
            x1 = min(max(np.trunc((uf + rf + tf - one) / tf), 0.0), grid_x)
            y0 = min(max(np.trunc((vf - rf) / tf), 0.0), grid_y)
            y1 = min(max(np.trunc((vf + rf + tf - one) / tf), 0.0), grid_y)
            if not (x1 > x0 and y1 > y0):
                continue
            keep[n] = True
            m2d[n, 0] = np.float32(u)
            m2d[n, 1] = np.float32(v)
            con[n, 0] = np.float32(c / det)
            con[n, 1] = np.float32(-b / det)
            con[n, 2] = np.float32(a / det)
            dep[n] = np.float32(z)
            rad[n] = np.int64(r)
            d0 = np.float64(means[n, 0]) - campos[0]
            d1 = np.float64(means[n, 1]) - campos[1]
            d2 = np.float64(means[n, 2]) - campos[2]
            den = max(math.sqrt(d0 * d0 + d1 * d1 + d2 * d2), _EPS)
            _sh_values(degree, d0 / den, d1 / den, d2 / den, basis)
            _load_sh(sh_dc, sh_rest, n, n_coef, shc)
            for ch in range(3):
                raw = 0.5
                for k in range(n_coef):
                    raw += basis[k] * shc[k, ch]
                col[n, ch] = np.float32(max(raw, 0.0))
            opa[n] = np.float32(1.0 / (1.0 + math.exp(-np.float64(opacity_logits[n]))))


# -- VJP --------------------------------------------------------------------------------------
@njit(parallel=True, fastmath=False, cache=True)
def project_vjp_kernel(means, log_scales, quats, sh_dc, sh_rest, ids, colors_out, opac_out, rot_v,
                       trans_v, fx, fy, lims, campos, degree, low_pass,
                       g_m2d, g_con, g_dep, g_col, g_op,
                       d_means, d_log_scales, d_quats, d_sh_dc, d_sh_rest, d_logits):
    """Gradients w.r.t. the raw parameters, written to the rows ``ids`` (zero elsewhere).

    Rows whose cotangents are all zero are skipped (their gradient is zero; in a training step
    that is a third to a half of the visible Gaussians: occluded, or covering no pixel)."""
    n_coef = (degree + 1) * (degree + 1)
    chunk = 256
    n_vis = ids.shape[0]
    for ci in prange((n_vis + chunk - 1) // chunk):
        pv, qn, rq, s, mm, pm, jac, tmat, cov = _geometry_scratch()
        gsym = np.empty((2, 2))
        d_p = np.empty((2, 3))
        d_t = np.empty((2, 3))
        d_m = np.empty((3, 3))
        d_r = np.empty((3, 3))
        basis = np.empty(16)
        bgrad = np.empty((16, 3))
        shc = np.empty((16, 3))
        for i in range(ci * chunk, min(n_vis, (ci + 1) * chunk)):
            if (g_m2d[i, 0] == 0.0 and g_m2d[i, 1] == 0.0 and g_con[i, 0] == 0.0
                    and g_con[i, 1] == 0.0 and g_con[i, 2] == 0.0 and g_dep[i] == 0.0
                    and g_col[i, 0] == 0.0 and g_col[i, 1] == 0.0 and g_col[i, 2] == 0.0
                    and g_op[i] == 0.0):
                continue  # no gradient reaches this Gaussian (covers no used pixel): rows stay 0
            n = ids[i]
            qnorm, in_x, in_y, xz, yz = _geometry(i, n, means, log_scales, quats, rot_v, trans_v,
                                                  fx, fy, lims, pv, qn, rq, s, mm, pm, jac, tmat, cov)
            x, y, z = pv[0], pv[1], pv[2]
            a = cov[0, 0] + low_pass
            b = cov[0, 1]
            c = cov[1, 1] + low_pass
            det = a * c - b * b
            det2 = det * det
            g0 = np.float64(g_con[i, 0])
            g1 = np.float64(g_con[i, 1])
            g2 = np.float64(g_con[i, 2])
            # conic = (c/det, -b/det, a/det)
            ga = g0 * (-c * c / det2) + g1 * (b * c / det2) + g2 * (1.0 / det - a * c / det2)
            gb = g0 * (2.0 * b * c / det2) + g1 * (-1.0 / det - 2.0 * b * b / det2) + g2 * (2.0 * a * b / det2)
            gc = g0 * (1.0 / det - c * a / det2) + g1 * (a * b / det2) + g2 * (-a * a / det2)
            # cov2d = P Pᵀ; only cov[0,0], cov[0,1], cov[1,1] are read: G = [[ga, gb], [0, gc]],
            # dL/dP = (G + Gᵀ) P, dL/dT = dL/dP Mᵀ, dL/dM = Tᵀ dL/dP
            gsym[0, 0] = 2.0 * ga
            gsym[0, 1] = gb
            gsym[1, 0] = gb
            gsym[1, 1] = 2.0 * gc
            for r in range(2):
                for l in range(3):
                    d_p[r, l] = gsym[r, 0] * pm[0, l] + gsym[r, 1] * pm[1, l]
            for r in range(2):
                for k in range(3):
                    d_t[r, k] = d_p[r, 0] * mm[k, 0] + d_p[r, 1] * mm[k, 1] + d_p[r, 2] * mm[k, 2]
            for k in range(3):
                for l in range(3):
                    d_m[k, l] = tmat[0, k] * d_p[0, l] + tmat[1, k] * d_p[1, l]
            for r in range(3):
                for k in range(3):
                    d_r[r, k] = d_m[r, k] * s[k]
            for k in range(3):
                ds = d_m[0, k] * rq[0, k] + d_m[1, k] * rq[1, k] + d_m[2, k] * rq[2, k]
                d_log_scales[n, k] = np.float32(ds * s[k])
            w, qx, qy, qz = qn[0], qn[1], qn[2], qn[3]
            dw = 2.0 * (-qz * d_r[0, 1] + qy * d_r[0, 2] + qz * d_r[1, 0] - qx * d_r[1, 2]
                        - qy * d_r[2, 0] + qx * d_r[2, 1])
            dx = 2.0 * (qy * d_r[0, 1] + qz * d_r[0, 2] + qy * d_r[1, 0] - 2.0 * qx * d_r[1, 1]
                        - w * d_r[1, 2] + qz * d_r[2, 0] + w * d_r[2, 1] - 2.0 * qx * d_r[2, 2])
            dy = 2.0 * (-2.0 * qy * d_r[0, 0] + qx * d_r[0, 1] + w * d_r[0, 2] + qx * d_r[1, 0]
                        + qz * d_r[1, 2] - w * d_r[2, 0] + qz * d_r[2, 1] - 2.0 * qy * d_r[2, 2])
            dz = 2.0 * (-2.0 * qz * d_r[0, 0] - w * d_r[0, 1] + qx * d_r[0, 2] + w * d_r[1, 0]
                        - 2.0 * qz * d_r[1, 1] + qy * d_r[1, 2] + qx * d_r[2, 0] + qy * d_r[2, 1])
            if qnorm > _EPS:
                dot = w * dw + qx * dx + qy * dy + qz * dz
                d_quats[n, 0] = np.float32((dw - w * dot) / qnorm)
                d_quats[n, 1] = np.float32((dx - qx * dot) / qnorm)
                d_quats[n, 2] = np.float32((dy - qy * dot) / qnorm)
                d_quats[n, 3] = np.float32((dz - qz * dot) / qnorm)
            else:
                d_quats[n, 0] = np.float32(dw / _EPS)
                d_quats[n, 1] = np.float32(dx / _EPS)
                d_quats[n, 2] = np.float32(dy / _EPS)
                d_quats[n, 3] = np.float32(dz / _EPS)
            # T = J R_view: dL/dJ = dL/dT R_viewᵀ
            dj00 = d_t[0, 0] * rot_v[0, 0] + d_t[0, 1] * rot_v[0, 1] + d_t[0, 2] * rot_v[0, 2]
            dj02 = d_t[0, 0] * rot_v[2, 0] + d_t[0, 1] * rot_v[2, 1] + d_t[0, 2] * rot_v[2, 2]
            dj11 = d_t[1, 0] * rot_v[1, 0] + d_t[1, 1] * rot_v[1, 1] + d_t[1, 2] * rot_v[1, 2]
            dj12 = d_t[1, 0] * rot_v[2, 0] + d_t[1, 1] * rot_v[2, 1] + d_t[1, 2] * rot_v[2, 2]
            z2 = z * z
            gx = 0.0
            gy = 0.0
            gz = np.float64(g_dep[i])
            gz += dj00 * (-fx / z2) + dj02 * (fx * xz / z2) + dj11 * (-fy / z2) + dj12 * (fy * yz / z2)
            d_xz = dj02 * (-fx / z)
            d_yz = dj12 * (-fy / z)
            if in_x:
                gx += d_xz / z
                gz -= d_xz * x / z2
            if in_y:
                gy += d_yz / z
                gz -= d_yz * y / z2
            gu = np.float64(g_m2d[i, 0])
            gv = np.float64(g_m2d[i, 1])
            gx += gu * fx / z
            gy += gv * fy / z
            gz -= (gu * fx * x + gv * fy * y) / z2
            dm0 = rot_v[0, 0] * gx + rot_v[1, 0] * gy + rot_v[2, 0] * gz
            dm1 = rot_v[0, 1] * gx + rot_v[1, 1] * gy + rot_v[2, 1] * gz
            dm2 = rot_v[0, 2] * gx + rot_v[1, 2] * gy + rot_v[2, 2] * gz
            # colour: max(SH(dir) + 0.5, 0), dir = normalize(mean − camera centre)
            dv0 = np.float64(means[n, 0]) - campos[0]
            dv1 = np.float64(means[n, 1]) - campos[1]
            dv2 = np.float64(means[n, 2]) - campos[2]
            nd = math.sqrt(dv0 * dv0 + dv1 * dv1 + dv2 * dv2)
            den = max(nd, _EPS)
            ux, uy, uz = dv0 / den, dv1 / den, dv2 / den
            _sh_values(degree, ux, uy, uz, basis)
            _sh_grads(degree, ux, uy, uz, bgrad)
            _load_sh(sh_dc, sh_rest, n, n_coef, shc)
            gdir0 = 0.0
            gdir1 = 0.0
            gdir2 = 0.0
            for ch in range(3):
                raw = 0.5
                for k in range(n_coef):
                    raw += basis[k] * shc[k, ch]
                gcol = np.float64(g_col[i, ch])
                if not (colors_out[i, ch] > 0.0 or raw >= 0.0):
                    gcol = 0.0
                d_sh_dc[n, 0, ch] = np.float32(gcol * basis[0])
                for k in range(1, n_coef):
                    d_sh_rest[n, k - 1, ch] = np.float32(gcol * basis[k])
                for k in range(n_coef):
                    shv = gcol * shc[k, ch]
                    gdir0 += shv * bgrad[k, 0]
                    gdir1 += shv * bgrad[k, 1]
                    gdir2 += shv * bgrad[k, 2]
            if nd > _EPS:
                dot = ux * gdir0 + uy * gdir1 + uz * gdir2
                dm0 += (gdir0 - ux * dot) / nd
                dm1 += (gdir1 - uy * dot) / nd
                dm2 += (gdir2 - uz * dot) / nd
            else:
                dm0 += gdir0 / _EPS
                dm1 += gdir1 / _EPS
                dm2 += gdir2 / _EPS
            d_means[n, 0] = np.float32(dm0)
            d_means[n, 1] = np.float32(dm1)
            d_means[n, 2] = np.float32(dm2)
            o = np.float64(opac_out[i])
            d_logits[n] = np.float32(np.float64(g_op[i]) * o * (1.0 - o))


# -- JVP --------------------------------------------------------------------------------------
@njit(parallel=True, fastmath=False, cache=True)
def project_jvp_kernel(means, log_scales, quats, sh_dc, sh_rest, ids, colors_out, opac_out, rot_v,
                       trans_v, fx, fy, lims, campos, degree, low_pass,
                       t_means, t_log_scales, t_quats, t_sh_dc, t_sh_rest, t_logits,
                       o_m2d, o_con, o_dep, o_col, o_op):
    """Tangents of (means2d, conics, depths, colors, opacities) for the visible rows ``ids``."""
    n_coef = (degree + 1) * (degree + 1)
    chunk = 256
    n_vis = ids.shape[0]
    for ci in prange((n_vis + chunk - 1) // chunk):
        pv, qn, rq, s, mm, pm, jac, tmat, cov = _geometry_scratch()
        jd = np.empty((2, 3))
        td = np.empty((2, 3))
        qd = np.empty(4)
        rd = np.empty((3, 3))
        md = np.empty((3, 3))
        pd = np.empty((2, 3))
        covd = np.empty((2, 2))
        basis = np.empty(16)
        bgrad = np.empty((16, 3))
        shc = np.empty((16, 3))
        tsh = np.empty((16, 3))
        for i in range(ci * chunk, min(n_vis, (ci + 1) * chunk)):
            jd[...] = 0.0
            n = ids[i]
            qnorm, in_x, in_y, xz, yz = _geometry(i, n, means, log_scales, quats, rot_v, trans_v,
                                                  fx, fy, lims, pv, qn, rq, s, mm, pm, jac, tmat, cov)
            x, y, z = pv[0], pv[1], pv[2]
            tm0 = np.float64(t_means[n, 0])
            tm1 = np.float64(t_means[n, 1])
            tm2 = np.float64(t_means[n, 2])
            xd = rot_v[0, 0] * tm0 + rot_v[0, 1] * tm1 + rot_v[0, 2] * tm2
            yd = rot_v[1, 0] * tm0 + rot_v[1, 1] * tm1 + rot_v[1, 2] * tm2
            zd = rot_v[2, 0] * tm0 + rot_v[2, 1] * tm1 + rot_v[2, 2] * tm2
            z2 = z * z
            o_m2d[i, 0] = np.float32(fx * (xd / z - x * zd / z2))
            o_m2d[i, 1] = np.float32(fy * (yd / z - y * zd / z2))
            o_dep[i] = np.float32(zd)
            xzd = (xd / z - x * zd / z2) if in_x else 0.0
            yzd = (yd / z - y * zd / z2) if in_y else 0.0
            jd[0, 0] = -fx * zd / z2
            jd[0, 2] = -fx * (xzd / z - xz * zd / z2)
            jd[1, 1] = -fy * zd / z2
            jd[1, 2] = -fy * (yzd / z - yz * zd / z2)
            for r in range(2):
                for c in range(3):
                    td[r, c] = jd[r, 0] * rot_v[0, c] + jd[r, 1] * rot_v[1, c] + jd[r, 2] * rot_v[2, c]
            # quaternion normalisation and rotation tangents
            for k in range(4):
                qd[k] = np.float64(t_quats[n, k])
            if qnorm > _EPS:
                dot = qn[0] * qd[0] + qn[1] * qd[1] + qn[2] * qd[2] + qn[3] * qd[3]
                for k in range(4):
                    qd[k] = (qd[k] - qn[k] * dot) / qnorm
            else:
                for k in range(4):
                    qd[k] = qd[k] / _EPS
            w, qx, qy, qz = qn[0], qn[1], qn[2], qn[3]
            wd, xd_, yd_, zd_ = qd[0], qd[1], qd[2], qd[3]
            rd[0, 0] = -4.0 * (qy * yd_ + qz * zd_)
            rd[0, 1] = 2.0 * (xd_ * qy + qx * yd_ - wd * qz - w * zd_)
            rd[0, 2] = 2.0 * (xd_ * qz + qx * zd_ + wd * qy + w * yd_)
            rd[1, 0] = 2.0 * (xd_ * qy + qx * yd_ + wd * qz + w * zd_)
            rd[1, 1] = -4.0 * (qx * xd_ + qz * zd_)
            rd[1, 2] = 2.0 * (yd_ * qz + qy * zd_ - wd * qx - w * xd_)
            rd[2, 0] = 2.0 * (xd_ * qz + qx * zd_ - wd * qy - w * yd_)
            rd[2, 1] = 2.0 * (yd_ * qz + qy * zd_ + wd * qx + w * xd_)
            rd[2, 2] = -4.0 * (qx * xd_ + qy * yd_)
            for r in range(3):
                for k in range(3):
                    md[r, k] = rd[r, k] * s[k] + rq[r, k] * s[k] * np.float64(t_log_scales[n, k])
            # Ṗ = Ṫ M + T Ṁ ; ċov = Ṗ Pᵀ + P Ṗᵀ
            for r in range(2):
                for c in range(3):
                    pd[r, c] = (td[r, 0] * mm[0, c] + td[r, 1] * mm[1, c] + td[r, 2] * mm[2, c]
                                + tmat[r, 0] * md[0, c] + tmat[r, 1] * md[1, c] + tmat[r, 2] * md[2, c])
            for r in range(2):
                for c in range(2):
                    covd[r, c] = (pd[r, 0] * pm[c, 0] + pd[r, 1] * pm[c, 1] + pd[r, 2] * pm[c, 2]
                                  + pm[r, 0] * pd[c, 0] + pm[r, 1] * pd[c, 1] + pm[r, 2] * pd[c, 2])
            a = cov[0, 0] + low_pass
            b = cov[0, 1]
            c_ = cov[1, 1] + low_pass
            det = a * c_ - b * b
            ad, bd, cd = covd[0, 0], covd[0, 1], covd[1, 1]
            detd = ad * c_ + a * cd - 2.0 * b * bd
            det2 = det * det
            o_con[i, 0] = np.float32((cd * det - c_ * detd) / det2)
            o_con[i, 1] = np.float32(-(bd * det - b * detd) / det2)
            o_con[i, 2] = np.float32((ad * det - a * detd) / det2)
            # colour
            dv0 = np.float64(means[n, 0]) - campos[0]
            dv1 = np.float64(means[n, 1]) - campos[1]
            dv2 = np.float64(means[n, 2]) - campos[2]
            nd = math.sqrt(dv0 * dv0 + dv1 * dv1 + dv2 * dv2)
            den = max(nd, _EPS)
            ux, uy, uz = dv0 / den, dv1 / den, dv2 / den
            if nd > _EPS:
                dot = ux * tm0 + uy * tm1 + uz * tm2
                ud0 = (tm0 - ux * dot) / nd
                ud1 = (tm1 - uy * dot) / nd
                ud2 = (tm2 - uz * dot) / nd
            else:
                ud0, ud1, ud2 = tm0 / _EPS, tm1 / _EPS, tm2 / _EPS
            _sh_values(degree, ux, uy, uz, basis)
            _sh_grads(degree, ux, uy, uz, bgrad)
            _load_sh(sh_dc, sh_rest, n, n_coef, shc)
            _load_sh(t_sh_dc, t_sh_rest, n, n_coef, tsh)
            for ch in range(3):
                raw = 0.5
                acc = 0.0
                for k in range(n_coef):
                    shv = shc[k, ch]
                    raw += basis[k] * shv
                    acc += (tsh[k, ch] * basis[k]
                            + shv * (bgrad[k, 0] * ud0 + bgrad[k, 1] * ud1 + bgrad[k, 2] * ud2))
                if not (colors_out[i, ch] > 0.0 or raw >= 0.0):
                    acc = 0.0
                o_col[i, ch] = np.float32(acc)
            o = np.float64(opac_out[i])
            o_op[i] = np.float32(np.float64(t_logits[n]) * o * (1.0 - o))


# -- torch side -----------------------------------------------------------------------------
def _camera_arrays(camera: Camera):
    w2c = camera.world_to_camera.detach().to("cpu", torch.float32).double().numpy()
    w, h, fx, fy, cx, cy = camera.width, camera.height, camera.fx, camera.fy, camera.cx, camera.cy
    lims = np.array([(-0.15 * w - cx) / fx, (1.15 * w - cx) / fx,
                     (-0.15 * h - cy) / fy, (1.15 * h - cy) / fy], dtype=np.float64)
    campos = camera.camera_center.detach().cpu().double().numpy()
    return (np.ascontiguousarray(w2c[:3, :3]), np.ascontiguousarray(w2c[:3, 3]), float(fx),
            float(fy), lims, campos)


def _np(t: torch.Tensor, dtype=torch.float32) -> np.ndarray:
    return t.detach().to("cpu", dtype).contiguous().numpy()


def _np_or_zeros(t: torch.Tensor | None, like: torch.Tensor) -> np.ndarray:
    return _np(t) if t is not None else np.zeros(tuple(like.shape), dtype=np.float32)


class _ProjectCPU(torch.autograd.Function):
    @staticmethod
    def forward(means, log_scales, quats, opacity_logits, sh_dc, sh_rest, camera, sh_degree):
        n = means.shape[0]
        rot_v, trans_v, fx, fy, lims, campos = _camera_arrays(camera)
        keep = np.zeros(n, dtype=np.bool_)
        outs = [np.empty(shape, dtype=dt) for shape, dt in (
            ((n, 2), np.float32), ((n, 3), np.float32), ((n,), np.float32), ((n,), np.int64),
            ((n, 3), np.float32), ((n,), np.float32))]
        if n:
            project_forward_kernel(
                _np(means), _np(log_scales), _np(quats), _np(opacity_logits), _np(sh_dc),
                _np(sh_rest), rot_v, trans_v, fx, fy, float(camera.cx), float(camera.cy), lims,
                campos, int(sh_degree), LOW_PASS, NEAR_PLANE, camera.width, camera.height,
                TILE_SIZE, keep, *outs)
        ids = np.flatnonzero(keep)
        if ids.shape[0] < n:  # numpy gathers: several times faster than torch indexing here
            outs = [o[ids] for o in outs]
        m2d, conics, depths, radii, colors, opacities = (torch.from_numpy(o) for o in outs)
        return m2d, conics, depths, colors, opacities, torch.from_numpy(ids), radii

    @staticmethod
    def setup_context(ctx, inputs, output):
        means, log_scales, quats, opacity_logits, sh_dc, sh_rest, camera, sh_degree = inputs
        _, _, _, colors, opacities, ids, radii = output
        ctx.mark_non_differentiable(ids, radii)
        ctx.save_for_backward(means, log_scales, quats, sh_dc, sh_rest, ids, colors, opacities)
        ctx.save_for_forward(means, log_scales, quats, sh_dc, sh_rest, ids, colors, opacities)
        ctx.camera = camera
        ctx.sh_degree = int(sh_degree)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, g_m2d, g_con, g_dep, g_col, g_op, _g_ids, _g_radii):
        saved = [primal(t) for t in ctx.saved_tensors]
        grads_out = [primal(t) for t in (g_m2d, g_con, g_dep, g_col, g_op)]
        d_means, d_ls, d_q, d_dc, d_rest, d_logits = _ProjectCPUVJP.apply(
            *saved, *grads_out, ctx.camera, ctx.sh_degree)
        return d_means, d_ls, d_q, d_logits, d_dc, d_rest, None, None

    @staticmethod
    def jvp(ctx, t_means, t_ls, t_q, t_logits, t_dc, t_rest, _t_cam, _t_deg):
        saved = [primal(t) for t in ctx.saved_tensors]
        tangents = [primal(t) for t in (t_means, t_ls, t_q, t_logits, t_dc, t_rest)]
        outs = _ProjectCPUJVP.apply(*saved, *tangents, ctx.camera, ctx.sh_degree)
        return tuple(outs) + (None, None)

    @staticmethod
    def vmap(info, in_dims, *args):
        raise NotImplementedError("project_cpu does not support vmap; use project()")


class _ProjectCPUVJP(torch.autograd.Function):
    @staticmethod
    def forward(means, log_scales, quats, sh_dc, sh_rest, ids, colors, opacities, g_m2d, g_con,
                g_dep, g_col, g_op, camera, sh_degree):
        n, v = means.shape[0], ids.shape[0]
        rot_v, trans_v, fx, fy, lims, campos = _camera_arrays(camera)
        # written straight into separate dc / rest arrays: autograd then takes them as the
        # parameters' .grad without the copy that splitting one (N, 16, 3) gradient would cost
        outs = [np.zeros(shape, dtype=np.float32)
                for shape in ((n, 3), (n, 3), (n, 4), tuple(sh_dc.shape), tuple(sh_rest.shape), (n,))]
        if v:
            project_vjp_kernel(
                _np(means), _np(log_scales), _np(quats), _np(sh_dc), _np(sh_rest),
                _np(ids, torch.int64), _np(colors), _np(opacities), rot_v, trans_v, fx, fy, lims,
                campos, sh_degree, LOW_PASS,
                _np_or_zeros(g_m2d, torch.empty(v, 2)), _np_or_zeros(g_con, torch.empty(v, 3)),
                _np_or_zeros(g_dep, torch.empty(v)), _np_or_zeros(g_col, torch.empty(v, 3)),
                _np_or_zeros(g_op, torch.empty(v)), *outs)
        dtype = means.dtype
        return tuple(torch.from_numpy(o).to(dtype) for o in outs)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError("double backward through project_cpu is not supported; "
                                  "use project()")


class _ProjectCPUJVP(torch.autograd.Function):
    @staticmethod
    def forward(means, log_scales, quats, sh_dc, sh_rest, ids, colors, opacities, t_means, t_ls,
                t_q, t_logits, t_dc, t_rest, camera, sh_degree):
        v = ids.shape[0]
        rot_v, trans_v, fx, fy, lims, campos = _camera_arrays(camera)
        outs = [np.zeros(shape, dtype=np.float32) for shape in ((v, 2), (v, 3), (v,), (v, 3), (v,))]
        if v:
            project_jvp_kernel(
                _np(means), _np(log_scales), _np(quats), _np(sh_dc), _np(sh_rest),
                _np(ids, torch.int64), _np(colors), _np(opacities), rot_v, trans_v, fx, fy, lims,
                campos, sh_degree, LOW_PASS,
                _np_or_zeros(t_means, means), _np_or_zeros(t_ls, log_scales),
                _np_or_zeros(t_q, quats), _np_or_zeros(t_dc, sh_dc), _np_or_zeros(t_rest, sh_rest),
                _np_or_zeros(t_logits, torch.empty(means.shape[0])), *outs)
        dtype = means.dtype
        return tuple(torch.from_numpy(o).to(dtype) for o in outs)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError("reverse mode over the JVP of project_cpu is not supported")


def project_cpu(
    means: torch.Tensor,
    log_scales: torch.Tensor,
    quats: torch.Tensor,
    opacity_logits: torch.Tensor,
    sh_dc: torch.Tensor,
    sh_rest: torch.Tensor,
    camera: Camera,
    sh_degree: int,
) -> Projected:
    """:func:`~trsplat.render.project.project` with numba VJP / JVP kernels (see module doc)."""
    tensors = (means, log_scales, quats, opacity_logits, sh_dc, sh_rest)
    if any(t.dtype != torch.float32 or t.device.type != "cpu" for t in tensors):
        return project(means, log_scales, quats, opacity_logits, sh_dc, sh_rest, camera, sh_degree)
    m2d, conics, depths, colors, opacities, ids, radii = _ProjectCPU.apply(
        means, log_scales, quats, opacity_logits, sh_dc, sh_rest, camera, int(sh_degree))
    return Projected(ids=ids, means2d=m2d, conics=conics, depths=depths, radii=radii,
                     colors=colors, opacities=opacities)
