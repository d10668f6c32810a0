"""Admin routes make the server load any checkpoint path: beyond the loopback interface they
need an API key, and without one they answer 403 and change nothing."""

import httpx
import pytest

from octavo_server.admin import admin_allowed

from .conftest import MODEL, assert_error, assert_still_serving, post, start_server, tiny_model


@pytest.mark.parametrize(("host", "key", "allowed"), [
    ("127.0.0.1", None, True), ("127.0.0.2", None, True), ("::1", None, True),
    ("localhost", None, True), ("0.0.0.0", None, False), ("::", None, False),
    ("10.1.2.3", None, False), ("my-server.example", None, False),
    ("0.0.0.0", "key", True), ("my-server.example", "key", True)])
def test_who_may_use_the_admin_routes(host, key, allowed):
    assert admin_allowed(host, key) is allowed


def test_a_server_on_every_interface_without_a_key_refuses_admin_routes(tiny_folder):
    server = start_server(tiny_model(tiny_folder), host="0.0.0.0")
    try:
        base = server.base_url  # the settings say every interface; the test talks over loopback
        before = httpx.get(f"{base}/v1/models/{MODEL}").json()
        for action in ("load", "unload", "pin", "unpin"):
            error = assert_error(post(base, f"/admin/models/{MODEL}/{action}", {}), 403, None,
                                 "--api-key")
            assert error["code"] == "admin_routes_disabled"
        assert_error(post(base, f"/admin/models/{MODEL}/swap", {"path": str(tiny_folder)}),
                     403, None, "--api-key")
        assert httpx.get(f"{base}/v1/models/{MODEL}").json() == before
        assert_still_serving(base)
    finally:
        server.stop()
