"""The Transmissions API (`POST /api/v1/transmissions`): parse, plan, spool, and the resource."""

from mtaserver.http.transmissions.api import TransmissionsAPI, make_transmissions_services

__all__ = ["TransmissionsAPI", "make_transmissions_services"]
