"""Shared test setup: no test may reach the network or the user's own Hugging Face cache.

Hugging Face libraries read these variables when they are imported, so they are set here, before any test module
imports them.
"""

import atexit
import ipaddress
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_EVALUATE_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="ttt4rec-test-hf-home-")
atexit.register(shutil.rmtree, os.environ["HF_HOME"], ignore_errors=True)
# a token in the environment would let a test that switches offline mode off authenticate for real (`get_token()`
# reads both variables; the token file lies under HF_HOME, a fresh folder above)
for _variable in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
    os.environ.pop(_variable, None)

# the repository root (for `modeling_ttt4rec`, `dataset_builders`) and this folder (for the test helpers)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

try:
    from hypothesis import settings
except ImportError:  # only the property-based tests need hypothesis
    pass
else:
    # the same examples on every run (CI must not fail at random); no per-example deadline on a slow, shared machine.
    # Each test keeps its own `max_examples`. `HYPOTHESIS_PROFILE=explore` draws new examples for local bug hunting.
    settings.register_profile("ttt4rec", derandomize=True, deadline=None)
    settings.register_profile("explore", derandomize=False, deadline=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ttt4rec"))


class NetworkAccessError(ConnectionRefusedError):
    """A test tried to connect beyond this machine (an OSError, as on a machine without a network)."""


class NameLookupError(socket.gaierror):
    """A test tried to look up a host name that is not this machine's (the DNS query would leave the machine)."""


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    return getattr(ip, "ipv4_mapped", None) or ip  # ::ffff:127.0.0.1 is 127.0.0.1


def _is_local_host(host: object) -> bool:
    if isinstance(host, bytes):
        host = host.decode()
    if not isinstance(host, str):
        return False
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    ip = _ip(host)
    return ip is not None and (ip.is_loopback or ip.is_unspecified)


def _refuse_remote(family: int, address: object) -> None:
    if family not in (socket.AF_INET, socket.AF_INET6):
        return  # Unix domain sockets and the like never leave the machine
    if not _is_local_host(address[0] if isinstance(address, tuple) else address):
        raise NetworkAccessError(f"tests must not reach the network: the connection to {address!r} was refused")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse connections to anything but loopback in the test process, and look-ups of other host names than this
    machine's. Subprocesses are not guarded: they inherit the offline variables above (the DDP test's gloo rendezvous
    on 127.0.0.1 runs in subprocesses)."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo
    own_name = socket.gethostname().lower()

    def connect(self: socket.socket, address: object) -> None:
        _refuse_remote(self.family, address)
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: object) -> int:
        _refuse_remote(self.family, address)
        return real_connect_ex(self, address)

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> list:
        name = host.decode() if isinstance(host, bytes) else host
        if isinstance(name, str) and name.lower() != own_name and _ip(name) is None and not _is_local_host(name):
            raise NameLookupError(socket.EAI_NONAME, f"tests must not reach the network: no look-up of {name!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
