"""The embedded world: a seeded, procedurally generated colour x shape image dataset.

Real CLIP weights and datasets are out of reach, so the workbench trains small CLIP models on this
world instead. Every class is "<colour> <shape>" (e.g. "red triangle"); images are rendered with
numpy from signed distance fields, under moderate nuisance (size, position, rotation, background,
texture, pixel noise, occlusion). A fraction of samples lies *between* two classes, with the mixing
weight recorded, so that calibration-style metrics have a ground truth to compare against.

The generator's parameters, prompt templates and caption templates are data:
``data_manifests/embedded_world.yaml``, read by :func:`load_world_spec`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import string
import tempfile
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import yaml

GENERATOR_VERSION = 1  # part of every fingerprint: bump it when rendering changes so caches rebuild
DEFAULT_MANIFEST = Path(__file__).resolve().parents[1] / "data_manifests" / "embedded_world.yaml"
TEXTURES = ("plain", "striped", "speckled", "checkered")  # every texture the renderer knows
STYLES = ("filled", "outline")  # how a shape is drawn: its area, or only its edge (the "sketch" domain)
# Generator fields a test domain may not change: a domain shows the same classes, at the same size.
_CLASS_FIELDS = ("colours", "shapes", "class_order", "image_size", "domains", "vocabularies")
CAPTION_FIELDS = ("class", "colour", "shape", "size", "texture", "background", "position")
FACTOR_NAMES = ("size", "x", "y", "rotation", "background", "brightness", "texture", "noise", "occluded")
_CHUNK = 1024  # images rendered at once: keeps float32 temporaries at a few tens of MB


# ----------------------------------------------------------------------------- shapes
# Signed distance fields in shape coordinates (y up, "radius" about 1, negative inside), after
# Inigo Quilez's 2D distance functions. Exact distances keep the anti-aliasing and the shape
# morphs of ambiguous samples well behaved.
def _sd_box(x, y, hx, hy):
    dx, dy = np.abs(x) - hx, np.abs(y) - hy
    return np.hypot(np.maximum(dx, 0), np.maximum(dy, 0)) + np.minimum(np.maximum(dx, dy), 0)


def _sd_triangle(x, y, r=1.04):  # equilateral, pointing up, centred on its centroid
    k = np.float32(np.sqrt(3.0))
    px, py = np.abs(x) - r, y + r / k
    flip = px + k * py > 0
    px, py = np.where(flip, (px - k * py) / 2, px), np.where(flip, (-k * px - py) / 2, py)
    px = px - np.clip(px, -2 * r, 0)
    return -np.hypot(px, py) * np.sign(py)


def _sd_star(x, y, r=1.2, rf=0.5):  # five points, one pointing up; rf sets the inner radius
    k1x, k1y = 0.809016994375, -0.587785252292
    px, py = np.abs(x), y
    for kx in (k1x, -k1x):  # fold the plane into one tenth of the star
        d = 2 * np.maximum(kx * px + k1y * py, 0)
        px, py = px - d * kx, py - d * k1y
    px, py = np.abs(px), py - r
    bax, bay = -rf * k1y, rf * k1x - 1.0
    h = np.clip((px * bax + py * bay) / (bax * bax + bay * bay), 0, r)
    return np.hypot(px - bax * h, py - bay * h) * np.sign(py * bax - px * bay)


def _sd_hexagon(x, y, r=0.9):  # regular, flat top and bottom; r is the inner radius
    kx, ky, kz = -0.866025404, 0.5, 0.577350269
    px, py = np.abs(x), np.abs(y)
    d = 2 * np.minimum(kx * px + ky * py, 0)
    px, py = px - d * kx, py - d * ky
    px = px - np.clip(px, -kz * r, kz * r)
    py = py - r
    return np.hypot(px, py) * np.sign(py)


SHAPE_SDFS = {
    "circle": lambda x, y: np.hypot(x, y) - 1.0,
    "square": lambda x, y: _sd_box(x, y, 0.85, 0.85),
    "triangle": _sd_triangle,
    "cross": lambda x, y: np.minimum(_sd_box(x, y, 1.0, 0.34), _sd_box(x, y, 0.34, 1.0)),
    "star": _sd_star,
    # shapes of the second vocabulary (cross-dataset transfer): never in the default world's classes
    "hexagon": _sd_hexagon,
    "diamond": lambda x, y: _sd_box((x + y) * np.float32(0.70710678), (x - y) * np.float32(0.70710678), 0.72, 0.72),
    "ring": lambda x, y: np.abs(np.hypot(x, y) - 0.72) - 0.28,
}


SHAPE_SYMBOLS = {"circle": "circle", "square": "square", "triangle": "triangle-up", "cross": "cross",
                 "star": "star", "hexagon": "hexagon", "diamond": "diamond", "ring": "octagon"}  # shape -> Plotly marker symbol, so that maps draw each class as itself


# ----------------------------------------------------------------------------- spec
@dataclass(frozen=True)
class Background:
    rgb: tuple[int, int, int]  # base colour, before the per-sample brightness shift
    noise: float = 0.0  # std of per-pixel grey noise (0 = flat background)


@dataclass(frozen=True)
class WorldSpec:
    """Everything that determines the world's images, labels and captions (with a seed).

    Ranges are ``(low, high)`` pairs sampled uniformly; lengths are fractions of ``image_size``
    unless said otherwise. Build one from the manifest with :func:`load_world_spec`.
    """

    colours: dict[str, tuple[int, int, int]] = field(default_factory=lambda: {
        "red": (215, 40, 40), "orange": (245, 140, 20), "yellow": (240, 220, 40),
        "green": (40, 170, 70), "blue": (40, 90, 225), "purple": (150, 60, 200)})  # name -> RGB
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "cross", "star")  # keys of SHAPE_SDFS
    backgrounds: dict[str, Background] = field(default_factory=lambda: {
        "dark": Background((28, 28, 36)), "light": Background((222, 222, 214)),
        "grey": Background((128, 128, 128)), "noisy": Background((120, 120, 120), 28.0)})
    textures: tuple[str, ...] = ("plain", "striped", "speckled")  # surface patterns drawn uniformly, from TEXTURES
    image_size: int = 32  # images are image_size x image_size RGB, >= 16
    prompt_templates: tuple[str, ...] = (  # zero-shot prompts, "{}" -> class name
        "a photo of a {}.", "a {} shape.", "a drawing of a {}.", "a picture of a {}.", "a rendering of a {}.",
        "a small image of a {}.")
    caption_templates: tuple[str, ...] = (  # training captions, str.format fields from CAPTION_FIELDS
        "a {size} {colour} {shape} on a {background} background", "a photo of a {size} {texture} {class} {position}",
        "a {texture} {class} {position}", "a drawing of a {class} on a {background} background",
        "a {size} {class}, {texture}, {position}", "a {class}")
    ambiguous_fraction: float = 0.25  # share of samples rendered between two classes, in [0, 1]
    max_ambiguity: float = 0.45  # partner weight a ~ U(min, max], max <= 0.45 keeps the label the majority
    min_ambiguity: float = 0.0  # lower end of the partner weight of ambiguous samples, < max_ambiguity
    colour_ambiguity_share: float = 0.5  # of ambiguous samples, share blended in colour (rest: shape)
    size_range: tuple[float, float] = (0.24, 0.36)  # shape radius, fraction of image_size
    position_range: float = 0.12  # max centre offset from the image centre, fraction of image_size
    rotation_range: float = 15.0  # max rotation either way, degrees
    brightness_jitter: float = 20.0  # max background brightness shift either way, 0..255 units
    colour_jitter: float = 12.0  # max per-channel shift of the shape colour, 0..255 units
    texture_strength: float = 0.25  # how much stripes/speckles darken the shape, in [0, 1]
    stripe_period: float = 4.0  # stripe period in pixels
    noise_range: tuple[float, float] = (0.0, 6.0)  # std of per-pixel RGB noise, 0..255 units
    occlusion_prob: float = 0.10  # chance of a grey bar across the shape
    occlusion_width: tuple[float, float] = (0.08, 0.14)  # bar width, fraction of image_size
    style: str = "filled"  # one of STYLES
    hue_shift: float = 0.0  # rotation of every shape colour's hue, degrees (a test-domain shift)
    blur_sigma: float = 0.0  # Gaussian blur of the finished image, pixels (a test-domain shift)
    class_order: tuple[str, ...] = ()  # class names in label order; empty: sorted names
    domains: dict[str, dict] = field(default_factory=dict)  # test domain name -> generator fields it overrides
    # other class vocabularies (name -> {colours, shapes}): the same world with other classes, the embedded
    # analogue of evaluating on another dataset (cross-dataset transfer)
    vocabularies: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self):
        _validate(self)

    def __hash__(self):  # the dict fields are unhashable; the fingerprint stands for them
        return hash(self.fingerprint())

    @property
    def class_names(self) -> list[str]:
        """``"<colour> <shape>"`` names in label order (``class_order``, else sorted); a label indexes this list."""
        return list(self.class_order) if self.class_order else sorted(f"{c} {s}" for c in self.colours
                                                                      for s in self.shapes)

    def class_factors(self) -> dict[str, np.ndarray]:
        """Per class (label order), the index of its colour and of its shape among the sorted values."""
        colours, shapes = sorted(self.colours), sorted(self.shapes)
        pairs = [name.split(" ", 1) for name in self.class_names]
        return {"colour": np.array([colours.index(c) for c, _ in pairs]),
                "shape": np.array([shapes.index(s) for _, s in pairs])}

    def domain(self, name: str) -> "WorldSpec":
        """The spec of test domain ``name``: this world with the domain's generator fields replaced."""
        if name not in self.domains:
            known = ", ".join(sorted(self.domains)) or "none declared"
            raise ValueError(f"unknown test domain {name!r}; this world's domains: {known}")
        return replace(self, domains={}, **self.domains[name])

    def vocabulary(self, name: str) -> "WorldSpec":
        """The world with the classes of vocabulary ``name`` (its colours x shapes, sorted), nothing else changed."""
        if name not in self.vocabularies:
            known = ", ".join(sorted(self.vocabularies)) or "none declared"
            raise ValueError(f"unknown class vocabulary {name!r}; this world's vocabularies: {known}")
        return replace(self, class_order=(), domains={}, vocabularies={}, **self.vocabularies[name])

    def variant(self, overrides: dict) -> "WorldSpec":
        """This world with some generator fields replaced, the same classes (e.g. a narrower pretraining slice).

        ``overrides`` may hold YAML-style values (lists, ``{rgb, noise}`` mappings); a field that would change
        the classes, or a bad value, raises ``ValueError`` naming it.
        """
        if not isinstance(overrides, dict):
            raise ValueError(f"world overrides must be a mapping of generator fields, got {overrides!r}")
        known = {f.name for f in fields(WorldSpec)} - set(_CLASS_FIELDS)
        converted = {}
        for key, value in overrides.items():
            if key not in known:
                raise ValueError(f"world override {key!r} is not a generator field a variant may change; "
                                 f"expected some of {sorted(known)}")
            try:
                converted[key] = _convert(key, value)
            except (TypeError, ValueError, AttributeError, KeyError):
                raise ValueError(f"world override {key!r} must be {_STRUCTURE.get(key, 'a number')}, "
                                 f"got {value!r}") from None
        return replace(self, domains={}, **converted)

    def class_colours(self) -> list[str]:
        """CSS ``rgb(...)`` of each class's own colour, in label order (for figures)."""
        return ["rgb({}, {}, {})".format(*self.colours[name.split(" ", 1)[0]]) for name in self.class_names]

    def class_symbols(self) -> list[str]:
        """Plotly marker symbol of each class's own shape, in label order (for figures)."""
        return [SHAPE_SYMBOLS[name.split(" ", 1)[1]] for name in self.class_names]

    def fingerprint(self) -> str:
        """Stable 12-hex-digit hash of the fields that shape this world's images, and the generator version.

        ``domains`` is left out: declaring a test domain does not change the training images (each domain's
        own spec, :meth:`domain`, has its own fingerprint).
        """
        fields_ = {k: v for k, v in asdict(self).items() if k not in ("domains", "vocabularies")}
        blob = json.dumps({"generator_version": GENERATOR_VERSION, "spec": fields_}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _check(ok: bool, name: str, expected: str, got) -> None:
    if not ok:
        raise ValueError(f"field '{name}' must be {expected}, got {got!r}")


def _is_rgb(v) -> bool:
    return (isinstance(v, tuple) and len(v) == 3
            and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in v))


