"""Finding scenes and rewriting their XML for live rendering.

Any Mitsuba 3 scene file works. Before loading, its first sensor gets an
``hdrfilm`` at the requested resolution with a box reconstruction filter, so
that every pixel's samples are its own and the two renders of a pair stay
independent pixel by pixel, and an ``independent`` sampler. Mitsuba's
``stratified``, ``orthogonal`` and ``ldsampler`` round 2 spp up to 4, and its
``multijitter``, which keeps 2, came out biased there: 256 renders of 2 spp
averaged 0.45% brighter than the 1024-spp reference on cornell-box and 0.37%
darker on sunlit-room, 11-21 times their standard error, where the
``independent`` sampler stayed within one. Noise2Noise passes such a bias
straight into what the network learns.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from .errors import RendererError

SCENES_DIR = Path(__file__).resolve().parent.parent / "scenes"
DEFAULT_SCENE = "cornell-box"
SENSOR_ID = "online_denoise_sensor"


class SceneError(RendererError):
    pass


@dataclass(frozen=True)
class SceneInfo:
    name: str
    xml: Path
    path_json: Path | None  # the fly-through next to the scene, if any
    description: str


def _description(folder: Path) -> str:
    readme = folder / "README.md"
    if not readme.is_file():
        return ""
    for line in readme.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line
    return ""


def list_scenes(scenes_dir: Path = SCENES_DIR) -> list[SceneInfo]:
    if not scenes_dir.is_dir():
        return []
    return [
        SceneInfo(d.name, d / "scene.xml", d / "path.json" if (d / "path.json").is_file() else None, _description(d))
        for d in sorted(scenes_dir.iterdir())
        if (d / "scene.xml").is_file()
    ]


def resolve_scene(name_or_path: str, scenes_dir: Path = SCENES_DIR) -> SceneInfo:
    """A built-in scene by name, a scene folder, or any Mitsuba XML file."""
    builtin = {s.name: s for s in list_scenes(scenes_dir)}
    if name_or_path in builtin:
        return builtin[name_or_path]
    p = Path(name_or_path).expanduser()
    if p.is_dir() and (p / "scene.xml").is_file():
        p = p / "scene.xml"
    if p.is_file():
        path_json = p.parent / "path.json"
        return SceneInfo(p.stem if p.name != "scene.xml" else p.parent.name, p,
                         path_json if path_json.is_file() else None, _description(p.parent))
    known = ", ".join(builtin) or "(none found in scenes/)"
    raise SceneError(f"--scene {name_or_path}: no such scene; expected one of {known}, or a path to a Mitsuba XML file")


def scene_files(xml_path: Path) -> list[Path]:
    """The XML and every file it pulls in (includes, meshes, textures, maps), recursively."""
    found: list[Path] = []
    todo = [Path(xml_path)]
    while todo:
        path = todo.pop()
        if path in found or not path.is_file():
            continue
        found.append(path)
        if path.suffix.lower() != ".xml":
            continue
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError:
            continue
        for el in root.iter():
            name = el.get("filename") if el.tag == "include" else (
                el.get("value") if el.tag == "string" and el.get("name") == "filename" else None)
            if name and "$" not in name:
                todo.append((path.parent / name).resolve())
    return found


def scene_digest(xml_path: Path) -> str:
    """SHA-256 over the scene file and everything it references: a change to any of them shows."""
    h = hashlib.sha256()
    for f in sorted(scene_files(xml_path)):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _child(parent: ET.Element, tag: str) -> ET.Element | None:
    return next((c for c in parent if c.tag == tag), None)


def _prop(parent: ET.Element, kind: str, name: str, value) -> None:
    ET.SubElement(parent, kind, {"name": name, "value": str(value)})


def prepare_xml(xml_path: Path, width: int, height: int, spp: int) -> str:
    """The scene's XML with our film, filter and sampler on its first sensor."""
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as e:
        line, col = e.position
        raise SceneError(f"{xml_path}: malformed XML at line {line}, column {col}") from None
    except OSError as e:
        raise SceneError(f"{xml_path}: cannot read: {e.strerror}") from None
    if root.tag != "scene":
        raise SceneError(f"{xml_path}: expected a Mitsuba <scene> root element, found <{root.tag}>")
    root.set("version", root.get("version", "3.0.0"))

    sensors = [c for c in root if c.tag == "sensor"]
    if sensors:
        sensor = sensors[0]
        for extra in sensors[1:]:  # only the first one is driven; the others would just be parsed
            root.remove(extra)
    else:
        sensor = ET.SubElement(root, "sensor", {"type": "perspective"})
        _prop(sensor, "float", "fov", 40)
    if sensor.get("id") is None:
        sensor.set("id", SENSOR_ID)
    for tag in ("film", "sampler"):
        for old in [c for c in sensor if c.tag == tag]:
            sensor.remove(old)
    film = ET.SubElement(sensor, "film", {"type": "hdrfilm"})
    _prop(film, "integer", "width", width)
    _prop(film, "integer", "height", height)
    _prop(film, "string", "pixel_format", "rgb")
    ET.SubElement(film, "rfilter", {"type": "box"})
    sampler = ET.SubElement(sensor, "sampler", {"type": "independent"})
    _prop(sampler, "integer", "sample_count", spp)

    if _child(root, "integrator") is None:
        ET.SubElement(root, "integrator", {"type": "path"})
    return ET.tostring(root, encoding="unicode")


# Integrators whose Russian roulette starts at an ``rr_depth`` property.
ROULETTE_INTEGRATORS = ("path", "volpath", "volpathmis")


def live_integrator_xml(scene_xml: str, rr_depth: int) -> str | None:
    """The scene's integrator on its own, with Russian roulette from path depth ``rr_depth``.

    Russian roulette is unbiased: it changes the noise, not the expected
    image, so the live renders may start it earlier than the references do.
    None where the integrator takes no ``rr_depth`` or the scene sets one
    itself (the scene's choice stands).
    """
    root = ET.fromstring(scene_xml)
    integrator = _child(root, "integrator")
    if integrator is None or integrator.get("type") not in ROULETTE_INTEGRATORS:
        return None
    if any(c.get("name") == "rr_depth" for c in integrator):
        return None
    # The integrator is loaded outside its scene, so the scene's $name defaults are filled in here.
    defaults = {d.get("name"): d.get("value") for d in root if d.tag == "default"}
    live = ET.fromstring(ET.tostring(integrator, encoding="unicode"))
    for element in live.iter():
        for key, value in element.attrib.items():
            if value.startswith("$") and value[1:] in defaults:
                element.set(key, defaults[value[1:]])
    live.set("version", root.get("version", "3.0.0"))
    _prop(live, "integer", "rr_depth", rr_depth)
    return ET.tostring(live, encoding="unicode")
