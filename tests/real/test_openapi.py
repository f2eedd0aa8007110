"""The OpenAPI documents (issue 15, item 3): served at ``/openapi.json`` on each port,
covering every route (every admin operation; every documented path is routed), and a
short schemathesis run against a live server with 0 failures (its default checks:
not_a_server_error, status_code_conformance, content_type_conformance,
response_schema_conformance).  ``scripts/schemathesis.sh`` runs the long one."""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from clipperlab.real.admin import AdminApi
from clipperlab.real.openapi import admin_document, query_document
from tests.servers import start_server

# 501 and 503 are answers the documents promise (a Triton call with nothing to act on,
# readiness); any other 5xx fails
EXPECTED = ["2xx", "3xx", "4xx", "501", "503"]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


def _get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request(method, path, b"{}" if method == "POST" else None,
              {"Content-Type": "application/json"})
    r = c.getresponse()
    out = r.status, r.read()
    c.close()
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """No containers are started (schemathesis registers models with random replicas)."""
    st = start_server(tmp_path_factory.mktemp("openapi"), manage_containers=False,
                      grpc=False)
    try:
        yield st
    finally:
        st.stop()


def test_served_on_each_port(server: Any) -> None:
    for port, doc in ((server.ports["query"], query_document()),
                      (server.ports["admin"], admin_document())):
        status, body = _get(port, "/openapi.json")
        assert status == 200 and json.loads(body) == doc


def test_every_admin_operation_is_documented() -> None:
    """Each ``op_*`` of the admin API (and upload_model) has its path, and each documented
    ``/admin/`` path is an operation."""
    ops = {m[3:] for m in dir(AdminApi) if m.startswith("op_")} | {"upload_model"}
    documented = {p[len("/admin/"):] for p in admin_document()["paths"] if p.startswith("/admin/")}
    assert documented == ops


def test_every_documented_path_is_routed(server: Any) -> None:
    """Each documented path, its parameters filled in, reaches a handler: never the
    router's 'no route' answer."""
    for port, doc in ((server.ports["query"], query_document()),
                      (server.ports["admin"], admin_document())):
        for path, item in doc["paths"].items():
            url = re.sub(r"\{[^}]+\}", "x", path)
            method = "GET" if "get" in item else "POST"
            status, body = _get(port, url, method)
            assert b"no route" not in body, (path, status, body)


def _schema(port: int, doc: dict[str, Any]) -> Any:
    schema = schemathesis.openapi.from_dict(doc)
    schema.config.update(base_url=f"http://127.0.0.1:{port}")
    schema.config.checks.not_a_server_error.expected_statuses = EXPECTED
    return schema


query_schema = schemathesis.pytest.from_fixture("query_api")
admin_schema = schemathesis.pytest.from_fixture("admin_api")


@pytest.fixture
def query_api(server: Any) -> Any:
    return _schema(server.ports["query"], query_document())


@pytest.fixture
def admin_api(server: Any) -> Any:
    return _schema(server.ports["admin"], admin_document())


_SHORT = settings(max_examples=6, deadline=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))


@query_schema.parametrize()
@_SHORT
def test_query_api_conforms(case: Any) -> None:
    case.call_and_validate(checks=CHECKS)


@admin_schema.parametrize()
@_SHORT
def test_admin_api_conforms(case: Any) -> None:
    case.call_and_validate(checks=CHECKS)


def test_documents_are_valid_openapi() -> None:
    """Both load as OpenAPI 3 in schemathesis (which validates the document)."""
    for doc in (query_document(), admin_document()):
        assert len(list(schemathesis.openapi.from_dict(doc).get_all_operations())) > 10
    assert Path(__file__).parent.parent.parent.joinpath("scripts", "schemathesis.sh").exists()
