"""Read routes send the use case's record as built; their answers stay documented."""

from __future__ import annotations

import json
from pathlib import Path

from registry.api.app import create_app
from registry.api.encoding import json_response
from registry.settings import Settings


def test_a_record_is_sent_as_compact_json_with_nan_as_null() -> None:
    response = json_response({"name": "ü", "scores": [1.5, float("nan"), float("inf")], "n": None})
    assert response.status_code == 200
    assert response.media_type == "application/json"
    assert json.loads(response.body) == {"name": "ü", "scores": [1.5, None, None], "n": None}


def test_read_routes_still_document_their_answers(tmp_path: Path) -> None:
    document = create_app(Settings(home=tmp_path)).openapi()
    answer = document["paths"]["/api/v1/adapters/{name}/versions/{ref}"]["get"]["responses"]["200"]
    assert answer["content"]["application/json"]["schema"]["type"] == "object"
    listing = document["paths"]["/api/v1/adapters/{name}/versions"]["get"]["responses"]["200"]
    assert listing["content"]["application/json"]["schema"]["type"] == "array"
    # the route's own parameters, not the decorator's (*args, **kwargs)
    names = {p["name"] for p in document["paths"]["/api/v1/search"]["get"]["parameters"]}
    assert {"filter", "tag", "name", "sort", "limit", "after"} <= names
