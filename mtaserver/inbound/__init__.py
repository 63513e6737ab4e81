"""Inbound reports: remote bounces (RFC 3464 DSNs and plain-text notices) and ARF
feedback-loop complaints, parsed into frozen records.

This is the pure core of PowerMTA's `<bounce-processor>` and `<feedback-loop-processor>`:
functions over the raw bytes of one received message (`dsn.parse_bounce`,
`arf.parse_arf`, `verp.decode_verp`), with no reactor, no spool and no config. The
server feeds them the messages addressed to a processor's `<address-list>` and turns
the results into `rb`/`rs`/`f` acct records.
"""
