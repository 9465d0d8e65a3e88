"""Reading HubSpot contacts in batches for the reverse direction and the loop guard:
``POST /crm/v3/objects/contacts/batch/read`` (at most 100 inputs a request, HubSpot's batch
limit), by HubSpot id or by the unique id property holding the Healthie patient id, through the
HubSpot connector's own paced, error-mapped edge (``connectors.hubspot_api``).

A contact HubSpot does not find is absent from the answer (a 207 naming it), never an error;
values come back as HubSpot's strings, a property without a value as "".
"""

from __future__ import annotations

from collections.abc import Sequence

from connectors.hubspot import HubSpotConnector
from connectors.hubspot_api import json_body

READ_PATH = "/crm/v3/objects/contacts/batch/read"
BATCH = 100  # inputs per batch request (HubSpot's CRM objects guides)


def read_contacts(
    connector: HubSpotConnector,
    ids: Sequence[str],
    properties: Sequence[str],
    *,
    by_patient: bool,
    batch: int = BATCH,
) -> dict[str, dict[str, str]]:
    """Each found contact's ``properties`` (and the id property, and ``hs_object_id``) by the
    id it was asked for: its HubSpot id, or (``by_patient``) the patient id in the id
    property. One request per ``batch`` ids."""
    idp = connector.hubspot.id_property
    wanted = sorted({*properties, idp})
    api = connector.api()  # the connector's paced client and counters (one credential)
    found: dict[str, dict[str, str]] = {}
    unique = list(dict.fromkeys(ids))
    for start in range(0, len(unique), batch):
        chunk = unique[start : start + batch]
        body: dict[str, object] = {
            "inputs": [{"id": i} for i in chunk],
            "properties": wanted,
            "propertiesWithHistory": [],
        }
        if by_patient:
            body["idProperty"] = idp
        response = api.send("POST", READ_PATH, f"POST {READ_PATH}", body)
        for result in json_body(response).get("results") or []:
            if not isinstance(result, dict):
                continue
            props = result.get("properties") or {}
            values = {k: "" if v is None else str(v) for k, v in props.items() if k in wanted}
            values["hs_object_id"] = str(result.get("id") or "")
            key = values.get(idp) if by_patient else values["hs_object_id"]
            if key and key in chunk:
                found[key] = values
    return found
