"""Real image files of every awkward kind, made from the photos shipped with scikit-image."""

import os

import numpy as np
from PIL import Image

from lookalike.demo.dataset import skimage_photo_paths


def photo(name="chelsea"):
    with Image.open(skimage_photo_paths()[name]) as img:
        img.load()
        return img


def write_jpeg(path, name="chelsea"):
    photo(name).convert("RGB").save(path, quality=90)
    return path


def write_truncated_jpeg(path, name="astronaut"):
    full = path + ".full.jpg"
    photo(name).convert("RGB").save(full, quality=90)
    data = open(full, "rb").read()
    os.remove(full)
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])  # a download cut off half-way
    return path


def write_png16(path, name="camera"):
    gray = np.asarray(photo(name).convert("L"), dtype=np.uint16) * 257  # full 16-bit range
    Image.fromarray(gray).save(path)
    return path


def write_rgba_png(path, name="chelsea"):
    img = photo(name).convert("RGBA")
    alpha = np.full(img.size[::-1], 255, np.uint8)
    alpha[:, : img.width // 2] = 0  # left half transparent
    img.putalpha(Image.fromarray(alpha))
    img.save(path)
    return path


def write_palette_gif(path, name="coffee"):
    img = photo(name).convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    img.save(path, transparency=0)
    return path


def write_cmyk_jpeg(path, name="rocket"):
    photo(name).convert("RGB").convert("CMYK").save(path, quality=90)
    return path


def write_exif_rotated_jpeg(path, name="chelsea"):
    img = photo(name).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    img.save(path, exif=exif.tobytes())
    return path
