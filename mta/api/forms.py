"""Request bodies as Mailgun's clients send them: multipart or urlencoded, repeated keys kept
in order, query-string parameters merged in (some clients put them there on PUT/DELETE)."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from multidict import MultiDict

from mta.api.errors import ApiError


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
    fields: MultiDict[str | Upload] = MultiDict(request.query)
    if not request.body_exists:
        return Form(fields)
    ctype = request.content_type
    if ctype not in ("multipart/form-data", "application/x-www-form-urlencoded", "", None):
        raise ApiError(
            400,
            "Invalid request content type. Expecting 'multipart/form-data' or "
            "'application/x-www-form-urlencoded'",
        )
    try:
        posted = await request.post()
    except web.HTTPRequestEntityTooLarge:
        raise
    except (ValueError, AssertionError, UnicodeDecodeError, LookupError) as exc:
        kind = "multipart/form-data" if ctype == "multipart/form-data" else "form"
        raise ApiError(400, f"malformed {kind} request: {exc}") from None
    for name, value in posted.items():
        if isinstance(value, web.FileField):
            fields.add(name, Upload(value.filename, value.content_type, value.file.read()))
            value.file.close()
        else:
            fields.add(name, value)
    return Form(fields)


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
