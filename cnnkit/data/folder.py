"""``ImageFolder``: a user's own images, one sub-folder per class, loaded into a ``Dataset``."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..functional.shapes import check_positive, pair
from .dataset import Dataset
from .download import DatasetFormatError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}


class ImageFolder(Dataset):
    """Images laid out as ``path/<class name>/<image file>``, loaded with Pillow.

    Classes are the sub-folders' names, sorted (label ``i`` is ``classes[i]``); within a class the
    files are taken in sorted order. Files whose extension is not an image format
    (``IMAGE_EXTENSIONS``) and hidden entries are ignored. Every image is converted to RGB (or
    to one gray channel with ``grayscale=True``) and resized bilinearly to ``size`` (an int for a
    square or ``(H, W)``); with ``size=None`` all images must already have the same size.

    ``files[i]`` is the file image ``i`` came from.
    """

    def __init__(self, path, size=None, grayscale: bool = False):
        path = Path(path).expanduser()
        if size is not None:
            size = pair(size, "size", "ImageFolder")
            check_positive(size, "size", "ImageFolder")
        if not path.is_dir():
            raise FileNotFoundError(f"ImageFolder: {path} is not a folder")
        classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise DatasetFormatError(
                f"ImageFolder: {path} has no class sub-folders; expected {path}/<class name>/<image files>"
            )
        files, labels = [], []
        for label, name in enumerate(classes):
            found = sorted(p for p in (path / name).iterdir()
                           if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise DatasetFormatError(
                    f"ImageFolder: the class folder {path / name} holds no image files "
                    f"(recognised extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})"
                )
            files += found
            labels += [label] * len(found)
        images = [_read_image(f, size, grayscale) for f in files]
        shapes = {im.shape for im in images}
        if len(shapes) > 1:
            raise DatasetFormatError(
                f"ImageFolder: the images in {path} have different sizes {sorted(s[:2] for s in shapes)[:4]}...; "
                "pass size=(H, W) to resize them all"
            )
        array = np.stack(images)                       # (N, H, W) or (N, H, W, 3)
        array = array[:, None] if grayscale else array.transpose(0, 3, 1, 2)
        super().__init__(np.ascontiguousarray(array), np.asarray(labels, np.int64), classes,
                         name=path.name, split=None, source=path)
        self.files = files
        self.size = size
        self.grayscale = bool(grayscale)


def _read_image(file: Path, size, grayscale: bool) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as image:
            image = image.convert("L" if grayscale else "RGB")
            if size is not None and image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)  # PIL takes (W, H)
            return np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DatasetFormatError(f"ImageFolder: cannot read the image {file} ({e})") from e
