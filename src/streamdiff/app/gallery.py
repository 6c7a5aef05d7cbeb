"""The built-in prompt gallery and prompt lists read from text or YAML files."""

from __future__ import annotations

from pathlib import Path

GALLERY: tuple[tuple[str, str], ...] = (
    ("oil painting", "oil painting style, thick brushstrokes, masterpiece"),
    ("watercolor", "watercolor painting, soft brushstrokes, paper texture"),
    ("anime", "anime style, cel shading, vibrant colors, clean lines"),
    ("pencil sketch", "pencil sketch, graphite, cross hatching, white paper"),
    ("cyberpunk", "cyberpunk city lights, neon glow, magenta and cyan, night"),
    ("van gogh", "painting in the style of Vincent van Gogh, swirling starry sky"),
    ("ukiyo-e", "ukiyo-e woodblock print, bold outlines, flat colors"),
    ("pixel art", "pixel art, 16-bit video game, limited palette"),
    ("stained glass", "stained glass window, lead lines, glowing colored glass"),
    ("claymation", "claymation figure, plasticine, stop motion, soft studio light"),
    ("pop art", "pop art, Roy Lichtenstein, halftone dots, bold comic colors"),
    ("marble statue", "white marble statue, classical sculpture, museum lighting"),
)

TEXT_SUFFIXES = (".txt", ".prompts")
YAML_SUFFIXES = (".yaml", ".yml")


def gallery_prompts() -> list[str]:
    return [text for _, text in GALLERY]


def load_prompts(path: str | Path) -> list[str]:
    """Prompts from a text file (one a line, # comments) or YAML (a list, or a mapping name -> prompt).

    YAML list items may also be mappings with a `prompt` key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in YAML_SUFFIXES:
        prompts = _from_yaml(path)
    elif suffix in TEXT_SUFFIXES or not suffix:
        prompts = _from_text(path.read_text(encoding="utf-8"))
    else:
        raise ValueError(f"prompt file must be .txt or .yaml/.yml; got {path.name}")
    if not prompts:
        raise ValueError(f"no prompts found in {path}")
    return prompts


def _from_text(text: str) -> list[str]:
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _from_yaml(path: Path) -> list[str]:
    from streamdiff.app.optional import require

    yaml = require("yaml", "a YAML prompt file")

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if isinstance(data, dict):
        data = data.get("prompts", data)
    if isinstance(data, dict):
        data = list(data.values())
    if not isinstance(data, list):
        raise ValueError(f"{path} must hold a list of prompts or a mapping of name: prompt")
    return [_yaml_item(item, path) for item in data]


def _yaml_item(item: object, path: Path) -> str:
    if isinstance(item, dict) and "prompt" in item:
        item = item["prompt"]
    if not isinstance(item, str) or not item.strip():
        raise ValueError(f"{path}: every prompt must be a non-empty string; got {item!r}")
    return item.strip()


def resolve_prompts(prompt: str | None, prompts: str | None) -> list[str]:
    """The prompt list for --prompt/--prompts: `prompts` is "gallery" or a file; `prompt` comes first."""
    listed = [] if prompts is None else gallery_prompts() if prompts == "gallery" else load_prompts(prompts)
    first = [prompt] if prompt else []
    merged = first + [p for p in listed if p != prompt]
    return merged or [GALLERY[0][1]]
