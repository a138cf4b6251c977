"""The world's specification: colours, shapes, class order, test domains and generator settings, read from
``data_manifests/embedded_world.yaml`` and validated.
"""

from __future__ import annotations

import hashlib
import json
import os
import string
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import yaml

from ..config import DATA_MANIFESTS, check_names
from .shapes import SHAPE_SDFS, SHAPE_SYMBOLS


GENERATOR_VERSION = 1  # part of every fingerprint: bump it when rendering changes so caches rebuild
DEFAULT_MANIFEST = DATA_MANIFESTS / "embedded_world.yaml"
TEXTURES = ("plain", "striped", "speckled", "checkered")  # every texture the renderer knows
STYLES = ("filled", "outline")  # how a shape is drawn: its area, or only its edge (the "sketch" domain)
# Generator fields a test domain may not change: a domain shows the same classes, at the same size.
_CLASS_FIELDS = ("colours", "shapes", "class_order", "image_size", "domains", "vocabularies")
CAPTION_FIELDS = ("class", "colour", "shape", "size", "texture", "background", "position")
FACTOR_NAMES = ("size", "x", "y", "rotation", "background", "brightness", "texture", "noise", "occluded")
_CHUNK = 1024  # images rendered at once: keeps float32 temporaries at a few tens of MB


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
        Manifest file; default ``data_manifests/embedded_world.yaml``. Generator fields left
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
    check_names(doc, sorted(_MANIFEST_KEYS), path, error=ValueError, what="field")
    generator = doc.get("generator") or {}
    if not isinstance(generator, dict):
        raise ValueError(f"{path}: field 'generator' must be a mapping, got {generator!r}")
    spec_fields = {f.name for f in fields(WorldSpec)} - {"prompt_templates", "caption_templates", "class_order",
                                                         "domains", "vocabularies"}
    check_names(generator, sorted(spec_fields), path, "generator.", ValueError, "field")
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
