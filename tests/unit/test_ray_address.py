"""A Ray address where nothing answers fails at once with the address in the message (``ray.init``
would retry for about 14 minutes), from the function and from the CLI; no Ray is started."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from ood_ray.config import ConfigError
from ood_ray.run.ray_runtime import check_address


@pytest.mark.parametrize("form", ["{}", "ray://{}"])
def test_an_address_where_nothing_listens_is_a_configuration_error(form, closed_port):
    address = form.format(f"127.0.0.1:{closed_port}")
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=address.replace(".", r"\.")):
        check_address(address)
    assert time.perf_counter() - started < 5  # refused at once, not retried


def test_an_address_that_listens_and_the_forms_left_to_ray_pass(closed_port):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_address(f"127.0.0.1:{server.getsockname()[1]}")
    for address in ("auto", "local", f"anyscale://127.0.0.1:{closed_port}"):
        check_address(address)  # Ray's to resolve


def test_the_cli_stops_with_the_address_and_exit_code_2(tmp_path, closed_port):
    (tmp_path / "images").mkdir()
    address = f"127.0.0.1:{closed_port}"
    done = subprocess.run([sys.executable, "-m", "ood_ray", "audit", str(tmp_path / "images"), "--out", str(tmp_path / "out"),
                           "--address", address], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"configuration error: --address / RAY_ADDRESS '{address}': no Ray answers there" in done.stderr
