"""The status page in a real headless browser (Debian ``chromium``) against a real runtime on a
real sandbox: it loads, shows the sandbox's primary, and shows the new primary and the
switchover's timeline after a switchover. The last page is saved as a screenshot (an
artefact; its path is printed): ``$HACONTROL_ARTIFACTS``, else /tmp/hacontrol-artifacts."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from hacontrol.events import OperatorCommand
from tests.live import healthy_and_idle, sandbox_settings, service
from tests.support import eventually

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="needs a headless browser: the Debian package chromium "
        "(scripts/bootstrap.sh installs it: apt-get install chromium)",
    ),
]
ARTIFACTS = Path(os.environ.get("HACONTROL_ARTIFACTS", "/tmp/hacontrol-artifacts"))


async def browse(url: str, *extra: str) -> str:
    """What the browser built from the page (its DOM), or after ``--screenshot``, its output."""
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory(prefix="hacontrol-chromium-") as profile:
        proc = await asyncio.create_subprocess_exec(
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}", *extra, url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 90)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode(errors="replace")


def shown_primary(dom: str) -> str | None:
    found = re.search(r'<span id="primary">([^<]*)</span>', dom)
    return found.group(1) if found else None


@pytest.fixture
def shot() -> Path:
    """Where this run's screenshot goes."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / f"status-page-{time.strftime('%Y%m%dT%H%M%S')}.png"


async def test_the_status_page_in_a_browser_follows_a_switchover(fresh_sandbox, shot, capsys):
    svc, _ = service(sandbox_settings(fresh_sandbox, interval=0.5, timeout=0.4))
    rt = svc.runtime(None)
    async with svc:
        await healthy_and_idle(rt)
        host, port = svc.api.address
        url = f"http://{host}:{port}/"
        dom = await browse(url, "--dump-dom")
        assert "<title>hacontrol: " in dom and 'id="topology"' in dom
        assert shown_primary(dom) == "node1"
        assert dom.count('class="node"') == 3
        result = await rt.command(OperatorCommand(time.monotonic(), "switchover", "node2"))
        assert result.ok, result.message
        await eventually(
            lambda: rt.controller.view.primary == "node2" and rt.controller.running_plan is None,
            30,
            "node2 primary",
        )

        async def after() -> str | None:
            page = await browse(url, "--dump-dom")
            return page if shown_primary(page) == "node2" else None

        dom = await eventually(after, 20, "the page shows node2", poll=0.5)
        assert "switchover" in dom and "promoted" in dom and "routed" in dom
        await browse(url, f"--screenshot={shot}", "--window-size=1280,1100")
    assert await asyncio.to_thread(os.path.getsize, shot) > 10_000
    with capsys.disabled():
        print(f"\nstatus page screenshot: {shot}")
