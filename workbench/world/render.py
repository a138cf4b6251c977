"""Rendering: seeded splits with captions and ambiguity ground truth (two classes
mixed), and the shifted test domains.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import numpy as np

from .shapes import SHAPE_SDFS
from .spec import WorldSpec, _CHUNK


@dataclass
class WorldSplit:
    """One generated split. Per-sample arrays and lists all have length N.

    ``factors`` holds: ``size`` (shape radius, px), ``x``, ``y`` (shape centre, px, y down),
    ``rotation`` (degrees, counter-clockwise), ``background`` and ``texture`` (names),
    ``brightness`` (background shift, 0..255 units), ``noise`` (pixel noise std) and ``occluded``
    (bool: a grey bar crosses the image near the shape).
    """

    images: np.ndarray  # uint8 (N, S, S, 3)
    labels: np.ndarray  # int64 (N,), index into class_names of the primary class
    captions: list[str]  # natural-language caption naming the primary class
    ambiguity: np.ndarray  # float32 (N,), partner weight a in (0, max_ambiguity]; 0 for clean samples
    partner: np.ndarray  # int64 (N,), partner class label; -1 for clean samples
    ambiguity_kind: list[str]  # "none" | "colour" | "shape"
    factors: dict[str, np.ndarray]  # nuisance values per sample, keys FACTOR_NAMES
    class_names: list[str]  # sorted "<colour> <shape>"
    meta: dict = field(default_factory=dict)  # provenance: split, seed, spec_fingerprint

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices) -> WorldSplit:
        """Samples at ``indices`` (integer array, boolean mask or slice), in that order."""
        idx = np.atleast_1d(np.arange(len(self))[indices])
        return WorldSplit(self.images[idx], self.labels[idx], [self.captions[i] for i in idx],
                          self.ambiguity[idx], self.partner[idx], [self.ambiguity_kind[i] for i in idx],
                          {k: v[idx] for k, v in self.factors.items()}, list(self.class_names), dict(self.meta))


def _split_seed(seed: int, split: str) -> np.random.SeedSequence:
    # Python's hash() is salted per process; a digest of the name is stable everywhere.
    digest = int.from_bytes(hashlib.sha256(split.encode("utf-8")).digest()[:8], "little")
    return np.random.SeedSequence([seed, digest])


def _caption(template: str, words: dict[str, str]) -> str:
    text = " ".join(template.format(**words).split())
    return re.sub(r"\ba ([aeiou])", r"an \1", text)  # "a orange star" -> "an orange star"


def _position_word(dx: float, dy: float, threshold: float) -> str:
    vert = "top" if dy < -threshold else "bottom" if dy > threshold else ""
    horiz = "left" if dx < -threshold else "right" if dx > threshold else ""
    if vert:
        return f"near the {vert} {horiz}".rstrip()
    return f"on the {horiz}" if horiz else "in the centre"


def generate_split(spec: WorldSpec, split: str, num_samples: int, seed: int) -> WorldSplit:
    """Render ``num_samples`` images of the world, deterministically from ``(seed, split)``.

    Parameters
    ----------
    spec : WorldSpec
        The world's parameters.
    split : str
        Split name (e.g. ``"train"``); different names give independent samples.
    num_samples : int
        Number of samples, >= 0. Labels are balanced (counts differ by at most one).
    seed : int
        Non-negative seed. Same ``(spec, split, num_samples, seed)`` -> byte-identical output.
    """
    if not isinstance(split, str) or not split:
        raise ValueError(f"split must be a non-empty string, got {split!r}")
    if not isinstance(num_samples, (int, np.integer)) or num_samples < 0:
        raise ValueError(f"num_samples must be an integer >= 0, got {num_samples!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    n, S = int(num_samples), spec.image_size
    # Sorted names make the samples independent of the manifest's ordering of colours and shapes.
    colours, shapes = sorted(spec.colours), sorted(spec.shapes)
    backgrounds, textures = sorted(spec.backgrounds), sorted(spec.textures)
    names = spec.class_names
    label_of = {(c, s): names.index(f"{c} {s}") for c in colours for s in shapes}
    class_col, class_shp = np.zeros(len(names), np.int64), np.zeros(len(names), np.int64)
    for (c, s), y in label_of.items():
        class_col[y], class_shp[y] = colours.index(c), shapes.index(s)
    factor_ss, render_ss = _split_seed(int(seed), split).spawn(2)
    rng = np.random.default_rng(factor_ss)

    labels = rng.permutation(np.arange(n) % len(names)).astype(np.int64)
    col, shp = class_col[labels], class_shp[labels]
    # Ambiguity: a ~ U(min, max] (1 - U[0, 1) excludes min), partner differs in exactly one attribute.
    ambiguous = rng.random(n) < spec.ambiguous_fraction
    by_colour = rng.random(n) < spec.colour_ambiguity_share
    width = spec.max_ambiguity - spec.min_ambiguity
    a = np.where(ambiguous, spec.min_ambiguity + width * (1.0 - rng.random(n)), 0.0)
    p_col = np.where(ambiguous & by_colour, (col + rng.integers(1, len(colours), n)) % len(colours), col)
    p_shp = np.where(ambiguous & ~by_colour, (shp + rng.integers(1, len(shapes), n)) % len(shapes), shp)
    partner = np.array([label_of[colours[c], shapes[s]] for c, s in zip(p_col, p_shp)], dtype=np.int64)
    partner[~ambiguous] = -1
    kind = np.where(ambiguous, np.where(by_colour, "colour", "shape"), "none")
    a_colour, a_shape = np.where(kind == "colour", a, 0.0), np.where(kind == "shape", a, 0.0)

    palette = _rotate_hue(np.array([spec.colours[c] for c in colours], dtype=np.float64), spec.hue_shift)
    rgb = (1 - a_colour)[:, None] * palette[col] + a_colour[:, None] * palette[p_col]
    rgb += rng.uniform(-spec.colour_jitter, spec.colour_jitter, (n, 3))
    size_frac = rng.uniform(*spec.size_range, n)
    offset = rng.uniform(-spec.position_range, spec.position_range, (n, 2)) * S
    bg = rng.integers(len(backgrounds), size=n)
    f = {
        "size": size_frac * S,  # shape radius in pixels
        "x": S / 2 + offset[:, 0], "y": S / 2 + offset[:, 1],  # shape centre in pixels (y down)
        "rotation": rng.uniform(-spec.rotation_range, spec.rotation_range, n),  # degrees, counter-clockwise
        "background": np.array(backgrounds)[bg],
        "brightness": rng.uniform(-spec.brightness_jitter, spec.brightness_jitter, n),
        "texture": np.array(textures)[rng.integers(len(textures), size=n)],
        "noise": rng.uniform(*spec.noise_range, n),
        "occluded": rng.random(n) < spec.occlusion_prob,
    }
    bar = {"vertical": rng.random(n) < 0.5, "offset": rng.uniform(-0.6, 0.6, n) * f["size"],
           "width": rng.uniform(*spec.occlusion_width, n) * S, "grey": rng.uniform(100, 150, n)}

    lo, hi = spec.size_range
    t = (size_frac - lo) / (hi - lo) if hi > lo else np.full(n, 0.5)
    size_words = np.where(t < 1 / 3, "small", np.where(t > 2 / 3, "large", "medium"))
    template_idx = rng.integers(len(spec.caption_templates), size=n)
    captions = []
    for i in range(n):
        words = {"class": names[labels[i]], "colour": colours[col[i]], "shape": shapes[shp[i]], "size": size_words[i],
                 "texture": f["texture"][i], "background": f["background"][i],
                 "position": _position_word(offset[i, 0], offset[i, 1], spec.position_range * S / 3)}
        captions.append(_caption(spec.caption_templates[template_idx[i]], words))

    bg_rgb = np.array([spec.backgrounds[b].rgb for b in backgrounds], dtype=np.float64)[bg] + f["brightness"][:, None]
    bg_noise = np.array([spec.backgrounds[b].noise for b in backgrounds])[bg]
    images = np.empty((n, S, S, 3), dtype=np.uint8)
    render_rng = np.random.default_rng(render_ss)
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(start + _CHUNK, n))
        images[sl] = _render(spec, shapes, render_rng, shp[sl], p_shp[sl], a_shape[sl], rgb[sl], bg_rgb[sl],
                             bg_noise[sl], {k: v[sl] for k, v in f.items()}, {k: v[sl] for k, v in bar.items()})

    factors = {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in f.items()}
    return WorldSplit(images, labels, captions, a.astype(np.float32), partner, kind.tolist(), factors, names,
                      {"split": split, "seed": int(seed), "spec_fingerprint": spec.fingerprint()})


def generate_domain(spec: WorldSpec, domain: str, num_samples: int, seed: int, split: str = "test") -> WorldSplit:
    """Render test domain ``domain`` of ``spec``: the samples of ``split`` drawn again under the domain's shift.

    Labels, partners and mixing weights are drawn before any value a domain may change, so they equal
    those of ``generate_split(spec, split, num_samples, seed)`` sample for sample; a domain that keeps the
    number of backgrounds and textures also keeps every nuisance draw, and differs only in its shift.
    """
    out = generate_split(spec.domain(domain), split, num_samples, seed)
    out.meta["domain"] = domain
    return out


def _rotate_hue(rgb: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate colours (..., 3) about the grey axis of RGB space by ``degrees`` (a hue shift that keeps lightness)."""
    if not degrees:
        return rgb
    t = np.deg2rad(degrees)
    k = np.full(3, 1 / np.sqrt(3.0))  # unit grey axis; Rodrigues' rotation about it
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    rotation = np.cos(t) * np.eye(3) + np.sin(t) * cross + (1 - np.cos(t)) * np.outer(k, k)
    return np.clip(rgb @ rotation.T, 0, 255)


