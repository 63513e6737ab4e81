"""DKIM on the way out: sign a message for a queue with `dkim-sign yes`.

Finding the From domain parses the message's header block and signing hashes the
whole body, so both run in the thread pool, never on the reactor; the scheduler
calls this as its body transform just before a transaction is handed to the SMTP
client. A message whose From domain has no `domain-key` goes out unsigned.

The keys follow the running config: after a reload (`kill -HUP`, `reload`) the next
message is signed with the `domain-key`s the new config names, their files read
again, in the pool, by the first message that needs them. A reload whose key files
do not load is refused (`check_keys`), like a config with a syntax error.
"""

from __future__ import annotations

from twisted.logger import Logger

from mtaserver.config.grammar import ConfigProblem
from mtaserver.config.model import Config, DomainSettings
from mtaserver.config.reload import ConfigHolder
from mtaserver.config.values import DomainKey
from mtaserver.events import Envelope
from mtaserver.runtime import RunInThread
from mtaserver.smtp.dkim import (
    DkimError,
    DkimSigner,
    identity_domain,
    parse_dkim_headers,
    parse_x_dkim_options,
)

log = Logger()


class DkimTransform:
    """The scheduler's body transform: DKIM-sign with the running config's keys."""

    def __init__(
        self, holder: ConfigHolder, run_in_thread: RunInThread, signer: DkimSigner | None = None
    ) -> None:
        """`signer`, when given, holds the keys of `holder.config` (checked at start-up)."""
        self.holder = holder
        self.run_in_thread = run_in_thread
        self._signer: tuple[Config, DkimSigner] | None = (
            None if signer is None else (holder.config, signer)
        )
        self._vmta_signers: dict[tuple[DomainKey, ...], DkimSigner] = {}
        holder.check_before_reload(check_keys)

    async def signer(self) -> DkimSigner:
        """The signer of the running config, its key files read (in a thread) once per config."""
        config = self.holder.config
        if self._signer is not None and self._signer[0] is config:
            return self._signer[1]
        keys = config.settings.domain_key
        try:
            signer = await self.run_in_thread(lambda: DkimSigner(keys))
        except DkimError as exc:
            if self._signer is None:
                raise
            # the key files changed under a valid config: keep signing with the old keys
            log.error("domain-key files unusable, keeping the previous keys: {error}", error=exc)
            signer = self._signer[1]
        self._signer = (config, signer)
        return signer

    async def _vmta_signer(self, keys: tuple[DomainKey, ...]) -> DkimSigner:
        """A signer for a virtual MTA's keys, read once per set of keys (in a thread)."""
        signer = self._vmta_signers.get(keys)
        if signer is None:
            signer = await self.run_in_thread(lambda: DkimSigner(keys))
            if len(self._vmta_signers) > 1000:
                self._vmta_signers.clear()
            self._vmta_signers[keys] = signer
        return signer

    async def __call__(self, envelope: Envelope, body: bytes, settings: DomainSettings) -> bytes:
        if not settings.dkim_sign:
            return body
        # `process-x-dkim-options`: the message's X-DKIM-Options, kept in its envelope
        options = parse_x_dkim_options(envelope.dkim_options or "")
        if options.get("q", "dns/txt").lower() != "dns/txt":
            log.warn(
                "X-DKIM-Options q={q} of {msg_id} ignored: dns/txt is DKIM's only query method",
                q=options["q"],
                msg_id=envelope.msg_id,
            )
        key_list = options.get("key-list")
        try:
            if key_list is not None:  # only that <domain-key-list>: no key there, no signature
                keys = self.holder.config.domain_key_lists.get(key_list)
                if keys is None:
                    log.warn(
                        "not DKIM-signing {msg_id}: no <domain-key-list {name}>",
                        msg_id=envelope.msg_id,
                        name=key_list,
                    )
                    return body
                signers = [await self._vmta_signer(keys)]
            else:
                signers = [await self.signer()]
                if settings.domain_key:  # the virtual MTA's own keys come first
                    signers.insert(0, await self._vmta_signer(settings.domain_key))
        except DkimError as exc:
            log.warn("not DKIM-signing {msg_id}: {error}", msg_id=envelope.msg_id, error=exc)
            return body

        try:
            extra_headers = parse_dkim_headers(settings.dkim_headers)
        except ValueError as exc:
            log.warn(
                "dkim-headers ignored for {msg_id}: {error}", msg_id=envelope.msg_id, error=exc
            )
            extra_headers = ()

        selector = options.get("s")
        identity = options.get("i") or settings.dkim_identity
        named_domain = options.get("d") or (
            identity_domain(options["i"]) if "i" in options else None
        )

        def sign() -> bytes:
            for signer in signers:
                if named_domain is not None:  # d= (exactly), else i='s domain (or a parent)
                    exact = "d" in options
                    found = signer.key_for(named_domain, selector, exact)
                    domain = named_domain if found else None
                else:
                    exact = False
                    domain = (
                        signer.signing_domain_for(body, selector)
                        if selector is not None
                        else signer.signing_domain_for(body)
                    )
                if domain is not None:
                    return signer.sign(
                        body,
                        domain,
                        identity,
                        algorithm=settings.dkim_algorithm,
                        extra_headers=extra_headers,
                        selector=selector,
                        exact=exact,
                    )
            if options:
                log.warn(
                    "not DKIM-signing {msg_id}: no domain-key fits X-DKIM-Options {options}",
                    msg_id=envelope.msg_id,
                    options=envelope.dkim_options,
                )
            return body

        try:
            return await self.run_in_thread(sign)
        except DkimError as exc:
            log.warn("not DKIM-signing {msg_id}: {error}", msg_id=envelope.msg_id, error=exc)
            return body


def check_keys(config: Config) -> list[ConfigProblem]:
    """Every `domain-key` of `config` loads (a reload check: runs in the loading thread)."""
    vmta_keys = [k for v in config.vmtas.values() for k in v.domain_key]
    vmta_keys += [k for p in config.vmta_pools.values() for k in p.domain_key]
    vmta_keys += [k for keys in config.domain_key_lists.values() for k in keys]
    try:
        DkimSigner(config.settings.domain_key)
        DkimSigner(vmta_keys)
    except DkimError as exc:
        return [ConfigProblem(config.path, 0, f"domain-key: {exc}")]
    return []