def _validate(s: WorldSpec) -> None:
    _check(isinstance(s.image_size, int) and s.image_size >= 16, "image_size", "an integer >= 16", s.image_size)
    _check(isinstance(s.colours, dict) and len(s.colours) >= 2, "colours", "a mapping of at least 2 names", s.colours)
    for name, rgb in s.colours.items():
        # Class names are "<colour> <shape>": a space in a colour name would make them ambiguous.
        _check(isinstance(name, str) and name and not any(ch.isspace() for ch in name), "colours",
               "a mapping whose names are single words", name)
        _check(_is_rgb(rgb), f"colours.{name}", "three integers in 0..255", rgb)
    _check(len(s.shapes) >= 2 and len(set(s.shapes)) == len(s.shapes), "shapes", "at least 2 distinct names", s.shapes)
    for shape in s.shapes:
        _check(shape in SHAPE_SDFS, "shapes", f"names from {sorted(SHAPE_SDFS)}", shape)
    _check(isinstance(s.backgrounds, dict) and len(s.backgrounds) >= 1, "backgrounds", "a non-empty mapping",
           s.backgrounds)
    for name, bg in s.backgrounds.items():
        _check(isinstance(bg, Background) and _is_rgb(bg.rgb), f"backgrounds.{name}.rgb",
               "three integers in 0..255", bg)
        _check(isinstance(bg.noise, (int, float)) and 0 <= bg.noise <= 128, f"backgrounds.{name}.noise",
               "a number in [0, 128]", bg.noise)
    _check(len(s.textures) >= 1 and set(s.textures) <= set(TEXTURES), "textures",
           f"a non-empty subset of {TEXTURES}", s.textures)
    _check(len(s.prompt_templates) >= 1, "prompt_templates", "a non-empty list", s.prompt_templates)
    for t in s.prompt_templates:
        _check(isinstance(t, str) and t.count("{}") == 1 and t.count("{") == 1 and t.count("}") == 1,
               "prompt_templates", 'strings containing "{}" exactly once (and no other braces)', t)
    _check(len(s.caption_templates) >= 1, "caption_templates", "a non-empty list", s.caption_templates)
    for t in s.caption_templates:
        try:
            names = {f for _, f, _, _ in string.Formatter().parse(t) if f is not None}
        except (ValueError, AttributeError):
            names = {None}
        _check(names <= set(CAPTION_FIELDS) and ("class" in names or {"colour", "shape"} <= names),
               "caption_templates", f"strings using only fields {CAPTION_FIELDS}, including {{class}} "
               "or both {colour} and {shape}", t)
    for name, lo, hi in [("ambiguous_fraction", 0, 1), ("colour_ambiguity_share", 0, 1), ("position_range", 0, 0.45),
                         ("rotation_range", 0, 180), ("brightness_jitter", 0, 128), ("colour_jitter", 0, 128),
                         ("texture_strength", 0, 1), ("occlusion_prob", 0, 1), ("stripe_period", 2, 64)]:
        v = getattr(s, name)
        _check(isinstance(v, (int, float)) and lo <= v <= hi, name, f"a number in [{lo}, {hi}]", v)
    _check(isinstance(s.max_ambiguity, (int, float)) and 0 < s.max_ambiguity <= 0.45, "max_ambiguity",
           "in (0, 0.45] so the primary class keeps the majority", s.max_ambiguity)
    _check(isinstance(s.min_ambiguity, (int, float)) and 0 <= s.min_ambiguity < s.max_ambiguity, "min_ambiguity",
           f"a number in [0, max_ambiguity={s.max_ambiguity})", s.min_ambiguity)
    _check(s.style in STYLES, "style", f"one of {STYLES}", s.style)
    _check(isinstance(s.hue_shift, (int, float)) and -180 <= s.hue_shift <= 180, "hue_shift",
           "a number of degrees in [-180, 180]", s.hue_shift)
    _check(isinstance(s.blur_sigma, (int, float)) and 0 <= s.blur_sigma <= 4, "blur_sigma",
           "a number of pixels in [0, 4]", s.blur_sigma)
    if s.class_order:
        every = {f"{c} {sh}" for c in s.colours for sh in s.shapes}
        missing, extra = sorted(every - set(s.class_order)), sorted(set(s.class_order) - every)
        repeated = sorted({n for n in s.class_order if s.class_order.count(n) > 1})
        _check(not (missing or extra or repeated), "classes",
               f"every '<colour> <shape>' name exactly once (missing {missing}, unknown {extra}, "
               f"repeated {repeated})", "the list in the manifest")
    _check(isinstance(s.domains, dict), "domains", "a mapping name -> generator fields", s.domains)
    for name, overrides in s.domains.items():
        _check(isinstance(name, str) and name.isidentifier(), "domains", "names made of letters, digits and _", name)
        _check(isinstance(overrides, dict) and overrides, f"domains.{name}", "a non-empty mapping of generator fields",
               overrides)
        known = {f.name for f in fields(WorldSpec)} - set(_CLASS_FIELDS)
        for key in overrides:
            _check(key in known, f"domains.{name}",
                   f"generator fields other than {', '.join(_CLASS_FIELDS)} (a domain keeps the classes)", key)
        try:
            replace(s, domains={}, **overrides)
        except ValueError as err:
            raise ValueError(f"domains.{name}: {err}") from None
    _check(isinstance(s.vocabularies, dict), "vocabularies", "a mapping name -> {colours, shapes}", s.vocabularies)
    for name, vocabulary in s.vocabularies.items():
        _check(isinstance(vocabulary, dict) and set(vocabulary) == {"colours", "shapes"}, f"vocabularies.{name}",
               "a mapping with exactly the keys colours and shapes", vocabulary)
        try:
            replace(s, class_order=(), domains={}, vocabularies={}, **vocabulary)
        except ValueError as err:
            raise ValueError(f"vocabularies.{name}: {err}") from None
    for name, lo, hi in [("size_range", 0.05, 0.5), ("noise_range", 0, 64), ("occlusion_width", 0.01, 0.5)]:
        v = getattr(s, name)
        _check(isinstance(v, tuple) and len(v) == 2 and lo <= v[0] <= v[1] <= hi, name,
               f"a pair [low, high] with {lo} <= low <= high <= {hi}", v)


