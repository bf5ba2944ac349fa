"""Request bodies as Mailgun's clients send them: multipart or urlencoded, repeated keys kept
in order, query-string parameters merged in (some clients put them there on PUT/DELETE)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from multidict import MultiDict

from mta.api.errors import ApiError

# C0 controls and DEL: no real field name has one, and CR/LF in an `h:` name would be a header
# of its own in the message, NUL a truncated one
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SHOWN = 60  # characters of a client's text quoted back in an error


@dataclass(frozen=True)
class Upload:
    filename: str
    content_type: str | None
    data: bytes


class Form:
    def __init__(self, fields: MultiDict[str | Upload]) -> None:
        self._fields = fields

    def texts(self, name: str) -> list[str]:
        """Every value of a field as text (a file part's bytes decoded as UTF-8)."""
        return [_as_text(v) for v in self._fields.getall(name, [])]

    def text(self, name: str, default: str | None = None) -> str | None:
        values = self.texts(name)
        return values[-1] if values else default

    def uploads(self, name: str) -> list[Upload]:
        """Every value of a field as a file (a plain text value becomes a file named after it)."""
        out = []
        for value in self._fields.getall(name, []):
            if isinstance(value, Upload):
                out.append(value)
            else:
                out.append(Upload(name, None, value.encode("utf-8")))
        return out

    def items(self) -> list[tuple[str, str | Upload]]:
        return list(self._fields.items())

    def __contains__(self, name: str) -> bool:
        return name in self._fields


def _as_text(value: str | Upload) -> str:
    if isinstance(value, Upload):
        return value.data.decode("utf-8", "replace")
    return value


async def read_form(request: web.Request) -> Form:
    """Every request body the API takes is read here, so a body that is cut short or a field
    name no client would send gets its 400 in one place."""
    fields: MultiDict[str | Upload] = MultiDict(request.query)
    if request.body_exists:
        await _read_body(request, fields)
    _check_names(fields)
    return Form(fields)


async def _read_body(request: web.Request, fields: MultiDict[str | Upload]) -> None:
    ctype = request.content_type
    if ctype not in ("multipart/form-data", "application/x-www-form-urlencoded", "", None):
        raise ApiError(
            400,
            "Invalid request content type. Expecting 'multipart/form-data' or "
            "'application/x-www-form-urlencoded'",
        )
    kind = "multipart/form-data" if ctype == "multipart/form-data" else "form"
    try:
        posted = await request.post()
    except web.HTTPRequestEntityTooLarge:
        raise
    except (ValueError, AssertionError, UnicodeDecodeError, LookupError) as exc:
        raise ApiError(400, f"malformed {kind} request: {exc}") from None
    except BadHttpMessage as exc:  # a part's header lines: cut short, or CR/LF/NUL in a name
        raise ApiError(400, f"malformed {kind} request: {exc.message}") from None
    except ConnectionResetError:  # the client stopped sending before its Content-Length
        raise ApiError(400, f"malformed {kind} request: the body ended early") from None
    for name, value in posted.items():
        if isinstance(value, web.FileField):
            fields.add(name, Upload(value.filename, value.content_type, value.file.read()))
            value.file.close()
        else:
            fields.add(name, value)


async def read_json_body(request: web.Request) -> bytes:
    """A JSON request body, with read_form's answer to a body cut short."""
    try:
        return await request.read()
    except ConnectionResetError:
        raise ApiError(400, "malformed JSON request: the body ended early") from None


def _check_names(fields: MultiDict[str | Upload]) -> None:
    """Refuse a field name with a control character (query string or body, any encoding)."""
    for name in fields:
        if _CONTROL.search(name):
            raise ApiError(400, f"form field name {shown(name)} contains a control character")


def shown(text: str) -> str:
    """A client's text quoted in an error message: escaped, and cut if long."""
    cut = text if len(text) <= _SHOWN else text[:_SHOWN] + "..."
    return repr(cut)


def whole_number(text: str, high: int) -> int | None:
    """`text` as a whole number from 0 to `high`, else None. ASCII digits only (str.isdigit
    also takes '²', which int() refuses), and no more of them than `high` has before int()
    (which refuses over 4,300 digits and is slow well before)."""
    digits = text.lstrip("0") or "0"
    if not (digits.isascii() and digits.isdigit()) or len(digits) > len(str(high)):
        return None
    value = int(digits)
    return value if value <= high else None


def parse_bool(name: str, value: str | None, *, extra: tuple[str, ...] = ()) -> bool | str | None:
    """yes/no/true/false/1/0 in any case (and Python's True/False); None when absent."""
    if value is None:
        return None
    lowered = value.strip().lower()
    if lowered in extra:
        return lowered
    if lowered in ("yes", "true", "1", "on"):
        return True
    if lowered in ("no", "false", "0", "off", ""):
        return False
    allowed = ", ".join(("yes", "no", "true", "false", *extra))
    raise ApiError(400, f"'{name}' must be one of {allowed}, got {value!r}")
