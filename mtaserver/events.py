"""The envelope of a spooled message and the events the journal records about it.

These records are the contract between the three owners of durable state: reception
writes `Received`, the scheduler writes `Outcome` and `QueueFailure`, the report
processors (`mtaserver.processors`) write `RemoteReport`, and the accounting
writers turn every event into acct records (`r d b t tq rb rs f`). They are plain
frozen data with a JSON form (`to_json` / `event_from_json`), so the journal can store
them and a later process can read them back without importing Twisted.

An `Outcome` carries every field an acct record needs (PowerMTA's acct fields), so the
accounting side never has to look a message up: a journal is enough to write the files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs


@attrs.frozen
class Recipient:
    """One envelope recipient with its DSN parameters (RFC 3461)."""

    address: str
    orcpt: str | None = None
    notify: str | None = None


@attrs.frozen
class Envelope:
    """What we keep of a message besides its body: small, so a million fit in memory."""

    msg_id: str
    sender: str  # "" is the null reverse-path
    recipients: tuple[Recipient, ...]
    time_queued: float
    src_type: str = "smtp"  # smtp | api
    src_mta: str = ""  # "ehlo-name (ip)" for SMTP, the client address for the API
    smtp_user: str | None = None
    vmta: str | None = None
    vmta_pool: str | None = None
    job_id: str | None = None
    env_id: str | None = None
    ret: str | None = None  # FULL | HDRS
    body_type: str = "7BIT"  # 7BIT | 8BITMIME
    smtputf8: bool = False
    size: int = 0
    # Headers named by acct-file `map-header-to-field` / `header_X` fields, captured
    # at reception so records never need the body again.
    acct_headers: Mapping[str, str] = attrs.field(factory=dict)
    is_dsn: bool = False  # a bounce we generated: never bounced again
    verp: bool = False  # deliver with a VERP return path per recipient (`verp-default`)
    #: The X-DKIM-Options header (`process-x-dkim-options`), for signing at delivery.
    dkim_options: str | None = None
    #: The source's `suppress-local-dsn`: no DSN of ours (failure, delay, success) for it.
    suppress_local_dsn: bool = False
    #: Not delivered before this time (the Transmissions API's `options.start_time`);
    #: `bounce-after` counts from it. None: at once.
    start_time: float | None = None
    #: Each recipient's `recipient-priority` (0-100, a `<pattern-list>` result), in
    #: recipient order; () when all have the default, 50 (then not even journaled).
    recipient_priorities: tuple[int, ...] = ()

    @property
    def expiry_start(self) -> float:
        """When `bounce-after` starts counting: reception, or a later `start_time`."""
        if self.start_time is not None and self.start_time > self.time_queued:
            return self.start_time
        return self.time_queued

    def only(self, rcpt_indexes: tuple[int, ...]) -> Envelope:
        """This envelope with only the recipients at `rcpt_indexes`, in that order."""
        priorities = self.recipient_priorities
        return attrs.evolve(
            self,
            recipients=tuple(self.recipients[i] for i in rcpt_indexes),
            recipient_priorities=tuple(priorities[i] for i in rcpt_indexes) if priorities else (),
        )

    def priority_of(self, rcpt_indexes: Iterable[int]) -> int:
        """The highest `recipient-priority` among these recipients (50 without any)."""
        if not self.recipient_priorities:
            return 50
        return max((self.recipient_priorities[i] for i in rcpt_indexes), default=50)

    def to_json(self) -> dict[str, Any]:
        # Written out rather than attrs.asdict: this runs for every journal record on
        # the reactor thread, and asdict's generic walk was a visible cost under load.
        return {
            "msg_id": self.msg_id,
            "sender": self.sender,
            "recipients": [
                {"address": r.address, "orcpt": r.orcpt, "notify": r.notify}
                for r in self.recipients
            ],
            "time_queued": self.time_queued,
            "src_type": self.src_type,
            "src_mta": self.src_mta,
            "smtp_user": self.smtp_user,
            "vmta": self.vmta,
            "vmta_pool": self.vmta_pool,
            "job_id": self.job_id,
            "env_id": self.env_id,
            "ret": self.ret,
            "body_type": self.body_type,
            "smtputf8": self.smtputf8,
            "size": self.size,
            "acct_headers": dict(self.acct_headers),
            "is_dsn": self.is_dsn,
            "verp": self.verp,
            "dkim_options": self.dkim_options,
            "suppress_local_dsn": self.suppress_local_dsn,
            "start_time": self.start_time,
        } | (
            {"recipient_priorities": list(self.recipient_priorities)}
            if self.recipient_priorities
            else {}
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Envelope:
        fields = dict(data)
        fields["recipients"] = tuple(Recipient(**r) for r in data["recipients"])
        fields["acct_headers"] = dict(data.get("acct_headers") or {})
        if "recipient_priorities" in fields:
            fields["recipient_priorities"] = tuple(fields["recipient_priorities"])
        return cls(**fields)


@attrs.frozen
class Received:
    """A message became durable: one `r` acct record per recipient."""

    envelope: Envelope
    time: float

    kind = "received"

    def to_json(self) -> dict[str, Any]:
        return {"ev": self.kind, "time": self.time, "envelope": self.envelope.to_json()}


@attrs.frozen
class Outcome:
    """A delivery attempt's result for some recipients of one message.

    `record` is the acct record type: `d` (final, delivered), `b` (final, bounced) or
    `t` (transient, the recipients stay queued). `rcpt_indexes` index the full
    envelope's recipients; `envelope` is `Envelope.only(rcpt_indexes)`, carrying just
    those recipients in that order, so a record needs no lookup and a 1,000-recipient
    message does not copy 1,000 addresses into every outcome.
    """

    record: str  # d | b | t
    msg_id: str
    rcpt_indexes: tuple[int, ...]
    time: float
    envelope: Envelope
    dsn_action: str = ""
    dsn_status: str = ""
    dsn_diag: str = ""
    dsn_mta: str = ""
    bounce_cat: str = ""
    dlv_type: str = ""
    dlv_source_ip: str = ""
    dlv_destination_ip: str = ""
    dlv_esmtp_available: str = ""
    dlv_size: int = 0
    dlv_tls_protocol: str = ""
    dlv_tls_cipher: str = ""
    queue: str = ""
    vmta: str = ""
    vmta_pool: str = ""

    kind = "outcome"

    @property
    def is_final(self) -> bool:
        return self.record in ("d", "b")

    def to_json(self) -> dict[str, Any]:
        data = attrs.asdict(self, recurse=False)
        data["envelope"] = self.envelope.to_json()
        data["rcpt_indexes"] = list(self.rcpt_indexes)
        data["ev"] = self.kind
        return data


@attrs.frozen
class QueueFailure:
    """A queue-level transient failure (`tq`): no connection, DNS failure, and so on."""

    queue: str
    time: float
    dsn_status: str = ""
    dsn_diag: str = ""
    dsn_mta: str = ""
    bounce_cat: str = ""
    vmta: str = ""
    vmta_pool: str = ""
    dlv_destination_ip: str = ""

    kind = "tq"

    def to_json(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data["ev"] = self.kind
        return data


@attrs.frozen
class Removed:
    """Spool bookkeeping: every recipient of the message is final; no acct record."""

    msg_id: str
    time: float

    kind = "removed"

    def to_json(self) -> dict[str, Any]:
        return {"ev": self.kind, "msg_id": self.msg_id, "time": self.time}


@attrs.frozen
class RemoteReport:
    """A report a `<bounce-processor>` or `<feedback-loop-processor>` read: one acct record.

    `record` is `rb` (a remote bounce: a `failed` recipient), `rs` (a remote status:
    `delayed`) or `f` (a feedback-loop complaint). `msg_id` is the report message in our
    spool; the other fields are what was recovered of the *original* message (its
    sender `orig`, its recipient `rcpt`, its job, envelope id and vmta) and of the
    report itself. `headers` are the original's headers (lower-cased names), for
    `header_X` fields: the report is gone once processed, so they travel here.
    """

    record: str  # rb | rs | f
    time: float
    msg_id: str
    rcpt: str
    orig: str = ""
    orcpt: str = ""
    dsn_action: str = ""
    dsn_status: str = ""
    dsn_diag: str = ""
    dsn_mta: str = ""
    dsn_reporting_mta: str = ""
    bounce_cat: str = ""
    hard: bool = False
    format: str = ""
    feedback_type: str = ""
    user_agent: str = ""
    reported_domain: str = ""
    source_ip: str = ""
    src_type: str = "smtp"
    src_mta: str = ""
    job_id: str = ""
    env_id: str = ""
    vmta: str = ""
    headers: Mapping[str, str] = attrs.field(factory=dict)

    kind = "report"

    def to_json(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data["headers"] = dict(self.headers)
        data["ev"] = self.kind
        return data


Event = Received | Outcome | QueueFailure | Removed | RemoteReport


def event_from_json(data: Mapping[str, Any]) -> Event:
    """Rebuild an event written by `to_json`; unknown kinds are a ValueError."""
    kind = data.get("ev")
    fields = {k: v for k, v in data.items() if k != "ev"}
    if kind == Received.kind:
        return Received(envelope=Envelope.from_json(fields["envelope"]), time=fields["time"])
    if kind == Outcome.kind:
        fields["envelope"] = Envelope.from_json(fields["envelope"])
        fields["rcpt_indexes"] = tuple(fields["rcpt_indexes"])
        return Outcome(**fields)
    if kind == QueueFailure.kind:
        return QueueFailure(**fields)
    if kind == Removed.kind:
        return Removed(**fields)
    if kind == RemoteReport.kind:
        fields["headers"] = dict(fields.get("headers") or {})
        return RemoteReport(**fields)
    raise ValueError(f"unknown journal event kind {kind!r}")
