"""Knobs: the UPPERCASE module-level constants of an editable file, read and rewritten in place.

`read_knobs(source)` returns the literal constants of a train.py; `apply_knobs(source, values)` rewrites some of them
and leaves every other byte alone (comments, blank lines, spacing, quote style); `infer_space(source, overrides,
constraints)` turns them into a search space that strategies sample from without an LLM.

- `source`: what counts as a knob, how the file is parsed (cached by text) and how values are written back.
- `space`: Knob, Space (bounds, constraints, sampling) and the warped axes (`log`, `log1m`) knobs are searched on.
- `infer`: the inference rules and fleetlab.toml's `[knobs]` overrides, whose keys (OVERRIDE_KEYS) the project's
  schema checks against.
"""

from fleetlab.knobs.infer import OVERRIDE_KEYS, check_overrides, infer_space
from fleetlab.knobs.source import apply_knobs, format_value, read_constants, read_knobs
from fleetlab.knobs.space import KINDS, Knob, Space, unwarp, warp, warps

__all__ = ["Knob", "Space", "read_knobs", "read_constants", "apply_knobs", "infer_space", "format_value", "KINDS",
           "warp", "unwarp", "warps", "OVERRIDE_KEYS", "check_overrides"]
