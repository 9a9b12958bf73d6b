"""The decode paths and compile modes a server may be set to (no torch: the config reads it)."""

DECODE_PATHS = ("dynamic", "static")
INDUCTOR_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_BACKENDS = ("eager", "aot_eager")
COMPILE_CHOICES = ("off", *INDUCTOR_MODES, *COMPILE_BACKENDS)
