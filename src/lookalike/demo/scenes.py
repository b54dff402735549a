"""Rendered 3-D scenes: the same room photographed from two camera positions.

Test and benchmark data for the "another shot" relation (issue #28), made here
from the photos that ship with scikit-image, nothing downloaded. A scene is a box
room (back wall, side walls, floor, ceiling) with a box standing in it, each face
papered with a photo; a pinhole camera inside looks at the back wall. Moving the
camera sideways (and turning it a little back toward the room) is a camera that
moved through 3-D: faces at different depths shift by different amounts
(parallax), so no single homography maps one shot onto the other; a fundamental
matrix does. Two scenes that share some faces' photos and differ in the others are
the hard negatives: look-alike rooms, the same wallpaper, another scene.

Rendering is exact ray casting (each pixel's ray against every face, the nearest hit
wins; texture looked up bilinearly), with a little sensor noise so that two shots
never share pixels.
"""

from dataclasses import dataclass

import numpy as np

# The room: x right, y down, z forward (metres); the camera starts at the origin.
ROOM = dict(x=(-2.0, 2.0), y=(-1.5, 1.5), z=(-1.0, 6.0))
# The box standing on the floor, nearer than the back wall.
BOX = dict(x=(-0.9, 0.5), y=(0.3, 1.5), z=(3.0, 4.2))
FACES = ("back", "left", "right", "floor", "ceiling", "box_front", "box_side", "box_top")
FOCAL = 0.9  # focal length in image widths (a normal lens, ~58 degrees across)
NOISE = 2.0  # grey levels of sensor noise


@dataclass
class Shot:
    """Where the camera stands and which way it turns (radians about y, then x)."""

    position: tuple = (0.0, 0.0, 0.0)
    yaw: float = 0.0
    pitch: float = 0.0


def _rotation(yaw, pitch):
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    turn = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    tilt = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    return turn @ tilt


def _faces():
    """Each face: (axis, value, (u axis, u range), (v axis, v range), inside of the room)."""
    r, b = ROOM, BOX
    return {
        "back": (2, r["z"][1], (0, r["x"]), (1, r["y"])),
        "left": (0, r["x"][0], (2, r["z"]), (1, r["y"])),
        "right": (0, r["x"][1], (2, r["z"][::-1]), (1, r["y"])),
        "floor": (1, r["y"][1], (0, r["x"]), (2, r["z"][::-1])),
        "ceiling": (1, r["y"][0], (0, r["x"]), (2, r["z"])),
        "box_front": (2, b["z"][0], (0, b["x"]), (1, b["y"])),
        "box_side": (0, b["x"][1], (2, b["z"]), (1, b["y"])),
        "box_top": (1, b["y"][0], (0, b["x"]), (2, b["z"][::-1])),
    }


def render(textures, shot, size=(640, 480), seed=0):
    """One shot of the room as a uint8 RGB array (height, width, 3).

    ``textures``: {face name: RGB uint8 array} for every name of :data:`FACES`.
    """
    import cv2

    w, h = size
    f = FOCAL * w
    xs, ys = np.meshgrid(np.arange(w) + 0.5 - w / 2, np.arange(h) + 0.5 - h / 2)
    rays = np.stack([xs / f, ys / f, np.ones_like(xs)], axis=-1) @ _rotation(
        shot.yaw, shot.pitch).T
    origin = np.asarray(shot.position, float)
    nearest = np.full((h, w), np.inf)
    out = np.zeros((h, w, 3), np.float32)
    for name, (axis, value, (ua, ur), (va, vr)) in _faces().items():
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (value - origin[axis]) / rays[..., axis]
        hit = origin + t[..., None] * rays
        u = (hit[..., ua] - ur[0]) / (ur[1] - ur[0])
        v = (hit[..., va] - vr[0]) / (vr[1] - vr[0])
        seen = (t > 1e-6) & (t < nearest) & (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
        if not seen.any():
            continue
        tex = textures[name].astype(np.float32)
        th, tw = tex.shape[:2]
        looked_up = cv2.remap(tex, (u * (tw - 1)).astype(np.float32),
                              (v * (th - 1)).astype(np.float32), cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
        out[seen] = looked_up[seen]
        nearest[seen] = t[seen]
    out += np.random.default_rng(seed).normal(0, NOISE, out.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def skimage_photos(side=512):
    """The colour and grey photos of ``skimage/data``, as RGB arrays, by name (sorted)."""
    from PIL import Image

    from lookalike.demo.dataset import skimage_photo_paths

    photos = {}
    for name, path in skimage_photo_paths().items():
        with Image.open(path) as img:
            photos[name] = np.asarray(img.convert("RGB").resize((side, side)))
    return photos


def drawn_texture(seed, side=512, shapes=90):
    """A poster drawn here from ``seed``: overlapping shapes in random colours on a random
    gradient (RGB uint8, ``side`` square). Rooms papered with these show no photo that
    could be a duplicate of them."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, side)[:, None, None]
    start, end = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    image = Image.fromarray((start + (end - start) * ramp * np.ones((side, side, 1))
                             ).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(shapes):
        x, y = rng.integers(-side // 8, side, 2)
        w, h = rng.integers(side // 40, side // 4, 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(0, 4)
        if kind == 0:
            draw.ellipse((x, y, x + w, y + h), fill=colour)
        elif kind == 1:
            draw.rectangle((x, y, x + w, y + h), fill=colour)
        elif kind == 2:
            points = [(int(x + rng.integers(0, w)), int(y + rng.integers(0, h)))
                      for _ in range(3 + int(rng.integers(0, 3)))]
            draw.polygon(points, fill=colour)
        else:
            draw.line((x, y, x + w, y + h), fill=colour, width=int(rng.integers(2, 8)))
    return np.asarray(image)


def room(photos, names):
    """{face: texture} from ``photos`` ({name: array}), the faces papered in ``names``' order."""
    return {face: photos[name] for face, name in zip(FACES, names)}


# Two shots of one room: the second camera moved sideways and forward and turned a
# little back toward the room's middle (a person taking the picture again).
SHOTS = (
    (Shot((0.0, 0.0, 0.0), 0.0, 0.05), Shot((0.8, -0.1, 0.6), -0.18, 0.08)),
    (Shot((-0.5, 0.1, 0.2), 0.08, 0.0), Shot((0.6, 0.0, 0.9), -0.15, 0.04)),
    (Shot((0.4, -0.2, 0.0), -0.05, 0.1), Shot((-0.6, 0.0, 0.8), 0.2, 0.05)),
)
