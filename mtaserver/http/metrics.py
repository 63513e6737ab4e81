"""Prometheus metrics of the running server, on a private `CollectorRegistry`.

One custom collector reads the live state at scrape time, so nothing is counted
twice and nothing needs updating on the hot path:

* counters: messages and recipients received (`ReceptionStats`), recipients
  delivered, bounced and deferred per queue (`TrafficStats.queue_totals`, fed from
  the journal and never reset, as Prometheus expects);
* gauges: recipients and messages queued per queue, paused queues, inbound SMTP
  sessions and outbound connections;
* a histogram of delivery latency (queued to delivered, seconds);
* the suppression list: entries (gauge), recipients added automatically from b/rb/f
  records, refused (RCPT, Transmissions API) and accepted-and-dropped (counters).

The registry is private (not prometheus_client's global one) so tests and several
servers in one process never collide.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from mtaserver.queue.control import QueueControl
from mtaserver.stats import TrafficStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServerCollector(Collector):
    """Reads the queues' view, reception counters and traffic stats at each scrape."""

    def __init__(
        self,
        queues: QueueControl,
        reception: Any,
        traffic: TrafficStats,
        webhooks: Any = None,
        acct: Any = None,
        suppression: Any = None,
    ) -> None:
        self.suppression = suppression
        self.queues = queues
        self.reception = reception
        self.traffic = traffic
        self.webhooks = webhooks
        self.acct = acct

    def collect(self) -> Iterator[Any]:
        reception = self.reception
        received = CounterMetricFamily(
            "mtaserver_received_messages", "Messages accepted by SMTP reception"
        )
        received.add_metric([], getattr(reception, "messages_received", 0))
        yield received
        received_rcpts = CounterMetricFamily(
            "mtaserver_received_recipients", "Recipients accepted by SMTP reception"
        )
        received_rcpts.add_metric([], getattr(reception, "recipients_received", 0))
        yield received_rcpts
        outcomes = {
            name: CounterMetricFamily(
                f"mtaserver_{name}_recipients", f"Recipients {name} per queue", labels=["queue"]
            )
            for name in ("delivered", "bounced", "deferred")
        }
        for queue, totals in sorted(self.traffic.queue_totals.items()):
            outcomes["delivered"].add_metric([queue], totals.delivered)
            outcomes["bounced"].add_metric([queue], totals.bounced)
            outcomes["deferred"].add_metric([queue], totals.deferred)
        yield from outcomes.values()

        queued = GaugeMetricFamily(
            "mtaserver_queue_recipients", "Recipients waiting per queue", labels=["queue"]
        )
        messages = GaugeMetricFamily(
            "mtaserver_queue_messages", "Messages waiting per queue", labels=["queue"]
        )
        paused = GaugeMetricFamily(
            "mtaserver_queue_paused", "1 when the queue is paused", labels=["queue"]
        )
        outbound = GaugeMetricFamily(
            "mtaserver_queue_connections", "Outbound sessions per queue", labels=["queue"]
        )
        for view in self.queues.queues():
            queued.add_metric([view.name], view.recipients)
            messages.add_metric([view.name], view.messages)
            paused.add_metric([view.name], 1 if view.paused else 0)
            outbound.add_metric([view.name], view.connections)
        yield from (queued, messages, paused, outbound)

        connections = GaugeMetricFamily(
            "mtaserver_connections", "Open SMTP connections", labels=["direction"]
        )
        connections.add_metric(["in"], getattr(reception, "sessions_current", 0))
        connections.add_metric(["out"], self.queues.totals().connections)
        yield connections

        latency = self.traffic.latency
        histogram = HistogramMetricFamily(
            "mtaserver_delivery_latency_seconds", "Time from queued to delivered"
        )
        histogram.add_metric([], [(b, float(c)) for b, c in latency.cumulative()], latency.sum)
        yield histogram
        if self.webhooks is not None:
            yield from self._webhook_backlog()
        if self.acct is not None and hasattr(self.acct, "status"):
            yield from self._acct_writers()
        if self.suppression is not None:
            yield from self._suppression()

    def _suppression(self) -> Iterator[Any]:
        """The suppression list's size and what it did since start."""
        entries = GaugeMetricFamily("mtaserver_suppression_entries", "Suppression list entries")
        entries.add_metric([], self.suppression.store.count())
        yield entries
        counters = self.suppression.counters
        for name, value, text in (
            ("added", counters.added_automatically, "Recipients suppressed from b/rb/f records"),
            ("refused", counters.refused, "Suppressed recipients refused (RCPT and API)"),
            ("dropped", counters.dropped, "Suppressed recipients accepted and dropped"),
        ):
            counter = CounterMetricFamily(f"mtaserver_suppression_{name}", text)
            counter.add_metric([], value)
            yield counter

    def _acct_writers(self) -> Iterator[Any]:
        """Acct writers' health: a writer that stopped writing is never silent."""
        yield from per_acct_file(
            self.acct.status(),
            failing=GaugeMetricFamily(
                "mtaserver_acct_writer_failing",
                "1 while the acct file's last catch-up failed (records not being written)",
                labels=["acct_file"],
            ),
            errors=CounterMetricFamily(
                "mtaserver_acct_writer_errors", "Failed acct catch-ups", labels=["acct_file"]
            ),
            journal_truncations=CounterMetricFamily(
                "mtaserver_acct_journal_truncations",
                "Times the acct writer found its journal position gone (journal cut) and resumed",
                labels=["acct_file"],
            ),
            journal_lost_bytes=CounterMetricFamily(
                "mtaserver_acct_journal_lost_bytes",
                "Journal bytes skipped by those resumptions (a lower bound of what was lost)",
                labels=["acct_file"],
            ),
        )

    def _webhook_backlog(self) -> Iterator[Any]:
        """Accounting webhook batches and bytes not yet accepted by their endpoint."""
        yield from per_acct_file(
            self.webhooks.status(),
            backlog_batches=GaugeMetricFamily(
                "mtaserver_webhook_backlog_batches",
                "Staged webhook batches not yet sent",
                labels=["acct_file"],
            ),
            backlog_bytes=GaugeMetricFamily(
                "mtaserver_webhook_backlog_bytes",
                "Webhook bytes not yet sent",
                labels=["acct_file"],
            ),
            consecutive_failures=GaugeMetricFamily(
                "mtaserver_webhook_consecutive_failures",
                "Failed posts since the last success",
                labels=["acct_file"],
            ),
        )


def per_acct_file(statuses: Iterable[Mapping[str, Any]], **families: Any) -> list[Any]:
    """Families labelled by acct file, each named after the status field it reports.

    One sample per status row and family: `families["errors"]` gets `row["errors"]`
    for each row's `acct_file` (a `True` reads as 1). The families come back in order.
    """
    for status in statuses:
        label = [status["acct_file"]]
        for field, family in families.items():
            family.add_metric(label, status[field])
    return list(families.values())


def make_registry(
    queues: QueueControl,
    reception: Any,
    traffic: TrafficStats,
    webhooks: Any = None,
    acct: Any = None,
    suppression: Any = None,
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(queues, reception, traffic, webhooks, acct, suppression))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
