"""The errors a user can act on: `UserError` and `FieldError` (defined in `data_prep.errors`, the
layer this package builds on, so the converter's errors are of the same family)."""

from data_prep.errors import FieldError, MissingExtra, UserError, require

__all__ = ["FieldError", "MissingExtra", "UserError", "require"]
