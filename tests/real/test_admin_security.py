"""No web page can drive the admin API (issue 11, defect 4): a browser's requests are
refused by content type, ``Origin``, ``Sec-Fetch-Site`` and ``Host`` (DNS rebinding);
models that a container loads as code (pickles, joblib files, torch modules, imports) come
only from the store's model folder unless the operator authenticated with the token; a
token of any bytes is compared, not crashed on.  Servers without model containers
(``replicas=0``): nothing here runs a model."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from clipperlab.real.client import AdminClient, ServerError
from tests.real.rawhttp import answers, exchange, request
from tests.servers import start_server


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Any:
    st = start_server(tmp_path_factory.mktemp("store"),
                      admin_allowed_origins=["http://dashboard.example"],
                      admin_allowed_hosts=["admin.internal"])
    admin = AdminClient(f"127.0.0.1:{st.ports['admin']}")
    yield SimpleNamespace(st=st, port=st.ports["admin"], admin=admin,
                          models_dir=st.server.store.models_dir)
    admin.close()
    st.stop()


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Any:
    st = start_server(tmp_path_factory.mktemp("store"), admin_token="s3cret")
    admin = AdminClient(f"127.0.0.1:{st.ports['admin']}", token="s3cret")
    yield SimpleNamespace(st=st, port=st.ports["admin"], admin=admin)
    admin.close()
    st.stop()


def call(port: int, method: str, path: str, body: bytes = b"", headers: str = "",
         host: str = "127.0.0.1") -> tuple[int, str]:
    data = request(method, path, body, headers)
    if host != "127.0.0.1":
        data = data.replace(b"Host: 127.0.0.1\r\n", f"Host: {host}\r\n".encode("latin-1"), 1)
    raw, _ = exchange(port, data)
    got = answers(raw)[0]
    doc = json.loads(got.body)
    return got.status, doc.get("error", "") if isinstance(doc, dict) else ""


JSON = "Content-Type: application/json\r\n"
ADD_APP = json.dumps({"name": "pwned", "slo_ms": 20}).encode()


@pytest.mark.parametrize(
    "ctype",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""],
)
def test_json_endpoints_want_application_json(srv: Any, ctype: str) -> None:
    """A body a browser may send without a preflight (text/plain, a form) is 415."""
    headers = f"Content-Type: {ctype}\r\n" if ctype else ""
    status, error = call(srv.port, "POST", "/admin/add_app", ADD_APP, headers)
    assert status == 415 and "application/json" in error
    assert "pwned" not in srv.admin.get_all_apps()


def test_upload_wants_octet_stream(srv: Any) -> None:
    status, error = call(srv.port, "POST", "/admin/upload_model?name=x&version=1&ext=pkl",
                         pickle.dumps(print), "Content-Type: text/plain\r\n")
    assert status == 415 and "application/octet-stream" in error
    assert not list(srv.models_dir.glob("x-1.*"))


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:8000"])
def test_foreign_origins_are_403(srv: Any, origin: str) -> None:
    """Even with the right content type, a request from a web page (any Origin not in
    ``admin_allowed_origins``) is refused, reads included."""
    status, error = call(srv.port, "POST", "/admin/add_app", ADD_APP,
                         JSON + f"Origin: {origin}\r\n")
    assert status == 403 and origin in error and "admin_allowed_origins" in error
    status, _ = call(srv.port, "GET", "/admin/inspect", headers=f"Origin: {origin}\r\n")
    assert status == 403
    assert "pwned" not in srv.admin.get_all_apps()


def test_an_allowed_origin_is_let_in(srv: Any) -> None:
    status, _ = call(srv.port, "POST", "/admin/ping", b"{}",
                     JSON + "Origin: http://dashboard.example\r\n")
    assert status == 200


def test_cross_site_fetch_metadata_is_403(srv: Any) -> None:
    status, error = call(srv.port, "GET", "/admin/inspect",
                         headers="Sec-Fetch-Site: cross-site\r\n")
    assert status == 403 and "Sec-Fetch-Site" in error


@pytest.mark.parametrize("host", ["evil.example", "evil.example:1338", "10.0.0.1:1338"])
def test_foreign_host_is_403_without_a_token(srv: Any, host: str) -> None:
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends ``Host:
    evil.example``; without a token that is refused."""
    status, error = call(srv.port, "POST", "/admin/ping", b"{}", JSON, host=host)
    assert status == 403 and "admin_token" in error


