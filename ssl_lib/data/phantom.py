"""Analytic CT phantoms in Hounsfield units: chest, abdomen/pelvis and head slices with masks.

The synthetic stand-in for the data of Wolf et al. 2023 (LIDC-IDRI chest CT for pre-training;
COVID-19, OrganSMNIST and Brain hemorrhage for fine-tuning) is drawn here, fully vectorised in
numpy. Geometry is continuous: a slice is evaluated on coordinate arrays ``X, Y`` (shape
``(H, W)``) in *field units* where the field of view spans ``[-1, 1]`` along the shorter image
side; ``X`` grows to the image right (the patient's left, radiological convention) and ``Y``
grows downwards (posterior). So any image size, and any crop window (the organ patches), is
rendered from the same anatomy without resampling.

A patient's anatomy is a dataclass sampled once from a numpy ``Generator`` (sizes, positions,
lung shape, vessel and airway trees as 3-D line segments, nodules as spheres); a slice is that
anatomy cut at a height ``z`` (0 = top of the scan, 1 = bottom). :func:`finish` adds the
scanner: a small blur (partial volume) and Gaussian noise correlated by a small blur.

Public helpers return ``(hu, masks)``: ``hu`` float32 ``(H, W)``, ``masks`` a dict of boolean
``(H, W)`` arrays (organ names as in OrganSMNIST, ``"lesion"`` for the findings).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy.ndimage import gaussian_filter

#: Height of the chest scan in field units (z in [0, 1] maps to Z in [0, LZ]).
LZ = 1.4

#: OrganSMNIST class order (MedMNIST v2).
ORGAN_CLASSES = (
    "bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right",
    "liver", "lung-left", "lung-right", "pancreas", "spleen",
)
#: Body level each organ is cut from.
ORGAN_LEVEL = {
    "heart": "thorax", "lung-left": "thorax", "lung-right": "thorax",
    "liver": "abdomen", "spleen": "abdomen", "kidney-left": "abdomen", "kidney-right": "abdomen",
    "pancreas": "abdomen", "bladder": "pelvis", "femur-left": "pelvis", "femur-right": "pelvis",
}


# --------------------------------------------------------------------------------------------
# primitives (all broadcast over the pixel grid)
# --------------------------------------------------------------------------------------------
def grid(shape: tuple[int, int] | int, centre=(0.0, 0.0), half: float | None = None):
    """Pixel-centre coordinates ``(X, Y)`` float32 ``(H, W)`` and the pixel size in field units.

    Default: the field ``[-1, 1]`` along the shorter side (isotropic pixels). With ``half`` the
    grid covers ``centre ± half`` along the shorter side (a crop window).
    """
    h, w = (shape, shape) if isinstance(shape, int) else shape
    half = 1.0 if half is None else float(half)
    px = 2.0 * half / min(h, w)
    xs = centre[0] + (np.arange(w, dtype=np.float32) - (w - 1) / 2.0) * px
    ys = centre[1] + (np.arange(h, dtype=np.float32) - (h - 1) / 2.0) * px
    X, Y = np.meshgrid(xs, ys)
    return X.astype(np.float32), Y.astype(np.float32), px


def _rho(X, Y, cx, cy, a, b, angle=0.0):
    """Normalised elliptical radius (``< 1`` inside the ellipse centred ``(cx, cy)``)."""
    dx, dy = X - cx, Y - cy
    if angle:
        c, s = np.cos(angle), np.sin(angle)
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    return np.sqrt((dx / a) ** 2 + (dy / b) ** 2)


def _theta(X, Y, cx, cy, a=1.0, b=1.0):
    return np.arctan2((Y - cy) / b, (X - cx) / a)


def _wobble(theta, coeffs) -> np.ndarray:
    """``1 + sum_k c_k cos(k theta + phi_k)`` for ``coeffs = [(k, c, phi), ...]``."""
    out = np.ones_like(theta)
    for k, c, phi in coeffs:
        out += c * np.cos(k * theta + phi)
    return out


def _segments_field(X, Y, segs: np.ndarray, Zs: float, half: float, pad: float = 0.0) -> np.ndarray:
    """Signed distance ``d - r`` (field units) to 3-D tubes ``segs`` (n, 7: x0 y0 z0 x1 y1 z1 r)
    cut by the slab ``Zs ± half``; ``+inf`` far from every tube (beyond ``pad``).

    Each tube is clipped to the slab, projected onto the slice and measured against the
    projected segment: tubes along z show as discs, oblique ones as short bars, in-plane ones
    as long bars. ``X``, ``Y`` must be a regular grid as made by :func:`grid`; each tube is
    evaluated only inside its bounding box.
    """
    out = np.full(X.shape, np.inf, np.float32)
    if segs is None or len(segs) == 0:
        return out
    p0, p1, r = segs[:, 0:3].astype(float), segs[:, 3:6].astype(float), segs[:, 6].astype(float)
    dz = p1[:, 2] - p0[:, 2]
    lo, hi = Zs - half - r, Zs + half + r
    flat = np.abs(dz) < 1e-9
    safe = np.where(flat, 1.0, dz)
    ta, tb = (lo - p0[:, 2]) / safe, (hi - p0[:, 2]) / safe
    t0 = np.clip(np.where(flat, 0.0, np.minimum(ta, tb)), 0, 1)
    t1 = np.clip(np.where(flat, 1.0, np.maximum(ta, tb)), 0, 1)
    keep = np.where(flat, (p0[:, 2] >= lo) & (p0[:, 2] <= hi), t1 > t0)
    xs, ys = X[0], Y[:, 0]
    px = float(xs[1] - xs[0]) if len(xs) > 1 else 1.0
    for i in np.flatnonzero(keep):
        a = p0[i, :2] + (p1[i, :2] - p0[i, :2]) * t0[i]
        b = p0[i, :2] + (p1[i, :2] - p0[i, :2]) * t1[i]
        m = r[i] + pad + px
        j0, j1 = np.searchsorted(xs, min(a[0], b[0]) - m), np.searchsorted(xs, max(a[0], b[0]) + m)
        i0, i1 = np.searchsorted(ys, min(a[1], b[1]) - m), np.searchsorted(ys, max(a[1], b[1]) + m)
        if j1 <= j0 or i1 <= i0:
            continue
        qx, qy = X[i0:i1, j0:j1] - a[0], Y[i0:i1, j0:j1] - a[1]
        abx, aby = b[0] - a[0], b[1] - a[1]
        t = np.clip((qx * abx + qy * aby) / max(abx * abx + aby * aby, 1e-12), 0.0, 1.0)
        d = np.sqrt((qx - t * abx) ** 2 + (qy - t * aby) ** 2) - r[i]
        np.minimum(out[i0:i1, j0:j1], d, out=out[i0:i1, j0:j1])
    return out


def _segments_mask(X, Y, segs: np.ndarray, Zs: float, half: float) -> np.ndarray:
    """Boolean mask of the tubes of :func:`_segments_field`."""
    return _segments_field(X, Y, segs, Zs, half) <= 0


def _smooth_field(rng: np.random.Generator, shape, sigma_px: float) -> np.ndarray:
    """Zero-mean unit-std smooth random field (Gaussian-blurred white noise)."""
    f = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_px, mode="reflect")
    return (f - f.mean()) / (f.std() + 1e-6)


@lru_cache(maxsize=16)
def _noise_gain(corr_px: float) -> float:
    """Factor restoring unit std after blurring white noise by ``corr_px``."""
    delta = np.zeros((15, 15), np.float32)
    delta[7, 7] = 1.0
    return float(1.0 / np.sqrt((gaussian_filter(delta, corr_px, mode="constant") ** 2).sum()))


def finish(hu: np.ndarray, rng: np.random.Generator, noise_hu: float, blur_px: float = 0.6,
           corr_px: float = 0.7) -> np.ndarray:
    """Scanner model: blur ``hu`` by ``blur_px`` (partial volume), add Gaussian noise of std
    ``noise_hu`` correlated by a ``corr_px`` blur. float32 ``(H, W)`` -> float32 ``(H, W)``."""
    out = gaussian_filter(hu.astype(np.float32), blur_px, mode="nearest") if blur_px > 0 else hu.astype(np.float32)
    if noise_hu > 0:
        n = rng.standard_normal(hu.shape).astype(np.float32)
        if corr_px > 0:
            n = gaussian_filter(n, corr_px, mode="reflect") * _noise_gain(float(corr_px))
        out = out + np.float32(noise_hu) * n
    return out.astype(np.float32)


# --------------------------------------------------------------------------------------------
# trunk anatomy (chest, abdomen, pelvis share the body outline)
# --------------------------------------------------------------------------------------------
@dataclass
class Trunk:
    """One synthetic patient's trunk. Lengths in field units; HU offsets in HU."""

    cx: float
    cy: float
    a: float                # body semi-axis (x)
    b: float                # body semi-axis (y)
    t_fat: float            # subcutaneous fat thickness, fraction of the body radius
    t_mus: float            # muscle layer thickness, fraction of the body radius
    fat_hu: float
    lung_hu: float          # lung parenchyma baseline
    lung_dx: float
    lung_ax: float
    lung_ay: float
    lung_wobble: tuple      # per lung: ((k, c, phi), ...)
    lung_top: float
    lung_bottom: tuple      # (right, left) lung base z
    heart: tuple            # dx, dy, ax, ay, angle, z0, z1
    rib_n: float
    rib_phase: float
    gravity_hu: float       # dependent (posterior) density gradient of the lungs
    airways: np.ndarray     # (n, 7) tubes
    vessels: np.ndarray     # (n, 7) tubes
    nodules: np.ndarray     # (n, 4) x, y, Z, r
    organ_jitter: np.ndarray = field(default_factory=lambda: np.zeros((16, 4), np.float32))
    organ_hu: dict = field(default_factory=dict)