_MANIFEST_KEYS = {"name", "description", "licence", "version", "generator", "prompt_templates", "caption_templates",
                  "classes", "domains", "vocabularies"}


_STRUCTURE = {  # what each generator field looks like in YAML, for error messages
    "colours": "a mapping name -> [r, g, b]", "backgrounds": "a mapping name -> {rgb: [r, g, b], noise: std}",
    "size_range": "a pair [low, high]", "noise_range": "a pair [low, high]", "occlusion_width": "a pair [low, high]",
    "shapes": "a list of names", "textures": "a list of names", "prompt_templates": "a list of strings",
    "caption_templates": "a list of strings", "image_size": "an integer", "style": "a name",
    "class_order": "a list of class names", "domains": "a mapping name -> generator fields",
    "vocabularies": "a mapping name -> {colours, shapes}"}


def _seq(v) -> tuple:
    if not isinstance(v, (list, tuple)):
        raise TypeError(v)
    return tuple(v)


def _convert(key: str, v):
    """Turn a YAML value into the field's Python type (range checks happen in WorldSpec)."""
    if key == "colours":
        return {str(k): _seq(c) for k, c in v.items()}
    if key == "backgrounds":
        if any(set(b) - {"rgb", "noise"} for b in v.values()):
            raise KeyError(v)
        return {str(k): Background(_seq(b["rgb"]), float(b.get("noise", 0.0))) for k, b in v.items()}
    if key in ("size_range", "noise_range", "occlusion_width"):
        return tuple(float(x) for x in _seq(v))
    if key in _STRUCTURE:
        return v if key in ("image_size", "style") else _seq(v)
    if isinstance(v, (bool, str)):
        raise TypeError(v)
    return float(v)


