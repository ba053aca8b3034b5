"""Jinja2 templates from `prompts/` (by name) or from any path, with a content hash for provenance."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import jinja2

from rlaif.errors import ConfigError

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"


@dataclass(frozen=True)
class Template:
    name: str
    path: Path
    source: str
    sha256: str
    compiled: jinja2.Template

    def render(self, **values) -> str:
        try:
            return self.compiled.render(**values)
        except jinja2.UndefinedError as e:
            raise ConfigError(f"{self.path}: {e.message}; the template may use: {', '.join(sorted(values))}") from None


def find_template(name: str, kind: str, field: str) -> Path:
    """A path as given, else `prompts/<kind>/<name>.j2`."""
    direct = Path(name)
    if direct.is_file():
        return direct
    shipped = PROMPTS_DIR / kind / f"{name}.j2"
    if shipped.is_file():
        return shipped
    available = sorted(p.stem for p in (PROMPTS_DIR / kind).glob("*.j2"))
    raise ConfigError(f"field '{field}': template {name!r} not found: not a file, and not one of {available} in "
                      f"{PROMPTS_DIR / kind}")


def load_template(name: str, kind: str, field: str) -> Template:
    path = find_template(name, kind, field)
    source = path.read_text(encoding="utf-8")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)
    try:
        compiled = env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ConfigError(f"{path}:{e.lineno}: template syntax error: {e.message}") from None
    return Template(name=name if not Path(name).is_file() else path.stem, path=path, source=source,
                    sha256=hashlib.sha256(source.encode()).hexdigest()[:16], compiled=compiled)