def _tree(rng, start, directions, length, radius, depth, shrink=0.72, spread=0.55) -> list:
    """Random branching tree of 3-D tubes grown from ``start`` along ``directions``."""
    out = []
    stack = [(np.asarray(start, float), np.asarray(d, float) / np.linalg.norm(d), length, radius, 0)
             for d in directions]
    while stack:
        p, d, L, r, lvl = stack.pop()
        q = p + d * L * rng.uniform(0.8, 1.2)
        out.append([*p, *q, r])
        if lvl + 1 < depth:
            for _ in range(2):
                nd = d + rng.normal(0, spread, 3)
                stack.append((q, nd / np.linalg.norm(nd), L * shrink, r * shrink, lvl + 1))
    return out


def sample_trunk(rng: np.random.Generator, nodules: int | None = None) -> Trunk:
    """Draw one patient's trunk anatomy (body, lungs, heart, airway and vessel trees, nodules)."""
    cx, cy = rng.normal(0, 0.025), rng.normal(0.02, 0.025)
    a, b = rng.uniform(0.70, 0.84), rng.uniform(0.48, 0.60)
    t_fat, t_mus = rng.uniform(0.05, 0.14), rng.uniform(0.07, 0.11)
    sx, sy = a / 0.78, b / 0.55
    lung_dx = rng.uniform(0.28, 0.33) * sx
    lung_ax, lung_ay = rng.uniform(0.22, 0.27) * sx, rng.uniform(0.33, 0.39) * sy
    wob = tuple(tuple((k, rng.uniform(0.0, 0.07), rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4))
                for _ in range(2))
    lung_top = rng.uniform(0.02, 0.08)
    bottom_r = rng.uniform(0.84, 0.92)
    bottom_l = min(0.99, bottom_r + rng.uniform(0.02, 0.07))
    heart = (rng.uniform(0.05, 0.12), rng.uniform(-0.14, -0.06), rng.uniform(0.20, 0.26) * sx,
             rng.uniform(0.16, 0.21) * sy, rng.uniform(-0.5, -0.2), rng.uniform(0.42, 0.5), rng.uniform(0.93, 1.05))
    # airways: trachea -> carina -> main bronchi -> small trees in each lung
    tr_y = cy - rng.uniform(0.10, 0.16)
    zc = LZ * rng.uniform(0.32, 0.40)
    air = [[cx, tr_y, -0.3, cx, tr_y, zc, rng.uniform(0.045, 0.06)]]
    veins = []
    for side in (-1, 1):
        hil = np.array([cx + side * lung_dx * 0.55, cy - 0.02, zc + LZ * 0.1])
        air.append([cx, tr_y, zc, *hil, 0.032])
        dirs = [(side * 0.5, -0.1, -1.0), (side * 0.4, 0.3, 1.0), (side * 1.0, 0.0, 0.2), (side * 0.5, -0.8, 0.2)]
        air += _tree(rng, hil, dirs, 0.14, 0.022, 2)
        veins += _tree(rng, hil, dirs, 0.2, 0.026, 3)
        veins += _tree(rng, hil + np.array([0.0, 0.04, 0.05]), dirs, 0.18, 0.022, 3)
    # small peripheral vessels scattered in the lung volume
    n_small = 90
    c = np.stack([cx + rng.choice([-1, 1], n_small) * lung_dx + rng.uniform(-1, 1, n_small) * lung_ax,
                  cy + rng.uniform(-1, 1, n_small) * lung_ay,
                  rng.uniform(0.05, 0.95, n_small) * LZ], 1)
    d = rng.normal(0, 1, (n_small, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    L = rng.uniform(0.03, 0.08, (n_small, 1))
    small = np.concatenate([c - d * L, c + d * L, rng.uniform(0.006, 0.012, (n_small, 1))], 1)
    vessels = np.concatenate([np.asarray(veins, float), small], 0).astype(np.float32)
    n_nod = rng.integers(0, 4) if nodules is None else nodules
    nod = []
    for _ in range(n_nod):
        side = rng.choice([-1, 1])
        nod.append([cx + side * lung_dx + rng.uniform(-0.5, 0.5) * lung_ax,
                    cy + rng.uniform(-0.5, 0.5) * lung_ay, LZ * rng.uniform(0.2, 0.75), rng.uniform(0.02, 0.06)])
    organ_hu = {"liver": rng.uniform(50, 70), "spleen": rng.uniform(40, 60), "kidney": rng.uniform(120, 190),
                "pancreas": rng.uniform(35, 55), "bladder": rng.uniform(0, 20), "muscle": rng.uniform(35, 55),
                "bowel": rng.uniform(10, 40)}
    return Trunk(cx, cy, a, b, t_fat, t_mus, rng.uniform(-120, -80), rng.uniform(-880, -800),
                 lung_dx, lung_ax, lung_ay, wob, lung_top, (bottom_r, bottom_l), heart,
                 rng.uniform(9, 12), rng.uniform(0, 2 * np.pi), rng.uniform(0, 80),
                 np.asarray(air, np.float32), vessels, np.asarray(nod, np.float32).reshape(-1, 4),
                 rng.uniform(-1, 1, (16, 4)).astype(np.float32), organ_hu)


def _walls(t: Trunk, X, Y, hu, scale=(1.0, 1.0), fat_extra=0.0):
    """Air, body outline, subcutaneous fat and muscle; returns body mask and cavity rho."""
    a, b = t.a * scale[0], t.b * scale[1]
    rb = _rho(X, Y, t.cx, t.cy, a, b)
    body = rb < 1.0
    hu[body] = t.fat_hu
    f = min(0.3, t.t_fat + fat_extra)
    hu[rb < 1.0 - f] = t.organ_hu.get("muscle", 45.0)
    cavity_edge = 1.0 - f - t.t_mus
    return body, rb, cavity_edge, a, b


def _spine(t: Trunk, X, Y, hu, bone, y_body: float, r=0.085):
    """Vertebra: body (cancellous ~450 HU, cortical rim ~1000 HU), canal, arch, spinous process."""
    vb = _rho(X, Y, t.cx, y_body, r * 1.1, r)
    hu[vb < 1] = 450.0
    hu[(vb < 1) & (vb > 0.8)] = 1000.0
    cy_canal = y_body + r + 0.045
    rc = _rho(X, Y, t.cx, cy_canal, 0.04, 0.035)
    arch = (rc < 1.7) & (rc >= 1.0) & (Y > y_body + r * 0.6)
    hu[arch] = 750.0
    hu[rc < 1.0] = 20.0
    sp = _rho(X, Y, t.cx, cy_canal + 0.085, 0.018, 0.04)
    hu[sp < 1] = 750.0
    bone |= (vb < 1) | arch | (sp < 1)


def _chest(t: Trunk, z: float, X, Y, half_slab: float):
    hu = np.full(X.shape, -1000.0, np.float32)
    zz = float(np.clip(z, 0, 1))
    bscale = (1.0 - 0.06 * (1 - np.sin(np.pi * zz)), 1.0)
    body, rb, cav, a, b = _walls(t, X, Y, hu, bscale)
    cavity = rb < cav
    hu[cavity] = 35.0
    bone = np.zeros(X.shape, bool)
    # ribs: arcs in the muscle layer, gated by angle; sternum at the anterior midline
    th = _theta(X, Y, t.cx, t.cy, a, b)
    r_rib = cav + t.t_mus * 0.45
    ribs = (np.abs(rb - r_rib) < 0.045) & (np.cos(t.rib_n * th + t.rib_phase + 9.0 * zz) > 0.45)
    ribs &= np.abs(th + np.pi / 2) > 0.35
    hu[ribs] = 700.0
    stern = _rho(X, Y, t.cx, t.cy - b * r_rib, 0.07, 0.025) < 1
    hu[stern] = 500.0
    bone |= ribs | stern
    # heart with an epicardial fat rim
    hdx, hdy, hax, hay, hang, hz0, hz1 = t.heart
    hprof = np.clip(np.sin(np.pi * (zz - hz0) / (hz1 - hz0)), 0, 1) ** 0.5 if hz0 < zz < hz1 else 0.0
    heart = np.zeros(X.shape, bool)
    if hprof > 0.05:
        rh = _rho(X, Y, t.cx + hdx, t.cy + hdy, hax * hprof, hay * hprof, hang)
        hu[(rh < 1.12) & cavity] = -70.0
        heart = (rh < 1.0) & cavity
        hu[heart] = 40.0
        heart_excl = rh < 1.2
    else:
        heart_excl = np.zeros(X.shape, bool)
    # lungs
    y_spine = t.cy + b * (1 - t.t_fat - t.t_mus) - 0.13
    spine_excl = _rho(X, Y, t.cx, y_spine + 0.03, 0.15, 0.16) < 1
    med_w = 0.06 + 0.06 * (hprof if isinstance(hprof, float) else float(hprof))
    lungs = {}
    for i, (name, side) in enumerate((("lung-right", -1), ("lung-left", 1))):
        ztop, zbot = t.lung_top, t.lung_bottom[i]
        s = np.clip((zz - ztop) / 0.25, 0, 1) ** 0.5 * np.clip((zbot - zz) / 0.12, 0, 1) ** 0.35
        if s <= 0.02:
            lungs[name] = np.zeros(X.shape, bool)
            continue
        lx = t.cx + side * t.lung_dx
        ly = t.cy - 0.01
        rl = _rho(X, Y, lx, ly, t.lung_ax * (0.6 + 0.4 * s), t.lung_ay * (0.55 + 0.45 * s))
        thl = _theta(X, Y, lx, ly)
        m = (rl < s * _wobble(thl, t.lung_wobble[i])) & (rb < cav * 0.97)
        m &= side * (X - t.cx) > med_w
        m &= ~heart_excl & ~spine_excl
        dome = np.clip((zz - (zbot - 0.22)) / 0.22, 0, 1)
        if dome > 0:
            m &= _rho(X, Y, lx - side * 0.03, ly - 0.05, t.lung_ax, t.lung_ay) > 0.95 * dome
        lungs[name] = m
    lung = lungs["lung-right"] | lungs["lung-left"]
    grav = t.gravity_hu * np.clip((Y - t.cy) / (t.b * 0.6), 0, 1)
    hu[lung] = (t.lung_hu + grav)[lung]
    Zs = zz * LZ
    ves = _segments_mask(X, Y, t.vessels, Zs, half_slab) & lung
    hu[ves] = 40.0
    af = _segments_field(X, Y, t.airways, Zs, half_slab, pad=0.012)
    airway, wall = af <= 0, (af <= 0.012) & (lung | cavity)
    hu[wall & ~airway] = 30.0
    hu[airway & (lung | cavity)] = -1000.0
    nod = np.zeros(X.shape, bool)
    for nx, ny, nz, nr in t.nodules:
        rr = nr * nr - (Zs - nz) ** 2
        if rr > 0:
            nod |= ((X - nx) ** 2 + (Y - ny) ** 2 < rr) & lung
    hu[nod] = 20.0
    _spine(t, X, Y, hu, bone, y_spine)
    return hu, {"body": body, "lung-left": lungs["lung-left"], "lung-right": lungs["lung-right"],
                "heart": heart, "bone": bone, "nodule": nod, "vessel": ves}


def _abdomen(t: Trunk, u: float, X, Y):
    """Upper abdomen at kidney/pancreas level; ``u`` in [-1, 1] moves through the level."""
    j = t.organ_jitter
    hu = np.full(X.shape, -1000.0, np.float32)
    body, rb, cav, a, b = _walls(t, X, Y, hu, (1.03, 1.08), fat_extra=0.02)
    cavity = rb < cav
    hu[cavity] = t.organ_hu["bowel"] - 60.0   # mesenteric fat mixed with bowel
    oh = t.organ_hu
    sec = lambda k: np.sqrt(max(0.15, 1.0 - (0.7 * u + 0.2 * j[k, 3]) ** 2))
    bone = np.zeros(X.shape, bool)
    # bowel loops (distractors)
    for k in range(6):
        bx = t.cx + 0.25 * j[8 + k % 8, 0] + 0.05 * u
        by = t.cy - 0.12 + 0.12 * j[8 + k % 8, 1]
        rr = _rho(X, Y, bx, by, 0.06 + 0.02 * j[k, 2], 0.05) < 1
        hu[rr & cavity] = (-900.0, oh["bowel"], 80.0)[k % 3]
    y_sp = t.cy + b * (1 - t.t_fat - t.t_mus) - 0.14
    organs = {}
    s = sec(0)
    liver = _rho(X, Y, t.cx - 0.27 * a / 0.8 + 0.03 * j[0, 0], t.cy - 0.03 + 0.03 * j[0, 1],
                 0.36 * s * a / 0.8, 0.36 * s, 0.3 * j[0, 2]) < _wobble(_theta(X, Y, t.cx - 0.27, t.cy), ((2, 0.08, j[0, 2]), (3, 0.05, j[0, 3])))
    organs["liver"] = liver & cavity
    s = sec(1)
    organs["spleen"] = (_rho(X, Y, t.cx + 0.40 * a / 0.8 + 0.03 * j[1, 0], t.cy + 0.18 + 0.03 * j[1, 1],
                             0.10 * s, 0.17 * s, 0.6 + 0.2 * j[1, 2]) < 1) & cavity
    s = sec(2)
    pan = np.array([[t.cx - 0.08, t.cy + 0.06 + 0.03 * j[2, 0], 0, t.cx + 0.12, t.cy + 0.04 + 0.03 * j[2, 2], 0, 0.05 * s],
                    [t.cx + 0.12, t.cy + 0.04 + 0.03 * j[2, 2], 0, t.cx + 0.3 * a / 0.8, t.cy + 0.10 + 0.03 * j[2, 1], 0, 0.038 * s]],
                   np.float32)
    organs["pancreas"] = _segments_mask(X, Y, pan, 0.0, 0.1) & cavity
    for side, name, k in ((-1, "kidney-right", 3), (1, "kidney-left", 4)):
        s = sec(k)
        kx, ky = t.cx + side * (0.24 + 0.02 * j[k, 0]), y_sp - 0.02 + 0.02 * j[k, 1]
        rk = _rho(X, Y, kx, ky, 0.075 * s, 0.12 * s, side * (0.45 + 0.1 * j[k, 2]))
        organs[name] = (rk < 1) & cavity
    hu[organs["liver"]] = oh["liver"]
    hu[organs["spleen"]] = oh["spleen"]
    hu[organs["pancreas"]] = oh["pancreas"]
    for side, name in ((-1, "kidney-right"), (1, "kidney-left")):
        hu[organs[name]] = oh["kidney"]
        k = 3 if side < 0 else 4
        hil = _rho(X, Y, t.cx + side * (0.24 + 0.02 * j[k, 0]) - side * 0.045, y_sp - 0.02 + 0.02 * j[k, 1], 0.03, 0.04) < 1
        hu[hil & organs[name]] = 5.0
    # vessels: aorta and IVC (contrast), psoas muscles
    hu[_rho(X, Y, t.cx + 0.04, y_sp - 0.14, 0.045, 0.045) < 1] = 160.0
    hu[_rho(X, Y, t.cx - 0.08, y_sp - 0.13, 0.05, 0.04) < 1] = 130.0
    for side in (-1, 1):
        hu[(_rho(X, Y, t.cx + side * 0.11, y_sp + 0.02, 0.05, 0.07) < 1)] = oh["muscle"]
    # lower ribs in the wall
    th = _theta(X, Y, t.cx, t.cy, a, b)
    ribs = (np.abs(rb - (cav + t.t_mus * 0.45)) < 0.04) & (np.cos(t.rib_n * th + t.rib_phase + 3 * u) > 0.6) & (np.abs(th + np.pi / 2) > 0.9)
    hu[ribs] = 700.0
    bone |= ribs
    _spine(t, X, Y, hu, bone, y_sp)
    organs["body"], organs["bone"] = body, bone
    return hu, organs


def _pelvis(t: Trunk, u: float, X, Y):
    """Pelvis at femoral-head level with the bladder; ``u`` in [-1, 1] moves through the level."""
    j = t.organ_jitter
    hu = np.full(X.shape, -1000.0, np.float32)
    body, rb, cav, a, b = _walls(t, X, Y, hu, (1.08, 1.0), fat_extra=0.03)
    cavity = rb < cav
    hu[cavity] = -80.0
    oh = t.organ_hu
    bone = np.zeros(X.shape, bool)
    organs = {}
    fill = 0.7 + 0.3 * j[5, 0]
    sb = np.sqrt(max(0.2, 1 - (0.6 * u) ** 2))
    organs["bladder"] = (_rho(X, Y, t.cx + 0.02 * j[5, 1], t.cy - 0.12 + 0.03 * j[5, 2], 0.17 * fill * sb, 0.13 * fill * sb) < 1) & cavity
    hu[organs["bladder"]] = oh["bladder"]
    hu[_rho(X, Y, t.cx, t.cy + 0.2, 0.06, 0.05) < 1] = oh["bowel"]
    hu[_rho(X, Y, t.cx, t.cy + 0.2, 0.025, 0.02) < 1] = -900.0
    sac = _rho(X, Y, t.cx, t.cy + 0.36, 0.12, 0.05) < 1
    hu[sac] = 450.0
    bone |= sac
    for side, name, k in ((-1, "femur-right", 6), (1, "femur-left", 7)):
        sf = np.sqrt(max(0.3, 1 - (0.5 * u + 0.2 * j[k, 3]) ** 2))
        fx, fy = t.cx + side * (0.40 + 0.02 * j[k, 0]) * a / 0.78, t.cy + 0.03 + 0.03 * j[k, 1]
        head = _rho(X, Y, fx, fy, 0.11 * sf, 0.11 * sf)
        neck = _segments_mask(X, Y, np.array([[fx, fy, 0, fx + side * 0.12, fy + 0.03, 0, 0.055 * sf]], np.float32), 0, 0.1)
        fem = (head < 1) | neck
        acet = (head >= 1.15) & (head < 1.55) & (side * (X - fx) < 0.02)
        hu[acet] = 700.0
        hu[fem] = 300.0
        rim = fem & ~((_rho(X, Y, fx, fy, 0.11 * sf - 0.018, 0.11 * sf - 0.018) < 1)
                      | _segments_mask(X, Y, np.array([[fx, fy, 0, fx + side * 0.12, fy + 0.03, 0, 0.055 * sf - 0.018]], np.float32), 0, 0.1))
        hu[rim] = 1000.0
        organs[name] = fem
        bone |= fem | acet
        glut = (_rho(X, Y, fx - side * 0.05, fy + 0.2, 0.18, 0.12) < 1) & body & ~fem
        hu[glut & (hu < 100)] = oh["muscle"]
    organs["body"], organs["bone"] = body, bone
    return hu, organs


def render_trunk(t: Trunk, level: str, pos: float, X, Y, half_slab: float = 0.025):
    """Noise-free HU and masks of one trunk slice.

    ``level``: ``"chest"`` (``pos`` = z in [0, 1] along the lungs), ``"abdomen"`` or
    ``"pelvis"`` (``pos`` in [-1, 1] within the level). ``"thorax"`` is the chest at ``pos``.
    """
    if level in ("chest", "thorax"):
        return _chest(t, pos, X, Y, half_slab)
    if level == "abdomen":
        return _abdomen(t, pos, X, Y)
    if level == "pelvis":
        return _pelvis(t, pos, X, Y)
    raise ValueError(f"unknown body level {level!r}")


# --------------------------------------------------------------------------------------------
# COVID-like ground-glass opacities
# --------------------------------------------------------------------------------------------
def add_ggo(hu: np.ndarray, lung: np.ndarray, rng: np.random.Generator, *, strength_hu: float,
            area: float, px: float, centre=(0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """Patchy, peripheral ground-glass opacities inside ``lung``.

    A smooth random field biased towards the lung periphery is thresholded so that about
    ``area`` (fraction) of the lung is covered; the patch is blended with blurred edges towards
    ``lung + strength_hu`` (ground glass is -700..-300 HU). Returns the new HU and the boolean
    lesion mask (the thresholded patches inside the lung).
    """
    if not lung.any() or area <= 0:
        return hu, np.zeros(hu.shape, bool)
    sig = max(1.0, 0.06 / px)
    field_ = _smooth_field(rng, hu.shape, sig)
    # periphery: distance from the lung's own medial core, via a blurred lung mask
    core = gaussian_filter(lung.astype(np.float32), max(1.0, 0.08 / px))
    score = field_ + 2.5 * (1.0 - core)
    thr = np.quantile(score[lung], 1.0 - area)
    lesion = (score > thr) & lung
    alpha = gaussian_filter(lesion.astype(np.float32), max(0.7, 0.02 / px)) * lung
    texture = 1.0 + 0.25 * _smooth_field(rng, hu.shape, max(0.7, 0.015 / px))
    target = np.clip(hu + strength_hu * texture, -1000, -250)
    out = hu + alpha * (target - hu)
    return out.astype(np.float32), lesion


# --------------------------------------------------------------------------------------------
# head
# --------------------------------------------------------------------------------------------
@dataclass
class Head:
    cx: float
    cy: float
    a: float
    b: float
    skull: float
    csf: float              # extra-axial CSF thickness (atrophy)
    vent: float             # ventricle size factor
    gyri: tuple
    grey_hu: float
    white_hu: float
    calc: tuple             # (choroid plexus, pineal) calcification present
    falx_hu: float
    jit: np.ndarray


def sample_head(rng: np.random.Generator) -> Head:
    """Draw one head (size, skull thickness, atrophy, ventricles, calcifications, falx)."""
    return Head(rng.normal(0, 0.02), rng.normal(0, 0.02), rng.uniform(0.58, 0.66), rng.uniform(0.74, 0.84),
                rng.uniform(0.045, 0.07), rng.uniform(0.004, 0.02), rng.uniform(0.6, 1.5),
                tuple((k, rng.uniform(0.005, 0.02), rng.uniform(0, 2 * np.pi)) for k in (13, 19, 27)),
                rng.uniform(36, 42), rng.uniform(24, 30), (bool(rng.random() < 0.5), bool(rng.random() < 0.4)),
                rng.uniform(45, 65), rng.uniform(-1, 1, 8).astype(np.float32))


def render_head(h: Head, z: float, X, Y, bleed: dict | None = None):
    """Noise-free HU and masks of a head slice at ``z`` in [0, 1] (0 = vertex).

    ``bleed`` (optional): ``{"kind": "iph"|"sdh", "hu": float, "size": float, "pos": (u, v) or angle}``
    draws a hyperdense hemorrhage (intraparenchymal blob or subdural crescent); its mask is
    ``masks["lesion"]``.
    """
    hu = np.full(X.shape, -1000.0, np.float32)
    s = np.sqrt(max(0.25, 1 - ((z - 0.55) / 0.75) ** 2))
    a, b = h.a * s, h.b * s
    th = _theta(X, Y, h.cx, h.cy, a, b)
    r = _rho(X, Y, h.cx, h.cy, a, b)
    scalp = r < 1.0
    hu[scalp] = 25.0
    so = 1 - 0.05 / a
    skull_out, skull_in = r < so, r < so - h.skull / a
    hu[skull_out] = 1200.0
    hu[skull_out & (r < so - 0.3 * h.skull / a) & ~(r < so - 0.7 * h.skull / a)] = 550.0
    hu[skull_in] = 6.0                                     # extra-axial CSF
    rbrain = so - (h.skull + h.csf) / a
    brain = r < rbrain * _wobble(th, h.gyri)
    hu[brain] = h.grey_hu
    white = r < (rbrain - 0.09) * _wobble(th, h.gyri[:1])
    sulci = brain & ~white & (np.cos(22 * th + 3 * h.jit[0]) > 0.9) & (r > rbrain - 0.05)
    hu[white] = h.white_hu
    hu[sulci] = 8.0
    # deep grey matter, ventricles, falx, calcifications
    vz = np.clip(1 - abs(z - 0.5) / 0.22, 0, 1)
    for side in (-1, 1):
        hu[_rho(X, Y, h.cx + side * 0.13, h.cy + 0.02, 0.06, 0.1, side * 0.3) < vz] = h.grey_hu - 2
    vent = np.zeros(X.shape, bool)
    if vz > 0:
        for side in (-1, 1):
            vent |= _rho(X, Y, h.cx + side * 0.055 * h.vent, h.cy - 0.03, 0.035 * h.vent, 0.2 * vz + 0.02, side * 0.18) < 1
        vent |= _rho(X, Y, h.cx, h.cy + 0.05, 0.008 * h.vent, 0.06 * vz) < 1
    hu[vent] = 6.0
    falx = (np.abs(X - h.cx) < 0.007) & brain & (np.abs(Y - h.cy) > 0.25 * vz + 0.05)
    hu[falx] = h.falx_hu
    if vz > 0.3 and h.calc[0]:
        for side in (-1, 1):
            hu[_rho(X, Y, h.cx + side * 0.07 * h.vent, h.cy + 0.12, 0.016, 0.016) < 1] = 140.0
    if vz > 0.3 and h.calc[1]:
        hu[_rho(X, Y, h.cx, h.cy + 0.1, 0.012, 0.012) < 1] = 160.0
    lesion = np.zeros(X.shape, bool)
    if bleed:
        size = float(bleed["size"])
        if bleed["kind"] == "iph":
            u, v = bleed["pos"]
            bx, by = h.cx + u * a * 0.5, h.cy + v * b * 0.5
            rr = _rho(X, Y, bx, by, size, size * 0.75, 2 * u)
            lesion = (rr < _wobble(_theta(X, Y, bx, by), ((3, 0.15, 5 * v), (5, 0.08, u)))) & skull_in
            edema = (rr < 1.45) & brain & ~lesion
            hu[edema] = np.minimum(hu[edema], h.white_hu - 8)
        else:  # subdural crescent between the inner table and the brain
            ang, width = bleed["pos"], 0.6 + 0.8 * size / 0.1
            d = np.angle(np.exp(1j * (th - ang)))
            prof = np.clip(np.cos(np.pi * d / (2 * width / 2)), 0, 1) * (np.abs(d) < width / 2)
            thick = (h.csf + size * 0.6) * prof / a
            lesion = skull_in & (r > so - h.skull / a - thick - 0.004) & (prof > 0)
        hu[lesion] = float(bleed["hu"])
    return hu, {"head": scalp, "brain": brain, "lesion": lesion, "bone": skull_out & ~skull_in}


# --------------------------------------------------------------------------------------------
# small public helpers (tests, notebook pictures)
# --------------------------------------------------------------------------------------------
def chest_slice_hu(size: int | tuple[int, int] = 128, z: float = 0.6, seed: int = 0, *,
                   ggo: float = 0.0, ggo_hu: float = 350.0, noise_hu: float = 30.0):
    """One noisy chest slice of a random patient: ``(hu float32 (H, W), masks dict)``.

    ``ggo`` > 0 adds COVID-like ground-glass opacities covering that fraction of the lungs
    (``masks["lesion"]``), ``ggo_hu`` above the lung background.
    """
    rng = np.random.default_rng(seed)
    t = sample_trunk(rng)
    X, Y, px = grid(size)
    hu, masks = render_trunk(t, "chest", z, X, Y)
    lung = masks["lung-left"] | masks["lung-right"]
    hu, masks["lesion"] = add_ggo(hu, lung, rng, strength_hu=ggo_hu, area=ggo, px=px) if ggo > 0 else (hu, np.zeros_like(lung))
    return finish(hu, rng, noise_hu), masks


def body_slice_hu(level: str = "abdomen", size: int = 128, seed: int = 0, pos: float = 0.0, noise_hu: float = 15.0):
    """One noisy abdomen/pelvis/thorax slice: ``(hu, masks)`` with OrganSMNIST organ masks."""
    rng = np.random.default_rng(seed)
    t = sample_trunk(rng)
    X, Y, _ = grid(size)
    hu, masks = render_trunk(t, level, pos, X, Y)
    return finish(hu, rng, noise_hu), masks


def head_slice_hu(size: int = 128, seed: int = 0, z: float = 0.5, bleed: dict | None = None, noise_hu: float = 4.0):
    """One noisy head slice: ``(hu, masks)``; ``bleed`` as in :func:`render_head`."""
    rng = np.random.default_rng(seed)
    h = sample_head(rng)
    X, Y, _ = grid(size)
    hu, masks = render_head(h, z, X, Y, bleed)
    return finish(hu, rng, noise_hu, blur_px=0.5), masks