def _convert_named(path, name: str, entries) -> dict[str, dict]:
    """``domains`` / ``vocabularies`` from YAML: name -> generator fields, each value converted like a field."""
    if not isinstance(entries, dict) or not all(isinstance(e, dict) for e in entries.values()):
        raise ValueError(f"{path}: field '{name}' must be {_STRUCTURE[name]}, got {entries!r}")
    out = {}
    for entry, settings in entries.items():
        out[str(entry)] = {}
        for key, v in settings.items():
            try:
                out[str(entry)][key] = _convert(key, v)
            except (TypeError, ValueError, AttributeError, KeyError):
                raise ValueError(f"{path}: field '{name}.{entry}.{key}' must be {_STRUCTURE.get(key, 'a number')}, "
                                 f"got {v!r}") from None
    return out


def load_world_spec(path: str | os.PathLike | None = None) -> WorldSpec:
    """Read a world manifest (YAML) into a validated :class:`WorldSpec`.

    Parameters
    ----------
    path : str or os.PathLike, optional
        Manifest file; default ``<repo>/data_manifests/embedded_world.yaml``. Generator fields left
        out of the file take the :class:`WorldSpec` defaults.

    Raises
    ------
    ValueError
        If the file is not a mapping, has unknown keys, or a field is out of range; the message
        names the file, the field and what is expected.
    """
    path = Path(DEFAULT_MANIFEST if path is None else path)
    with open(path, encoding="utf-8") as fh:
        doc = yaml.safe_load(fh)
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a YAML mapping at the top level, got {type(doc).__name__}")
    if not isinstance(doc.get("name"), str):
        raise ValueError(f"{path}: field 'name' (the dataset's name) is missing or not a string")
    unknown = set(doc) - _MANIFEST_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {sorted(unknown)}; expected some of {sorted(_MANIFEST_KEYS)}")
    generator = doc.get("generator") or {}
    if not isinstance(generator, dict):
        raise ValueError(f"{path}: field 'generator' must be a mapping, got {generator!r}")
    spec_fields = {f.name for f in fields(WorldSpec)} - {"prompt_templates", "caption_templates", "class_order",
                                                         "domains", "vocabularies"}
    unknown = set(generator) - spec_fields
    if unknown:
        raise ValueError(f"{path}: unknown keys in 'generator': {sorted(unknown)}; "
                         f"expected some of {sorted(spec_fields)}")
    values = {**generator, **{k: doc[k] for k in ("prompt_templates", "caption_templates", "classes", "domains",
                                                  "vocabularies") if k in doc}}
    if "classes" in values:
        values["class_order"] = values.pop("classes")
    kwargs = {name: _convert_named(path, name, values.pop(name, None) or {}) for name in ("domains", "vocabularies")}
    for key, v in values.items():
        try:
            kwargs[key] = _convert(key, v)
        except (TypeError, ValueError, AttributeError, KeyError):
            expected = _STRUCTURE.get(key, "a number")
            key = "classes" if key == "class_order" else key
            raise ValueError(f"{path}: field '{key}' must be {expected}, got {v!r}") from None
    try:
        return WorldSpec(**kwargs)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


