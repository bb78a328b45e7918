"""schemathesis hooks for the all-checks fuzz of the gateway (tests/test_fuzz_api.py), loaded through
SCHEMATHESIS_HOOKS. The `app` of a gateway call is Zapier's app id: data the partner holds (listed by
/v1/zapier/apps), not a shape a schema can state, so a generated UUID is an app Zapier does not know and the
partner's 400 would be no fault of the document. A well-formed `app` (a UUID) is replaced by the id of the app
the fake Partner API holds (KEYSVC_FUZZ_APP), the way a link would supply it; a malformed one is left as
generated, so negative cases stay negative."""

from __future__ import annotations

import os
from typing import Any

import schemathesis

from keysvc.partner.fields import is_uuid


def _known(values: Any) -> None:
    app = os.environ.get("KEYSVC_FUZZ_APP")
    if app and isinstance(values, dict) and isinstance(values.get("app"), str) and is_uuid(values["app"]):
        values["app"] = app


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    """The known app in the query or body of a gateway call."""
    if case.path.startswith("/v1/zapier/"):
        _known(case.query)
        _known(case.body)
    return case
