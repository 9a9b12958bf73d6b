"""The decode paths and compile modes a server may be set to, checked in one place (no torch:
the config reads it)."""

from __future__ import annotations

from dataclasses import dataclass

DECODE_PATHS = ("dynamic", "static")
INDUCTOR_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_BACKENDS = ("eager", "aot_eager")
COMPILE_CHOICES = ("off", *INDUCTOR_MODES, *COMPILE_BACKENDS)


@dataclass(frozen=True)
class DecodeSetting:
    """Which decode batch runs (``DECODE_PATHS``) and how its step is compiled
    (``COMPILE_CHOICES``; the static path only). ``ValueError`` names the setting at fault."""

    path: str = "dynamic"
    compile_mode: str = "off"

    def __post_init__(self) -> None:
        if self.path not in DECODE_PATHS:
            raise ValueError(
                f"batching.decode_path must be one of {', '.join(DECODE_PATHS)}, got {self.path!r}"
            )
        if self.compile_mode not in COMPILE_CHOICES:
            raise ValueError(
                f"batching.decode_compile must be one of {', '.join(COMPILE_CHOICES)}, "
                f"got {self.compile_mode!r}"
            )
        if self.compile_mode != "off" and self.path != "static":
            raise ValueError("batching.decode_compile needs batching.decode_path = 'static'")

    @property
    def static(self) -> bool:
        return self.path == "static"
