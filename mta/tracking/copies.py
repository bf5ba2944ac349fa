"""Recipients' tracked copies, for the delivery side: which messages need one and what goes in.

The message's o:tracking, o:tracking-opens, o:tracking-clicks and o:tracking-pixel-location-top
(or their X-Mailgun-Track* headers) win over the domain's settings; the domain's unsubscribe
setting adds footers and List-Unsubscribe. A message with none of that and no unsubscribe
variable goes out as one copy for everyone (signed once).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from mta.config import Config
from mta.domains import Domain
from mta.tracking.links import LIST_SCOPE, LinkKind, TrackingLinks, link_base
from mta.tracking.rewrite import UNSUBSCRIBE_VARIABLES, Choice, RecipientLinks, track

# List-Unsubscribe's mailto: unsubscribe@<domain> with the signed token as the subject (a
# token is too long for a local part); the MX honours it when the domain's MX points here
UNSUBSCRIBE_MAILBOX = "unsubscribe"
UNSUBSCRIBE_SUBJECT = "unsubscribe "


@dataclass(frozen=True)
class ListPost:
    """A list member's copy: the list it came through, as the send saw it."""

    address: str
    name: str = ""
    reply_preference: str = "list"

    def headers(self) -> list[tuple[str, str]]:
        """List-Id (RFC 2919: the address with its @ as a dot) and, for replies to the list,
        Reply-To; each only where the message has none of its own."""
        list_id = f"<{self.address.replace('@', '.')}>"
        if self.name:
            quoted = self.name.replace("\\", "\\\\").replace('"', '\\"')
            list_id = f'"{quoted}" {list_id}'
        headers = [("List-Id", list_id)]
        if self.reply_preference == "list":
            headers.append(("Reply-To", self.address))
        return headers


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


class Tracker:
    def __init__(self, links: TrackingLinks, config: Config) -> None:
        self._links = links
        self._public_url = config.tracking.public_url
        self._api_public_url = config.api.public_url
        self._max_parts = config.inbound.max_mime_parts
        self._max_depth = config.inbound.max_mime_depth

    @staticmethod
    def choice(options: Mapping[str, Any], domain: Domain) -> Choice:
        settings = domain.tracking
        everything = options.get("tracking")
        clicks = _first(options.get("tracking_clicks"), everything, settings.clicks)
        return Choice(
            opens=bool(_first(options.get("tracking_opens"), everything, settings.opens)),
            pixel_at_top=bool(_first(options.get("tracking_pixel_top"), settings.opens_at_top)),
            clicks="htmlonly" if clicks == "htmlonly" else bool(clicks),
            footer=settings.unsubscribes,
            html_footer=settings.html_footer,
            text_footer=settings.text_footer,
        )

    @staticmethod
    def wanted(stored: bytes, choice: Choice) -> bool:
        """Whether recipients get copies of their own (`stored`: the message or its template)."""
        return choice.anything or any(v in stored for v in UNSUBSCRIBE_VARIABLES)

    def copy(self, content: bytes, choice: Choice, domain: Domain, message_id: str,
             recipient: str, tags: list[str], mailing_list: ListPost | None = None) -> bytes:
        """`content` with this recipient's links (CPU only: big ones run in a thread); a list
        member's with its list's headers and unsubscribe links."""
        base = link_base(self._public_url, self._api_public_url, domain.web_scheme,
                         domain.web_prefix, domain.name)
        token = self._links.token

        def url(kind: LinkKind, extra: Any = None) -> str:
            return f"{base}/{kind}/{token(kind, domain.name, message_id, recipient, extra=extra)}"

        clicks: dict[str, str] = {}  # a link in both the text and the HTML part: one token

        def click_url(target: str) -> str:
            found = clicks.get(target)
            if found is None:
                found = clicks[target] = url("c", target)
            return found

        scope = "*" if mailing_list is None else LIST_SCOPE + mailing_list.address
        links = RecipientLinks(
            base,
            open_url=lambda: url("o"),
            click_url=click_url,
            unsubscribe_url=lambda scope: url("u", scope),
            unsubscribe_mailto=lambda: (
                f"mailto:{UNSUBSCRIBE_MAILBOX}@{domain.name}?subject="
                + quote(UNSUBSCRIBE_SUBJECT + token("u", domain.name, message_id, recipient,
                                                    extra=scope))
            ),
            recipient=recipient,
            tags=tags,
            list_scope=None if mailing_list is None else scope,
        )
        return track(content, choice, links, max_parts=self._max_parts, max_depth=self._max_depth,
                     headers=mailing_list.headers() if mailing_list else ())
