"""The value types of settings, the rules beside them, and pydantic's errors as GptkitErrors.

Settings come as YAML values or as `--set key=value` text. pydantic does the validation; the
`Before` validators here only say which text forms a value may take, so that the command line
and recipes accept what they always did: `1e3` and `1_000` are whole numbers (kept exact,
never through a float), `true/yes/on/1` and `false/no/off/0` are booleans, `null`, `none`,
`auto` and `~` clear an optional setting, `[a, b]` or one bare item is a list, and a
non-finite number is refused. Every refusal becomes one GptkitError line naming the key.
"""

from __future__ import annotations

import decimal
import math
import re
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic_core import PydanticCustomError
from typing_extensions import Self

from gptkit.errors import GptkitError

T = TypeVar("T")
FIELD_ERROR = "gptkit_field"  # an error type whose message follows the setting's name


def _refuse(message: str, value: Any) -> PydanticCustomError:
    """A field-level error: `message` (with `{got}`) follows the key in the final line."""
    return PydanticCustomError(FIELD_ERROR, message, {"got": repr(value)})


def _exact_int(text: str) -> int:
    """An integer written as text, kept exact: "9007199254740993" stays itself (a float would
    round it), and "1e6" or "1_000" are whole numbers too. ValueError when it is not one."""
    try:
        number = decimal.Decimal(text.replace("_", ""))
    except decimal.InvalidOperation:
        raise ValueError(text) from None
    # a finite whole number, and not so large that int() would build a huge one
    if not number.is_finite() or number != number.to_integral_value() or number.adjusted() > 100:
        raise ValueError(text)
    return int(number)


def _as_int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return _exact_int(value.strip())
        except ValueError:
            pass
    raise _refuse("must be int, got {got}", value)


def _as_float(value: Any) -> float:
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError
        number = float(value.strip() if isinstance(value, str) else value)
    except (ValueError, OverflowError):
        raise _refuse("must be float, got {got}", value) from None
    if not math.isfinite(number):
        raise _refuse("must be a finite number, got {got}", value)
    return number


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = value.strip().lower() if isinstance(value, str) else None
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise _refuse("must be bool, got {got}", value)


def _as_str(value: Any) -> str:
    if isinstance(value, (dict, list)):
        raise _refuse("must be str, got {got}", value)
    return str(value)


def _as_bool_or_str(value: Any) -> bool | str:
    """A boolean if it reads as one, else text (e.g. sample.early_stopping: true or never)."""
    try:
        return _as_bool(value)
    except PydanticCustomError:
        return _as_str(value)


def none_words(value: Any) -> Any:
    """`null`, `none`, `auto` or `~` clear an optional setting."""
    if isinstance(value, str) and value.strip().lower() in ("null", "none", "auto", "~"):
        return None
    return value


def as_list(value: Any) -> list[Any]:
    """A YAML list, or on the command line `[a, b]` or one bare item."""
    items = value
    if isinstance(value, str) and value.startswith("["):
        try:
            items = yaml.safe_load(value)
        except yaml.YAMLError:
            raise _refuse("must be a list like [a, b], got {got}", value) from None
    return items if isinstance(items, list) else [value]


Int = Annotated[int, BeforeValidator(_as_int)]
Float = Annotated[float, BeforeValidator(_as_float)]
Bool = Annotated[bool, BeforeValidator(_as_bool)]
Str = Annotated[str, BeforeValidator(_as_str)]
BoolOrStr = Annotated[bool | str, BeforeValidator(_as_bool_or_str)]
Nullable = Annotated[T | None, BeforeValidator(none_words)]
StrList = Annotated[list[Str], BeforeValidator(as_list)]

_EPOCHS = re.compile(r"(?P<n>[0-9][0-9_.eE+-]*)\s*epochs?", re.IGNORECASE)


def epochs_in(value: int | str) -> float | None:
    """How many epochs an interval of `StepsOrEpochs` gives ("0.5 epochs" -> 0.5), or None
    when it counts optimizer steps."""
    return None if isinstance(value, int) else float(value.split()[0])


def _as_steps_or_epochs(value: Any) -> int | str:
    """A count of optimizer steps (>= 1), or of epochs written `0.5 epochs` (or `0.5epoch`),
    kept as the text `0.5 epochs` until the trainer knows the steps in an epoch."""
    if isinstance(value, str):
        found = _EPOCHS.fullmatch(value.strip())
        if found:
            try:
                number = float(found["n"])
            except ValueError:
                number = math.nan
            if not (math.isfinite(number) and number > 0):
                raise _refuse("must be a positive number of epochs, e.g. '0.5 epochs' "
                              "(got {got})", value)
            return f"{number:g} epochs"
    try:
        steps = _as_int(value)
    except PydanticCustomError:
        raise _refuse("must be a number of steps or of epochs ('0.5 epochs'), got {got}",
                      value) from None
    if steps < 1:
        raise _refuse("must be >= 1 step, or a number of epochs ('0.5 epochs') (got {got})",
                      value)
    return steps


# optimizer steps, or epochs of the training split ("0.5 epochs"; gptkit.train.epochs)
StepsOrEpochs = Annotated[int | str, BeforeValidator(_as_steps_or_epochs)]


# --- rules beside the fields -------------------------------------------------------------
def rule(ok: Callable[[Any], bool], message: str) -> AfterValidator:
    """A check on one field; `message` follows the key and may show the value as `{got}`.
    None (an optional setting left unset) always passes."""

    def check(value: Any) -> Any:
        if value is not None and not ok(value):
            raise PydanticCustomError(FIELD_ERROR, message, {"got": value})
        return value

    return AfterValidator(check)


def at_least(low: float, note: str = "") -> AfterValidator:
    return rule(lambda v: v >= low, f"must be >= {low}{note} (got {{got}})")


def above(low: float, note: str = "") -> AfterValidator:
    return rule(lambda v: v > low, f"must be > {low}{note} (got {{got}})")


def within(low: float, high: float, ends: str = "[]", note: str = "") -> AfterValidator:
    """`ends` as in interval notation: "[)" includes low and excludes high."""

    def ok(v: float) -> bool:
        return (low <= v if ends[0] == "[" else low < v) and (
            v <= high if ends[1] == "]" else v < high)

    return rule(ok, f"must be in {ends[0]}{low}, {high}{ends[1]}{note} (got {{got}})")


# --- errors ------------------------------------------------------------------------------
def _where(loc: tuple[Any, ...]) -> str:
    """('data', 'augment', 0) -> data.augment[0]"""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def settings_error(exc: ValidationError, prefix: tuple[str, ...] = ()) -> GptkitError:
    """pydantic's first error as one line naming the setting (`prefix` + its location)."""
    error = exc.errors()[0]
    where = _where(prefix + tuple(error["loc"]))
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == FIELD_ERROR:
        return GptkitError(f"{where} {error['msg']}")
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", "")
        return GptkitError(f"{where} must be {expected} (got {error['input']!r})")
    if kind == "extra_forbidden":
        return GptkitError(f"unknown setting {where!r}")
    return GptkitError(f"{where}: {error['msg']} (got {error['input']!r})")


class Settings(BaseModel):
    """A section of settings: validated when built, never changed after (frozen).

    Building one with bad values raises GptkitError (not pydantic's ValidationError), with
    the key spelled `section.key` as in recipes; `updated` is the way to a changed copy.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    section: ClassVar[str] = ""  # the name in recipes, which error messages use

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise settings_error(exc, (self.section,) if self.section else ()) from None

    def updated(self, **values: Any) -> Self:
        """A validated copy with `values` changed."""
        return type(self)(**{**self.model_dump(), **values})