# ----------------------------------------------------------------------------- splits
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


# ----------------------------------------------------------------------------- storage
_FORMAT_VERSION = 1
_FILES = ("images.npy", "samples.csv", "meta.json")
_COLUMNS = ("index", "label", "class_name", "caption", "ambiguity", "partner", "ambiguity_kind")


def save_split(split: WorldSplit, directory: str | os.PathLike) -> None:
    """Write ``images.npy``, ``samples.csv`` (one row per sample) and ``meta.json`` to ``directory``.

    Files go to a temporary sibling directory that is renamed into place at the end, so a crash
    leaves either the old split or the new one, never half of one.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    from .runs import umask_mode
    os.chmod(tmp, umask_mode(directory=True))  # mkdtemp's 0700 would outlive the rename
    try:
        np.save(tmp / "images.npy", split.images, allow_pickle=False)
        with open(tmp / "samples.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(_COLUMNS + tuple(split.factors))
            for i in range(len(split)):
                # repr() of a float32 widened to float64 parses back to the very same float32.
                row = [i, int(split.labels[i]), split.class_names[split.labels[i]], split.captions[i],
                       repr(float(split.ambiguity[i])), int(split.partner[i]), split.ambiguity_kind[i]]
                for values in split.factors.values():
                    v = values[i]
                    row.append(int(v) if values.dtype == bool else repr(float(v)) if values.dtype.kind == "f" else v)
                writer.writerow(row)
        meta = {"format_version": _FORMAT_VERSION, "num_samples": len(split), "class_names": split.class_names,
                "factor_dtypes": {k: v.dtype.str for k, v in split.factors.items()}, "provenance": split.meta}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        old = None
        if directory.exists():  # rename() cannot replace a non-empty directory: move it aside first
            old = directory.parent / f".{directory.name}.old-{os.getpid()}"
            directory.rename(old)
        tmp.rename(directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_split_meta(directory: str | os.PathLike) -> dict:
    """The ``meta.json`` of a saved split (cheap: images and rows are not read)."""
    path = Path(directory) / "meta.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing: {directory} is not a saved world split") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is corrupt: {err}") from None
    if not isinstance(meta, dict) or meta.get("format_version") != _FORMAT_VERSION:
        raise ValueError(f"{path}: expected format_version {_FORMAT_VERSION}, got {meta!r:.200}")
    return meta


def load_split(directory: str | os.PathLike) -> WorldSplit:
    """Read a split written by :func:`save_split`.

    Raises
    ------
    FileNotFoundError
        If one of ``images.npy``, ``samples.csv``, ``meta.json`` is missing.
    ValueError
        If a file is corrupt or the files disagree with each other.
    """
    directory = Path(directory)
    missing = [name for name in _FILES if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory} is not a saved world split: missing {', '.join(missing)}")
    meta = read_split_meta(directory)
    try:
        n, dtypes, names = int(meta["num_samples"]), meta["factor_dtypes"], list(meta["class_names"])
        images = np.load(directory / "images.npy", allow_pickle=False)
        with open(directory / "samples.csv", newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        header, rows = rows[0], rows[1:]
        if tuple(header) != _COLUMNS + tuple(dtypes):
            raise ValueError(f"samples.csv columns {header} do not match meta.json")
        if len(rows) != n or images.shape[0] != n or images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"expected {n} rows and uint8 images (N, S, S, 3); got {len(rows)} rows, "
                             f"images {images.dtype} {images.shape}")
        cols = list(zip(*rows)) if rows else [()] * len(header)
        labels, partner = np.array(cols[1], dtype=np.int64), np.array(cols[5], dtype=np.int64)
        if np.any((labels < 0) | (labels >= len(names))) or np.any((partner < -1) | (partner >= len(names))):
            raise ValueError(f"labels or partners outside 0..{len(names) - 1}")
        factors = {}
        for name, col, dtype in zip(dtypes, cols[len(_COLUMNS):], dtypes.values()):
            dtype = np.dtype(dtype)
            raw = np.array(col, dtype=str)
            factors[name] = (raw.astype(np.int64).astype(bool) if dtype == bool else
                             raw.astype(np.float64).astype(dtype) if dtype.kind == "f" else raw.astype(dtype))
        return WorldSplit(images, labels, list(cols[3]), np.array(cols[4], dtype=np.float64).astype(np.float32),
                          partner, list(cols[6]), factors, names, dict(meta.get("provenance", {})))
    except (ValueError, KeyError, TypeError, IndexError, OSError, EOFError) as err:
        raise ValueError(f"{directory}: corrupt world split ({err})") from None


def build_world(spec: WorldSpec, root: str | os.PathLike, seed: int, sizes: dict[str, int]) -> dict[str, WorldSplit]:
    """Materialize splits under ``root/<fingerprint>-seed<seed>/<split>/`` and return them.

    A split already on disk is reused when its meta (spec fingerprint, seed, split name, size)
    matches; otherwise (absent, different or corrupt) it is generated and saved.

    Parameters
    ----------
    spec : WorldSpec
        The world's parameters.
    root : str or os.PathLike
        Cache directory, created if needed.
    seed : int
        Non-negative seed shared by all splits (each split still gets its own stream).
    sizes : dict[str, int]
        Split name -> number of samples, e.g. ``{"train": 20000, "val": 2000}``.
    """
    base = Path(root) / f"{spec.fingerprint()}-seed{seed}"
    wanted = {"spec_fingerprint": spec.fingerprint(), "seed": seed}
    return {name: _load_or_generate(base / name, {**wanted, "split": name}, size,
                                    lambda name=name, size=size: generate_split(spec, name, size, seed))
            for name, size in sizes.items()}


def build_domains(spec: WorldSpec, root: str | os.PathLike, seed: int, num_samples: int,
                  domains: list[str] | None = None, split: str = "test") -> dict[str, WorldSplit]:
    """Materialize test domains (default: all of ``spec.domains``) next to the world's splits, as ``<split>@<domain>``.

    Each domain repeats the first ``num_samples`` samples of ``split`` under its shift (:func:`generate_domain`).
    """
    domains = sorted(spec.domains) if domains is None else list(domains)
    for name in domains:
        spec.domain(name)  # an unknown name fails here, before anything is written
    base = Path(root) / f"{spec.fingerprint()}-seed{seed}"
    out = {}
    for name in domains:
        wanted = {"spec_fingerprint": spec.domain(name).fingerprint(), "seed": seed, "split": split, "domain": name}
        out[name] = _load_or_generate(base / f"{split}@{name}", wanted, num_samples,
                                      lambda name=name: generate_domain(spec, name, num_samples, seed, split))
    return out


def _load_or_generate(directory: Path, provenance: dict, size: int, generate) -> WorldSplit:
    """The split saved in ``directory`` if its provenance and size match, else ``generate()`` saved there."""
    try:
        meta = read_split_meta(directory)
        if meta.get("provenance") == provenance and meta.get("num_samples") == size:
            return load_split(directory)
    except (FileNotFoundError, ValueError):
        pass  # absent or corrupt: regenerate below
    split = generate()
    save_split(split, directory)
    return split
