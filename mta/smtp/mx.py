"""The inbound MX listener's hooks: mail for the domains we host, from anyone, no AUTH.

RCPT is taken only for hosted domains (anything else is `550 5.7.1 Relaying denied`: never an
open relay); the message then goes to `Inbound.receive`, and 250 comes after its commit.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiosmtpd.smtp import Envelope, Session

from mta.accept import valid_addr_spec
from mta.budget import ByteBudget
from mta.config import Config
from mta.domains import Domain
from mta.inbound import InboundError
from mta.smtp import NULL_SENDER, BaseHandler, SubmissionSession, take_content
from mta.smtp.guard import Guard

# Inbound.receive: (sender, recipients, message, peer IP, HELO) -> recipients that took it
Receive = Callable[[str, list[str], bytes, str, str], Awaitable[int]]

log = logging.getLogger("mta.smtp")


class MxHandler(BaseHandler):
    """RCPT for hosted domains (`find_domain`), DATA handed to the inbound side (`receive`)."""

    def __init__(
        self, config: Config, guard: Guard, accepting: ByteBudget, *,
        find_domain: Callable[[str], Awaitable[Domain | None]], receive: Receive,
    ) -> None:
        super().__init__(config, guard, accepting)
        self.find_domain = find_domain
        self.receive = receive

    async def handle_RCPT(
        self, server: SubmissionSession, session: Session, envelope: Envelope, address: str,
        rcpt_options: list[str],
    ) -> str:
        refusal = self.recipient_refusal(envelope, address)
        if refusal is not None:
            return refusal
        if await self.find_domain(address.rpartition("@")[2]) is None:
            log.info("refused relaying from %s to <%s>", server.peer_ip, address)
            return "550 5.7.1 Relaying denied"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(
        self, server: SubmissionSession, session: Session, envelope: Envelope
    ) -> str:
        content = take_content(envelope)
        sender = "" if envelope.mail_from == NULL_SENDER else (envelope.mail_from or "")
        if sender and not valid_addr_spec(sender):
            return "553 5.1.7 Sender address is not valid"
        self.busy += 1
        try:
            await self.receive(
                sender, list(envelope.rcpt_tos), content, server.peer_ip, session.host_name or ""
            )
        except InboundError as exc:
            return exc.reply
        except Exception:
            log.exception("could not take a message from %s", server.peer_ip)
            return "451 4.3.0 Temporary failure, please try again"
        finally:
            self.busy -= 1
        return "250 2.0.0 OK"