@pytest.mark.parametrize("host", ["127.0.0.1:1338", "localhost:1338", "localhost", "[::1]:1338",
                                  "admin.internal", "admin.internal:1338"])
def test_loopback_and_listed_hosts_are_served(srv: Any, host: str) -> None:
    status, _ = call(srv.port, "POST", "/admin/ping", b"{}", JSON, host=host)
    assert status == 200


def test_writes_need_post(srv: Any) -> None:
    """A GET may only read: a browser's <img> or navigation cannot add anything."""
    status, error = call(srv.port, "GET", "/admin/add_app")
    assert status == 405 and "POST" in error
    status, _ = call(srv.port, "GET", "/admin/get_all_apps")
    assert status == 200


@pytest.mark.parametrize(
    ("kind", "path"),
    [("python", "/tmp/evil.pkl"), ("sklearn", "/etc/passwd"), ("torch", "../../x.pt"),
     ("python", "subprocess:getoutput"), ("python", "")],
)
def test_code_paths_outside_the_store_are_403_without_a_token(
    srv: Any, kind: str, path: str
) -> None:
    """Loading a pickle (or importing a module) is running code: without the token only
    files the store holds may be loaded."""
    with pytest.raises(ServerError) as e:
        srv.admin.add_model("m", kind=kind, path=path, replicas=0)
    assert e.value.status == 403 and str(srv.models_dir.resolve()) in e.value.message
    with pytest.raises(ServerError):
        srv.admin.get_model("m")


def test_symlinks_out_of_the_store_are_403(srv: Any, tmp_path: Path) -> None:
    outside = tmp_path / "evil.pkl"
    outside.write_bytes(b"x")
    link = srv.models_dir / "link.pkl"
    link.symlink_to(outside)
    with pytest.raises(ServerError) as e:
        srv.admin.add_model("m", kind="python", path=str(link), replicas=0)
    assert e.value.status == 403


def test_uploaded_models_deploy_without_a_token(srv: Any) -> None:
    """The usual path: ``upload_model`` then ``add_model`` with the path it returned."""
    path = srv.admin.upload("up", "1", pickle.dumps(len), "pkl")
    assert Path(path).resolve().is_relative_to(srv.models_dir.resolve())
    srv.admin.add_model("up", kind="python", path=path, replicas=0)
    assert srv.admin.get_model("up")["spec"]["metadata"]["path"] == path
    srv.admin.add_model("nop", kind="noop", replicas=0)  # no file, no check


def test_with_a_token_the_operator_may_load_from_anywhere(tok: Any, tmp_path: Path) -> None:
    """The token authenticates the operator: any path, a module reference, any Host."""
    tok.admin.add_model("anywhere", kind="sklearn", path=str(tmp_path / "m.joblib"),
                        replicas=0)
    tok.admin.add_model("ref", kind="python", path="numpy:sum", replicas=0)
    status, _ = call(tok.port, "POST", "/admin/ping", b"{}",
                     JSON + "Authorization: Bearer s3cret\r\n", host="admin.example.com")
    assert status == 200


@pytest.mark.parametrize("given", ["é", "s3cr\u00e9t", "\u2603", ""])
def test_a_wrong_token_of_any_bytes_is_401(tok: Any, given: str) -> None:
    """A non-ASCII token is a wrong token (401), not a malformed request (400)."""
    status, error = call(tok.port, "POST", "/admin/ping", b"{}",
                         JSON + f"X-Clipperlab-Token: {given}\r\n".encode().decode("latin-1"))
    assert status == 401 and "token" in error


def test_the_client_still_speaks_to_it(srv: Any) -> None:
    """``AdminClient`` sends the content types the API wants."""
    a = srv.admin
    assert a.ping()
    a.add_app("ok", slo_ms=50, default_output=0)
    assert "ok" in a.get_all_apps()
    assert a.get_app("ok")["name"] == "ok" and "registry" in a.inspect()


def test_deep_admin_bodies_are_400_and_the_server_lives(srv: Any) -> None:
    """100,000 nested objects (past the JSON parser's C stack) are refused unparsed."""
    deep = b'{"name": "x", "d": ' + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"}"
    status, error = call(srv.port, "POST", "/admin/add_app", deep, JSON)
    assert status == 400 and "max_nesting" in error
    assert srv.admin.ping()