def _gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of images (m, S, S, 3) with edge padding."""
    radius = max(1, int(np.ceil(3 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    kernel = np.exp(-x ** 2 / (2 * sigma ** 2))
    kernel /= kernel.sum()
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (radius, radius)
        padded = np.pad(img, pad, mode="edge")
        size = img.shape[axis]
        img = sum(w * np.take(padded, np.arange(i, i + size), axis=axis) for i, w in enumerate(kernel))
    return img


def _render(spec, shapes, rng, shp, p_shp, a_shape, rgb, bg_rgb, bg_noise, f, bar) -> np.ndarray:
    """Render one chunk of m images; all per-sample inputs have leading length m."""
    m, S = len(shp), spec.image_size
    f32 = lambda v: np.asarray(v, dtype=np.float32)[:, None, None]  # noqa: E731  per-sample -> (m, 1, 1)
    grid = np.arange(S, dtype=np.float32) + 0.5  # pixel centres
    dx, dy = grid[None, None, :] - f32(f["x"]), grid[None, :, None] - f32(f["y"])
    theta = np.deg2rad(f["rotation"])
    cos, sin, size = f32(np.cos(theta)), f32(np.sin(theta)), f32(f["size"])
    u = (cos * dx - sin * dy) / size  # shape coordinates: image y points down, shape y points up
    v = (-sin * dx - cos * dy) / size

    # Shape ambiguity morphs the signed distance fields: (1 - a) * sdf_primary + a * sdf_partner.
    sdf = np.zeros((m, S, S), dtype=np.float32)
    for k, name in enumerate(shapes):
        w = np.where(shp == k, 1.0 - a_shape, 0.0) + np.where(p_shp == k, a_shape, 0.0)
        idx = np.flatnonzero(w > 0)
        if idx.size:
            sdf[idx] += f32(w[idx]) * SHAPE_SDFS[name](u[idx], v[idx])
    if spec.style == "outline":  # a line about 1.5 px wide along the shape's edge
        coverage = np.clip(1.25 - np.abs(sdf * size), 0, 1)[..., None]
    else:
        coverage = np.clip(0.5 - sdf * size, 0, 1)[..., None]  # soft mask: ~1 px anti-aliased edge

    shade = np.ones((m, S, S), dtype=np.float32)
    striped, speckled = np.flatnonzero(f["texture"] == "striped"), np.flatnonzero(f["texture"] == "speckled")
    phase = u[striped] * size[striped] * np.float32(2 * np.pi / spec.stripe_period)  # stripes turn with the shape
    shade[striped] = 1 - spec.texture_strength * (0.5 + 0.5 * np.sin(phase))
    shade[speckled] = 1 - spec.texture_strength * (rng.random((len(speckled), S, S), dtype=np.float32) < 0.3)
    checkered = np.flatnonzero(f["texture"] == "checkered")
    cells = np.floor(u[checkered] * size[checkered] / spec.stripe_period) + np.floor(v[checkered] * size[checkered]
                                                                                     / spec.stripe_period)
    shade[checkered] = 1 - spec.texture_strength * (cells % 2)

    img = np.broadcast_to(bg_rgb.astype(np.float32)[:, None, None, :], (m, S, S, 3)).copy()
    noisy = np.flatnonzero(bg_noise > 0)
    img[noisy] += f32(bg_noise[noisy])[..., None] * rng.standard_normal((len(noisy), S, S, 1), dtype=np.float32)
    img = img * (1 - coverage) + rgb.astype(np.float32)[:, None, None, :] * shade[..., None] * coverage

    occ = np.flatnonzero(f["occluded"])  # a grey bar across the whole image, passing near the shape
    vertical = bar["vertical"][occ]
    centre = np.where(vertical, f["x"][occ], f["y"][occ]) + bar["offset"][occ]
    across = np.where(vertical[:, None, None], grid[None, None, :], grid[None, :, None]) - f32(centre)
    bar_cov = np.clip(f32(bar["width"][occ]) / 2 + 0.5 - np.abs(across), 0, 1)[..., None]
    img[occ] = img[occ] * (1 - bar_cov) + f32(bar["grey"][occ])[..., None] * bar_cov

    if spec.blur_sigma > 0:
        img = _gaussian_blur(img, spec.blur_sigma)
    img += f32(f["noise"])[..., None] * rng.standard_normal((m, S, S, 3), dtype=np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
