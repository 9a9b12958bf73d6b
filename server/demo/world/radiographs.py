"""Drawing synthetic chest radiographs: anatomy plus the world's findings, as 8-bit greyscale.

Cartoon radiology, not radiology: soft tissue, two dark lung fields, ribs, clavicles, spine,
a bright heart, and each finding drawn as what a reader would look for: a pacemaker is the
brightest object (a can with a lead curving into the heart), a line or tube a thin bright
curve, a pleural effusion an opaque lung base with a meniscus, cardiomegaly a wide heart.
Coordinates are fractions of the image (x to the right, y down); the patient's left is the
image's right, as on a PA film. Everything random comes from the ``rng`` passed in.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

FRONTAL_SHAPE = (160, 144)  # (height, width): not square, so the processor's crop matters
LATERAL_SHAPE = (160, 144)

Box = tuple[int, int, int, int]  # (left, top, right, bottom) in pixels, right/bottom exclusive

_DEVICE = 1.0  # metal: the brightest thing on the film
_LINE = 0.85
_BONE = 0.12  # added over what lies beneath


@dataclass(frozen=True)
class Findings:
    """What to draw. ``effusion_sides`` is a subset of {"left", "right"} (the patient's)."""

    pacemaker: bool = False
    line_kind: str | None = None  # "endotracheal", "central_venous" or "nasogastric"
    effusion_sides: frozenset[str] = frozenset()
    effusion_level: float = 0.0  # fraction of the lung height the fluid fills
    cardiomegaly: bool = False


@dataclass(frozen=True)
class Radiograph:
    """An 8-bit image and, per drawn finding, the box that holds it."""

    pixels: np.ndarray
    boxes: dict[str, Box]


class _Canvas:
    """A float image in [0, 1] with soft-edged shape stamping; ``x``/``y`` are pixel-centre
    coordinates in image fractions."""

    def __init__(self, shape: tuple[int, int]) -> None:
        height, width = shape
        self.y, self.x = np.mgrid[0:height, 0:width].astype(np.float64)
        self.y = (self.y + 0.5) / height
        self.x = (self.x + 0.5) / width
        self.image = np.zeros(shape)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        """A soft mask: 1 inside, 0 outside, a one-pixel ramp at the edge."""
        radius = np.sqrt(((self.x - cx) / rx) ** 2 + ((self.y - cy) / ry) ** 2)
        edge = 1.5 / (self.image.shape[1] * min(rx, ry))
        return np.clip((1 - radius) / edge, 0, 1)

    def curve(self, points: np.ndarray, thickness: float) -> np.ndarray:
        """A soft mask along the polyline ``points`` ([n, 2] of (x, y)); thickness in fractions
        of the width (y is rescaled so the line is as thick in both directions). Distances are
        computed only in the window around the curve, which keeps a study at a few ms."""
        height, width = self.image.shape
        pixel = 1 / width
        margin = thickness + 2 * pixel
        left = max(int((points[:, 0].min() - margin) * width), 0)
        right = min(int((points[:, 0].max() + margin) * width) + 1, width)
        top = max(int((points[:, 1].min() - margin * height / width) * height), 0)
        bottom = min(int((points[:, 1].max() + margin * height / width) * height) + 1, height)
        mask = np.zeros(self.image.shape)
        if left >= right or top >= bottom:
            return mask
        aspect = height / width
        px, py = self.x[top:bottom, left:right], self.y[top:bottom, left:right] * aspect
        distance = np.full(px.shape, np.inf)
        for (x0, y0), (x1, y1) in itertools.pairwise(points):
            y0, y1 = y0 * aspect, y1 * aspect
            dx, dy = x1 - x0, y1 - y0
            t = np.clip(((px - x0) * dx + (py - y0) * dy) / max(dx * dx + dy * dy, 1e-12), 0, 1)
            distance = np.minimum(distance, np.hypot(px - x0 - t * dx, py - y0 - t * dy))
        mask[top:bottom, left:right] = np.clip((thickness / 2 - distance) / pixel + 0.5, 0, 1)
        return mask

    def paint(self, mask: np.ndarray, value: float) -> None:
        """Blend ``value`` in where the mask is on (an opaque object)."""
        self.image = self.image * (1 - mask) + value * mask

    def add(self, mask: np.ndarray, amount: float) -> None:
        """Add density where the mask is on (an overlapping structure, e.g. bone)."""
        self.image = self.image + amount * mask

    def box(self, mask: np.ndarray) -> Box:
        rows = np.flatnonzero(mask.max(axis=1) > 0.5)
        cols = np.flatnonzero(mask.max(axis=0) > 0.5)
        return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1

    def to_uint8(self, rng: np.random.Generator) -> np.ndarray:
        noisy = self.image + rng.normal(0.0, 0.025, self.image.shape)
        return np.clip(noisy * 255 + 0.5, 0, 255).astype(np.uint8)


def _bezier(
    start: tuple[float, float], via: tuple[float, float], end: tuple[float, float]
) -> np.ndarray:
    t = np.linspace(0, 1, 24)[:, None]
    p0, p1, p2 = (np.asarray(p) for p in (start, via, end))
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def draw_frontal(findings: Findings, rng: np.random.Generator) -> Radiograph:
    """A PA chest film with ``findings`` drawn in; anatomy jitters from study to study."""
    canvas = _Canvas(FRONTAL_SHAPE)
    shift_x, shift_y = rng.uniform(-0.025, 0.025, 2)
    cx, cy = 0.5 + shift_x, 0.47 + shift_y
    canvas.image += rng.uniform(0.05, 0.12)
    canvas.paint(canvas.ellipse(cx, cy + 0.08, 0.46, 0.6), rng.uniform(0.42, 0.5))  # body
    canvas.paint(canvas.curve(np.array([[cx, 0.0], [cx, 1.0]]), 0.06), 0.6)  # spine
    lung_rx, lung_ry = rng.uniform(0.14, 0.16), rng.uniform(0.27, 0.31)
    lungs = {
        "right": (cx - 0.18, cy),  # the patient's right is the image's left
        "left": (cx + 0.18, cy),
    }
    for lx, ly in lungs.values():
        canvas.paint(canvas.ellipse(lx, ly, lung_rx, lung_ry), rng.uniform(0.16, 0.22))
    for side in (-1, 1):  # ribs: gentle arcs over each lung, then a clavicle
        inner = cx + side * 0.04
        near = np.abs(canvas.x - inner - side * 0.15) < 0.15
        for k in range(7):
            arc = cy - lung_ry + 0.08 + k * 0.075 + 0.35 * (canvas.x - inner) ** 2
            rib = np.clip((0.006 - np.abs(canvas.y - arc)) * FRONTAL_SHAPE[0] + 0.5, 0, 1)
            canvas.add(rib * near, _BONE)
        clavicle = np.array([[cx + side * 0.05, 0.16 + shift_y], [cx + side * 0.3, 0.12 + shift_y]])
        canvas.add(canvas.curve(clavicle, 0.02), _BONE * 1.5)
    boxes: dict[str, Box] = {}

    heart_width = rng.uniform(1.45, 1.7) if findings.cardiomegaly else rng.uniform(0.9, 1.05)
    heart = canvas.ellipse(cx + 0.035, cy + 0.19, 0.13 * heart_width, 0.12)
    canvas.paint(heart, rng.uniform(0.6, 0.66))
    if findings.cardiomegaly:
        boxes["cardiomegaly"] = canvas.box(heart)

    if findings.effusion_sides:
        fluid = np.zeros(FRONTAL_SHAPE)
        for side in findings.effusion_sides:
            lx, ly = lungs[side]
            lung = canvas.ellipse(lx, ly, lung_rx * 1.02, lung_ry * 1.02)
            level = ly + lung_ry - 2 * lung_ry * findings.effusion_level
            # The meniscus climbs towards the lateral chest wall, blunting the angle.
            lateral = np.abs(canvas.x - cx) - abs(lx - cx)
            surface = level - 0.12 * np.clip(lateral, -0.05, 0.2)
            fluid = np.maximum(fluid, lung * np.clip((canvas.y - surface) * 120, 0, 1))
        canvas.paint(fluid, rng.uniform(0.52, 0.58))
        boxes["pleural_effusion"] = canvas.box(fluid)

    if findings.line_kind is not None:
        line = canvas.curve(_line_path(findings.line_kind, cx, cy, rng), 0.01)
        canvas.paint(line, _LINE)
        boxes["line_or_tube"] = canvas.box(line)

    if findings.pacemaker:
        dx, dy = rng.uniform(0.7, 0.8) + shift_x, rng.uniform(0.17, 0.23) + shift_y
        can = canvas.ellipse(dx, dy, 0.05, 0.032)
        lead = canvas.curve(_bezier((dx - 0.03, dy), (cx - 0.05, cy - 0.05), (cx, cy + 0.24)), 0.01)
        canvas.paint(np.maximum(can, lead), _DEVICE)
        boxes["pacemaker"] = canvas.box(can)
    return Radiograph(canvas.to_uint8(rng), boxes)


def _line_path(kind: str, cx: float, cy: float, rng: np.random.Generator) -> np.ndarray:
    jitter = rng.uniform(-0.015, 0.015)
    if kind == "endotracheal":  # down the trachea, tip above the carina
        return _bezier((cx + jitter, 0.0), (cx, 0.12), (cx + 0.005, cy - 0.1 + jitter))
    if kind == "central_venous":  # from the right neck into the superior vena cava
        return _bezier((cx - 0.2, 0.02), (cx - 0.1, 0.08 + jitter), (cx - 0.03, cy - 0.05))
    if kind == "nasogastric":  # down the oesophagus, below the left hemidiaphragm
        return _bezier((cx - 0.01, 0.0), (cx + jitter, 0.6), (cx + 0.15, 0.9))
    raise ValueError(f"unknown line kind {kind!r}")


def draw_lateral(findings: Findings, rng: np.random.Generator) -> Radiograph:
    """A lateral film (patient facing left): one lung field, the spine behind, the heart in
    front; devices project anteriorly, fluid fills the posterior costophrenic sulcus."""
    canvas = _Canvas(LATERAL_SHAPE)
    shift_x, shift_y = rng.uniform(-0.02, 0.02, 2)
    canvas.image += rng.uniform(0.05, 0.12)
    canvas.paint(canvas.ellipse(0.5 + shift_x, 0.55, 0.42, 0.6), rng.uniform(0.42, 0.5))
    lung = canvas.ellipse(0.5 + shift_x, 0.47 + shift_y, 0.3, 0.32)
    canvas.paint(lung, rng.uniform(0.18, 0.24))
    spine = np.array([[0.8 + shift_x, 0.0], [0.78 + shift_x, 1.0]])
    canvas.paint(canvas.curve(spine, 0.08), 0.62)
    heart_width = 1.35 if findings.cardiomegaly else 1.0
    heart = canvas.ellipse(0.38 + shift_x, 0.66 + shift_y, 0.13 * heart_width, 0.12)
    canvas.paint(heart, rng.uniform(0.58, 0.64))
    boxes: dict[str, Box] = {}
    if findings.effusion_sides:
        level = 0.78 + shift_y - 0.5 * findings.effusion_level * 0.64
        surface = level - 0.25 * np.clip(canvas.x - 0.5 - shift_x, 0, 0.4)
        fluid = lung * np.clip((canvas.y - surface) * 120, 0, 1) * (canvas.x > 0.45 + shift_x)
        canvas.paint(fluid, rng.uniform(0.52, 0.58))
        boxes["pleural_effusion"] = canvas.box(fluid)
    if findings.line_kind is not None:
        line = canvas.curve(_bezier((0.55, 0.0), (0.52, 0.15), (0.5, 0.38 + shift_y)), 0.01)
        canvas.paint(line, _LINE)
        boxes["line_or_tube"] = canvas.box(line)
    if findings.pacemaker:
        can = canvas.ellipse(0.24 + shift_x, 0.22 + shift_y, 0.035, 0.03)
        lead = canvas.curve(_bezier((0.25, 0.22), (0.3, 0.4), (0.34, 0.68)), 0.01)
        canvas.paint(np.maximum(can, lead), _DEVICE)
        boxes["pacemaker"] = canvas.box(can)
    return Radiograph(canvas.to_uint8(rng), boxes)
