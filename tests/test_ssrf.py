"""The SSRF guard: which addresses it refuses, and proof that a refused target is never
contacted (a real listener counting accepts; an audit hook on connect for addresses
where no listener of ours can be), and that it connects to the address it checked."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from shared.job_types.webhook import signing as webhook_signing
from shared.job_types.webhook import ssrf
from shared.settings import Settings
from tests.support import job_api
from tests.support.connect_watch import watch_connects
from tests.support.http_receiver import Receiver, http_receiver


def mapping(names: dict[str, list[str]], system: bool = False
            ) -> Callable[[str, int], Awaitable[list[str]]]:
    """A resolver that knows ``names``; other names go to the system's resolver when
    ``system``, else fail like NXDOMAIN (no test waits on real DNS)."""
    async def resolve(host: str, port: int) -> list[str]:
        if host in names:
            return names[host]
        if system:
            return await ssrf.system_resolver(host, port)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return resolve


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # No allowlist: the guard's defaults, as in production.
    return settings.model_copy(update={"webhook_secret": webhook_signing.new_secret(),
                                       "webhook_allowlist": []})


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with http_receiver() as r:
        yield r


@pytest.mark.parametrize(("address", "why"), [
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
    ("10.0.0.1", "private"), ("172.16.5.4", "private"), ("192.168.1.1", "private"),
    ("fc00::1", "private"), ("169.254.169.254", "metadata"), ("fd00:ec2::254", "metadata"),
    ("169.254.170.2", "metadata"), ("100.100.100.200", "metadata"),
    ("169.254.1.1", "link-local"), ("fe80::1", "link-local"),
    ("0.0.0.0", "private"), ("::", "private"), ("100.64.0.1", "not a public"),
    ("224.0.0.1", "not a public"), ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:169.254.169.254", "metadata"), ("64:ff9b::a00:1", "private"),
    ("2002:a9fe:a9fe::1", "metadata"),
])
def test_guard_refuses_internal_addresses(address: str, why: str) -> None:
    reason = ssrf.refusal(ipaddress.ip_address(address))
    assert reason is not None and why in reason


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700::1111",
                                     "::ffff:8.8.8.8"])
def test_guard_admits_public_addresses(address: str) -> None:
    assert ssrf.refusal(ipaddress.ip_address(address)) is None


def test_allowlist_admits_only_its_networks() -> None:
    allow = ssrf.networks(["127.0.0.1/32", "10.20.0.0/16"])
    assert ssrf.refusal(ipaddress.ip_address("127.0.0.1"), allow) is None
    assert ssrf.refusal(ipaddress.ip_address("10.20.3.4"), allow) is None
    assert ssrf.refusal(ipaddress.ip_address("127.0.0.2"), allow) is not None
    assert ssrf.refusal(ipaddress.ip_address("10.21.0.1"), allow) is not None
    with pytest.raises(ValueError):
        Settings(webhook_allowlist="10.0.0.0/8,not-a-network")


async def test_every_answer_of_a_name_is_checked() -> None:
    """A name answering with one public and one private address is refused: which one a
    client would use is the attacker's choice."""
    with ssrf.use_resolver(mapping({"mixed.test": ["93.184.215.14", "10.0.0.5"],
                                    "public.test": ["93.184.215.14"]})):
        with pytest.raises(ssrf.Refused, match=r"mixed.test \(resolves to 10.0.0.5\)"):
            await ssrf.resolve("mixed.test", 443)
        assert await ssrf.resolve("public.test", 443) == "93.184.215.14"
        with pytest.raises(ssrf.Unresolvable):
            await ssrf.resolve("nowhere.test", 443)


async def test_refused_targets_on_this_machine_are_never_contacted(
        api: Any, start_worker: Any, receiver: Receiver) -> None:
    """127.0.0.1 without an allowlist entry, by address, by ``localhost``, by an
    IPv4-mapped IPv6 address and by a name mapped to it: a real listener is there, and
    it never sees a connection."""
    port = receiver.port
    urls = [f"http://127.0.0.1:{port}/", f"http://localhost:{port}/",
            f"http://[::ffff:127.0.0.1]:{port}/", f"http://internal.test:{port}/",
            f"http://2130706433:{port}/", f"http://0x7f.1:{port}/"]  # 127.0.0.1 in disguise
    # ``localhost`` goes to the system's resolver (/etc/hosts), like in production.
    with ssrf.use_resolver(mapping({"internal.test": ["127.0.0.1"]}, system=True)):
        for job in await _webhooks_refused(api, start_worker, urls):
            assert "loopback" in job["last_error"]
    assert receiver.accepted == 0
    assert receiver.requests == []


async def _webhooks_refused(api: Any, start_worker: Any, urls: list[str]
                            ) -> list[dict[str, Any]]:
    """Webhook jobs to ``urls``, run by a real worker: each must fail at once, refused."""
    ids = [await job_api.create(api, "webhook", {"url": u}) for u in urls]
    await start_worker()
    jobs = []
    for url, job_id in zip(urls, ids, strict=True):
        job = await job_api.finished(api, job_id)
        assert (job["status"], job["attempts"]) == ("FAILED", 1), url
        assert "refused to connect" in job["last_error"], job["last_error"]
        jobs.append(job)
    return jobs


async def test_private_and_metadata_targets_are_never_contacted(api: Any, start_worker: Any
                                                                ) -> None:
    """10.0.0.1, the metadata addresses and a name mapped to one: no connect is even
    attempted (the audit hook would record it, and stop it before any packet)."""
    watched = ("10.0.0.1", "169.254.169.254", "fd00:ec2::254")
    urls = ["http://10.0.0.1/hook", "http://169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/latest/meta-data/", "https://metadata.test/computeMetadata",
            "http://rebind.test:8080/"]
    names = {"metadata.test": ["169.254.169.254"], "rebind.test": ["10.0.0.1"]}
    with ssrf.use_resolver(mapping(names)), watch_connects(*watched) as attempts:
        # The watch works: a connect of our own to a watched address is seen and stopped.
        with pytest.raises(ConnectionRefusedError), socket.socket() as s:
            s.connect(("10.0.0.1", 9))
        assert len(attempts) == 1
        attempts.clear()

        await _webhooks_refused(api, start_worker, urls)
        assert attempts == []


async def test_connects_to_the_checked_address_not_the_name_again(
        api: Any, start_worker: Any, receiver: Receiver) -> None:
    """The name is resolved once by the guard; the request then goes to that address
    with the name in the Host header. ``hooks.test`` exists only in the guard's resolver,
    so a second lookup by the HTTP client would have failed (no DNS rebinding window)."""
    await start_worker(webhook_allowlist=["127.0.0.1/32"])
    with ssrf.use_resolver(mapping({"hooks.test": ["127.0.0.1"]})):
        job_id = await job_api.create(api, "webhook", {
            "url": f"http://hooks.test:{receiver.port}/in", "body": {"ok": True}})
        job = await job_api.finished(api, job_id)
    assert job["status"] == "COMPLETED", job["last_error"]
    assert job["result"]["address"] == "127.0.0.1"
    (got,) = receiver.requests
    assert got.headers["host"] == f"hooks.test:{receiver.port}"
    assert got.path == "/in"
