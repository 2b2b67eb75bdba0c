"""What the page asks for, checked, as `sample.py` overrides and the command that reproduces it."""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass

from difftune.errors import DifftuneError
from difftune.guidance.options import SCHEDULE_NAMES as SCHEDULES

GUIDANCES = ("none", "color", "clip")
SCHEDULERS = ("ddim", "ddpm", "dpm_solver")
HEX_COLOUR = re.compile(r"^#?([0-9a-fA-F]{6})$")
RGBA_COLOUR = re.compile(r"^rgba?\(\s*([\d.]+)\s*,\s*([\d.]+)\s*,\s*([\d.]+)")


def parse_colour(value: object) -> tuple[float, float, float]:
    """`#rrggbb` (or `rgb(r, g, b)`, as some colour pickers give it) as RGB in [0, 1]."""
    text = str(value or "").strip()
    if found := HEX_COLOUR.match(text):
        digits = found[1]
        return tuple(round(int(digits[i : i + 2], 16) / 255, 4) for i in (0, 2, 4))
    if found := RGBA_COLOUR.match(text):
        return tuple(round(min(255.0, float(v)) / 255, 4) for v in found.groups())
    raise DifftuneError(f"colour={text!r}: expected a colour like #cc6699")


def parse_number(key: str, value: object, example: str, allow_empty: bool = False) -> float | None:
    """A finite number typed in a text box; empty means None where that is allowed."""
    text = str(value if value is not None else "").strip()
    if not text and allow_empty:
        return None
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        empty = " or empty" if allow_empty else ""
        raise DifftuneError(f"{key}={text!r}: expected a number{empty} (e.g. {example})")
    return number


def parse_int(key: str, value: object, low: int, high: int) -> int:
    """An integer in [low, high] from a slider or a number box."""
    try:
        number = float(value)  # sliders send floats
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and number == int(number) and low <= number <= high):
        raise DifftuneError(f"{key}={value!r}: expected a whole number from {low} to {high}")
    return int(number)


def _choice(key: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise DifftuneError(f"{key}={value!r}: expected one of {', '.join(choices)}")
    return str(value)


PLAIN = re.compile(r"[A-Za-z_./~][\w./:@+~-]*")


def _hydra_string(text: str) -> str:
    """A value as a Hydra override string: bare where Hydra reads it as this string, else in
    double quotes."""
    if PLAIN.fullmatch(text) and text.lower() not in ("true", "false", "null", "nan", "inf"):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class PageRequest:
    """The page's controls, as typed (strings from text boxes, floats from sliders)."""

    pretrained: str
    guidance: str = "color"
    colour: str = "#cc6699"
    prompt: str = ""
    scale: str = "40"
    through_unet: bool = False
    schedule: str = "none"
    scheduler: str = "ddim"
    steps: float = 20
    num_images: float = 4
    seed: float = 0
    class_label: str = ""
    cfg_scale: str = ""

    def overrides(self, clip_pretrained: str | None, max_images: int, max_steps: int) -> list[str]:
        """The `sample.py` overrides of this request; one-line DifftuneError for bad input."""
        pretrained = str(self.pretrained or "").strip()
        if not pretrained:
            raise DifftuneError("pipeline='': give a hub id, a local pipeline dir or a run dir")
        guidance = _choice("guidance", self.guidance, GUIDANCES)
        scheduler = _choice("scheduler", self.scheduler, SCHEDULERS)
        steps = parse_int("steps", self.steps, 1, max_steps)
        count = parse_int("number of images", self.num_images, 1, max_images)
        seed = parse_int("seed", self.seed, 0, 2**32 - 1)  # as sample.py's check_seed
        out = [f"pretrained={_hydra_string(pretrained)}", f"scheduler={scheduler}",
               f"num_inference_steps={steps}", f"num_images={count}", f"batch_size={count}",
               f"seed={seed}"]  # fmt: skip
        if guidance != "none":
            scale = parse_number("guidance scale", self.scale, "40" if guidance == "color" else "8")
            schedule = _choice("schedule", self.schedule, SCHEDULES)
            out += [f"guidance={guidance}", f"guidance.scale={scale:g}",
                    f"guidance.through_unet={str(bool(self.through_unet)).lower()}",
                    f"guidance.schedule={schedule}"]  # fmt: skip
        if guidance == "color":
            r, g, b = parse_colour(self.colour)
            out.append(f"guidance.target_rgb=[{r:g},{g:g},{b:g}]")
        if guidance == "clip":
            prompt = str(self.prompt or "").strip()
            if not prompt:
                raise DifftuneError("prompt='': CLIP guidance needs a text prompt")
            if clip_pretrained is None:
                raise DifftuneError(
                    "CLIP guidance: this demo was started with clip_pretrained=null, so CLIP has "
                    "random weights and a prompt would mean nothing; restart it with "
                    "clip_pretrained=openai (cached) or clip_pretrained=/path/to/weights.bin"
                )
            out += [f"guidance.prompt={_hydra_string(prompt)}",
                    f"guidance.pretrained={_hydra_string(clip_pretrained)}"]  # fmt: skip
        label = str(self.class_label or "").strip()
        if label:
            value = label if label.isdigit() else _hydra_string(label)  # a name or an id
            out.append(f"class_label={value}")
        cfg_scale = parse_number("CFG scale", self.cfg_scale, "3", allow_empty=True)
        if cfg_scale is not None:
            out.append(f"cfg_scale={cfg_scale:g}")
        return out


def command(overrides: list[str]) -> str:
    """The shell command that samples what the page did: `python sample.py ...`."""
    return " ".join(["python", "sample.py", *(shlex.quote(o) for o in overrides)])
