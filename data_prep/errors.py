"""`UserError`: the one base class of every error a user can act on.

Its message is the whole story, one line naming the file, line, field or folder and what to do:
`python -m reid_jax.main` and `python -m data_prep.build` print it as `error: <message>` and exit
with status 1, without a traceback. Everything else (a bug, an interrupted library call) keeps
its traceback. Each owner defines its own subclass beside the code that raises it (a bad layout,
a damaged checkpoint, a config field...), usually also deriving from the builtin exception that
says what kind of problem it is (`ValueError`, `FileNotFoundError`), so callers that catch those
keep working.

It is defined here, in the package that `reid_jax` builds on (`data_prep` never imports
`reid_jax`), so that the converter's errors belong to the same family; `reid_jax.errors`
re-exports it.
"""


class UserError(Exception):
  """Something the user can act on; the message says what and where."""


class FieldError(UserError, ValueError):
  """A bad value of one field of a settings object (an `Architecture`, a schedule), raised by
  the object that owns the field. `reid_jax.config.validate` relabels it with the config field's
  full name."""

  def __init__(self, field: str, message: str):
    super().__init__(f"{field}: {message}")
    self.field = field
    self.message = message


# The optional parts of the package and what a user installs for each (pyproject.toml's extras).
# jax2onnx declares an older orbax-checkpoint than the one this package needs, though it never
# imports it, so it is installed without its declared dependencies after the `onnx` extra.
EXTRAS = {
  "video": "pip install 'reid-jax[video]'",
  "torch": "pip install 'reid-jax[torch]'",
  "onnx": "pip install 'reid-jax[onnx]' && pip install --no-deps jax2onnx==0.17.1",
}


class MissingExtra(UserError, ImportError):
  """An optional library this call needs is not installed; the message names the extra."""


def require(module: str, extra: str, purpose: str):
  """`import module`, or MissingExtra: `<purpose> needs <module>: <the extra's install line>`."""
  import importlib

  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise MissingExtra(f"{purpose} needs {module} ({e}): {EXTRAS[extra]}") from e
