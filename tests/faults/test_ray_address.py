"""`embed --ray ADDRESS` with an address that is no Ray cluster's (issue 23: one line, before any connection):
a dashboard's http:// URL, no host, a port that is no port. The expectations are hand-written."""

import pytest

from runtime import ray as on_ray
from runtime.errors import HieraRuntimeError

SCHEME = "a {scheme}:// URL; give HOST:PORT (what ray start --head printed) or ray://HOST:PORT"
FORM = "give it as HOST:PORT or ray://HOST:PORT (a port from 1 to 65535)"


@pytest.mark.parametrize("address, host, port", [("10.0.0.5:6379", "10.0.0.5", 6379),
                                                 ("ray://head.local:10001", "head.local", 10001),
                                                 ("[::1]:6379", "::1", 6379), ("h:65535", "h", 65535)])
def test_addresses_ray_takes(address, host, port):
    assert on_ray.cluster_address(address) == (host, port)


@pytest.mark.parametrize("address, says", [
    ("http://head:8265", SCHEME.format(scheme="http")), ("HTTPS://h:1", SCHEME.format(scheme="HTTPS")),
    ("http://x", SCHEME.format(scheme="http")), ("head", FORM), ("head:", FORM), (":6379", FORM), (":", FORM),
    ("head:port", FORM), ("head:-1", FORM), ("head:0", FORM), ("head:65536", FORM), ("ray://h:99999", FORM),
    ("head:\u00b2", FORM), ("head: 80", FORM)])
def test_an_address_that_is_no_cluster_s_is_one_line(address, says):
    with pytest.raises(HieraRuntimeError) as refused:
        on_ray.cluster_address(address)
    assert str(refused.value) == f"Ray cluster {address}: {says}"


def test_connected_refuses_before_connecting():
    pytest.importorskip("ray")
    with pytest.raises(HieraRuntimeError, match=r"^Ray cluster http://head:8265: a http:// URL"), \
            on_ray.connected("http://head:8265"):
        pass
