"""The inbound MX listener's hooks: mail for the domains we host, from anyone, no AUTH.

RCPT is taken only for hosted domains (anything else is `550 5.7.1 Relaying denied`: never an
open relay); the message then goes to `Inbound.receive`, and 250 comes after its commit.
"""

from __future__ import annotations

import logging

from aiosmtpd.smtp import Envelope, Session

from mta.accept import valid_addr_spec
from mta.api.context import Services
from mta.inbound import Inbound, InboundError
from mta.smtp import NULL_SENDER, BaseHandler, SubmissionSession, take_content
from mta.smtp.guard import Guard

log = logging.getLogger("mta.smtp")


class MxHandler(BaseHandler):
    def __init__(self, services: Services, guard: Guard, inbound: Inbound) -> None:
        super().__init__(services, guard)
        self.inbound = inbound

    async def handle_RCPT(
        self, server: SubmissionSession, session: Session, envelope: Envelope, address: str,
        rcpt_options: list[str],
    ) -> str:
        refusal = self.recipient_refusal(envelope, address)
        if refusal is not None:
            return refusal
        if await self.services.domains.get(address.rpartition("@")[2]) is None:
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
            await self.inbound.receive(
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
