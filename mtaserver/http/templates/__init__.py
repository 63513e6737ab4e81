"""SparkPost's stored templates: `/api/v1/templates` (`api`), files (`store`), rules (`model`)."""

from mtaserver.http.templates.api import TemplatesAPI
from mtaserver.http.templates.store import TemplateStore

__all__ = ["TemplateStore", "TemplatesAPI"]
