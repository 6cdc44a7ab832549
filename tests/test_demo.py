"""The demo page in a real browser: Debian's headless chromium, driven by playwright, against the
real transformer and predictor on loopback.

Screenshots land in the pytest run's temporary directory (`<basetemp>/demo-screenshots/`,
printed with `-s`), or in DEMO_SCREENSHOT_DIR when set (`DEMO_SCREENSHOT_DIR=docs` refreshes
the README's picture). Without chromium the browser tests skip, except under CI (CI=true),
where they fail.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from conftest import DATA, MODEL_NAME, ROOT, Server, start_transformer
from playwright.sync_api import Browser, Page, Request, Route, expect, sync_playwright
from test_serving import PHOTOS
from tritonclient.utils import InferenceServerException

from harness import needs
from transformer import demo

CHROMIUM = Path(os.environ.get("DEMO_CHROMIUM", "/usr/bin/chromium"))
WAIT_MS = 30_000  # longest wait for something on the page (a request on a busy machine)
PAGE_FILES = [demo.TEMPLATE, *demo.ASSETS]


def missing(reason: str) -> None:
    """Skip where the browser is absent, but fail under CI, where it must be installed."""
    needs.missing(reason)


# Module scope: while playwright's sync API runs, its event loop is this thread's running loop,
# and later tests that call asyncio.run() would fail.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless chromium from the Debian package (playwright's own download is not used)."""
    if not CHROMIUM.is_file():
        missing(f"no chromium at {CHROMIUM}: apt-get install -y chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: DEMO_SCREENSHOT_DIR, else the run's temporary directory."""
    configured = os.environ.get("DEMO_SCREENSHOT_DIR")
    if configured:
        target = Path(configured)
        target.mkdir(parents=True, exist_ok=True)
        return target
    return tmp_path_factory.mktemp("demo-screenshots", numbered=False)


@dataclass
class Traffic:
    """Every request the page made, and those aimed anywhere but the server (blocked)."""

    origin: str
    requests: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    def to(self, path_suffix: str) -> list[str]:
        return [url for url in self.requests if urlsplit(url).path.endswith(path_suffix)]


def open_page(browser: Browser, server: Server, **context_args: Any) -> tuple[Page, Traffic]:
    """Open the demo in a fresh context that records every request and blocks other origins."""
    traffic = Traffic(origin=server.url)
    context = browser.new_context(**context_args)

    def route(route: Route, request: Request) -> None:
        parts = urlsplit(request.url)
        if f"{parts.scheme}://{parts.netloc}" == traffic.origin:
            traffic.requests.append(request.url)
            traffic.headers.append(request.headers)
            route.continue_()
        else:
            traffic.outside.append(request.url)
            route.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(server.url + "/")
    return page, traffic


@pytest.fixture
def page_and_traffic(browser: Browser, transformer: Server) -> Iterator[tuple[Page, Traffic]]:
    page, traffic = open_page(browser, transformer, viewport={"width": 1200, "height": 900})
    yield page, traffic
    page.context.close()


def card(page: Page, file_name: str) -> Any:
    """The result card of one uploaded file."""
    return page.locator(".card", has=page.locator(".name", has_text=file_name))


def labels(page: Page, file_name: str) -> list[str]:
    return card(page, file_name).locator(".label").all_inner_texts()


def server_error_for(server: Server, data: bytes) -> str:
    """What the server says about `data` as an image, asked with tritonclient (V2 binary)."""
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    tensor = httpclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([data], dtype=np.object_), binary_data=True)
    with pytest.raises(InferenceServerException) as raised:
        client.infer(MODEL_NAME, [tensor])
    assert raised.value.status() == "400"
    return str(raised.value.message())


# --- served without a browser ---------------------------------------------------------------


def test_root_serves_the_page_to_browsers_and_liveness_to_everyone_else(
    transformer: Server,
) -> None:
    page = httpx.get(transformer.url + "/", headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert f'data-model-name="{MODEL_NAME}"' in page.text and "{{" not in page.text
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    for name, media_type in demo.ASSETS.items():
        asset = httpx.get(f"{transformer.url}/demo/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"] == media_type
    # Probes and scripts (no text/html in Accept) keep kserve's answer.
    for accept in ("*/*", "application/json"):
        probe = httpx.get(transformer.url + "/", headers={"Accept": accept})
        assert probe.status_code == 200 and probe.json() == {"status": "alive"}


def test_page_files_name_no_other_server() -> None:
    for name in PAGE_FILES:
        text = (ROOT / "transformer" / "demo" / name).read_text()
        assert not re.findall(r"(?:https?:|wss?:)?//[\w.-]+\.\w", text), name
        assert "@import" not in text and "url(" not in text, name


def test_disable_demo_leaves_only_the_api(
    predictor: Server, model_repository: Path, tmp_path: Path
) -> None:
    log = tmp_path / "transformer-no-demo.log"
    server = start_transformer(predictor, model_repository, log, "--disable_demo")
    try:
        root = httpx.get(server.url + "/", headers={"Accept": "text/html"})
        assert root.status_code == 200 and root.json() == {"status": "alive"}
        assert httpx.get(f"{server.url}/demo/demo.js").status_code == 404
        ready = httpx.get(f"{server.url}/v2/models/{MODEL_NAME}/ready")
        assert ready.status_code == 200
    finally:
        server.stop()


def test_non_editable_install_ships_the_page(tmp_path: Path) -> None:
    """What the transformer image does: install the copied sources (not editable), then run
    the Dockerfile's own check that the page's files load from the installed package."""
    dockerfile = (ROOT / "docker" / "transformer.Dockerfile").read_text()
    copied = re.findall(r"^COPY (\S+(?: \S+)*) /tmp/src/", dockerfile, re.MULTILINE)
    check = re.search(r'python -c "(from transformer import demo;[^"]*)"', dockerfile)
    assert copied and check, "the Dockerfile no longer copies sources or checks the demo files"
    source = tmp_path / "src"
    for name in (n for line in copied for n in line.split()):
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            source.mkdir(exist_ok=True)
            shutil.copy(ROOT / name, source / name)
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*pip, "--target", str(site), str(source)], check=True, capture_output=True, timeout=300
    )
    assert {n: (site / "transformer" / "demo" / n).is_file() for n in PAGE_FILES} == {
        n: True for n in PAGE_FILES
    }
    shutil.rmtree(source)  # so only the installed copy can be imported
    subprocess.run(
        [sys.executable, "-c", check.group(1)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
        check=True,
        timeout=120,
    )


# --- in the browser ---------------------------------------------------------------------------


def test_header_shows_model_version_and_readiness(
    page_and_traffic: tuple[Page, Traffic], model_repository: Path
) -> None:
    page, _ = page_and_traffic
    version = max(
        (p.name for p in (model_repository / MODEL_NAME).iterdir() if p.name.isdigit()), key=int
    )
    expect(page.locator("#model-name")).to_have_text(MODEL_NAME)
    expect(page.locator("#model-version")).to_have_text(f"version {version}")
    expect(page.locator("#readiness")).to_have_text("ready")
    expect(page.locator("#key-panel")).to_be_hidden()  # shown on request or on a 401


def test_coffee_is_espresso(page_and_traffic: tuple[Page, Traffic], screenshots: Path) -> None:
    page, traffic = page_and_traffic
    page.set_input_files("#file-input", DATA / "coffee.jpg")
    result = card(page, "coffee.jpg")
    expect(result).to_have_class(re.compile(r"\bdone\b"))
    assert labels(page, "coffee.jpg")[0] == "espresso"
    assert result.locator(".classes li").count() == 5  # the server's default top_k
    assert re.fullmatch(r"\d+ ms", result.locator(".time").inner_text())
    assert result.locator(".thumb").evaluate("img => img.complete && img.naturalWidth") > 0
    widths = [
        bar.evaluate("b => b.getBoundingClientRect().width") for bar in result.locator(".bar").all()
    ]
    assert widths[0] > 0 and widths == sorted(widths, reverse=True)
    # The image went as raw bytes over the binary extension, not as base64 JSON.
    (infer_headers,) = [
        h for url, h in zip(traffic.requests, traffic.headers, strict=True) if "/infer" in url
    ]
    assert int(infer_headers["inference-header-content-length"]) > 0
    assert infer_headers["content-type"] == "application/octet-stream"


def test_two_images_at_once(page_and_traffic: tuple[Page, Traffic]) -> None:
    page, traffic = page_and_traffic
    page.set_input_files("#file-input", [DATA / "coffee.jpg", DATA / "chelsea.jpg"])
    expect(page.locator(".card.done")).to_have_count(2)
    assert labels(page, "coffee.jpg")[0] == "espresso"
    assert PHOTOS["chelsea.jpg"] in labels(page, "chelsea.jpg")[0]
    assert len(traffic.to("/infer")) == 2


def test_non_image_shows_the_servers_400(
    page_and_traffic: tuple[Page, Traffic], transformer: Server, tmp_path: Path
) -> None:
    page, _ = page_and_traffic
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image, just some text\n")
    expected = server_error_for(transformer, notes.read_bytes())
    page.set_input_files("#file-input", notes)
    result = card(page, "notes.txt")
    expect(result).to_have_class(re.compile(r"\bfailed\b"))
    expect(result.locator(".state")).to_have_text("HTTP 400")
    expect(result.locator(".error")).to_have_text(expected)
    assert transformer.alive()


def test_top_k_control(page_and_traffic: tuple[Page, Traffic], transformer: Server) -> None:
    page, _ = page_and_traffic
    page.fill("#top-k", "3")
    page.set_input_files("#file-input", DATA / "coffee.jpg")
    result = card(page, "coffee.jpg")
    expect(result.locator(".classes li")).to_have_count(3)
    assert labels(page, "coffee.jpg")[0] == "espresso"
    # Changing top_k asks again; a value the server refuses shows the server's reason.
    page.fill("#top-k", "0")
    page.locator("#top-k").dispatch_event("change")
    expect(result).to_have_class(re.compile(r"\bfailed\b"))
    expect(result.locator(".error")).to_have_text(re.compile(r"parameter top_k is 0"))
    page.fill("#top-k", "7")
    page.locator("#top-k").dispatch_event("change")
    expect(result.locator(".classes li")).to_have_count(7)


def test_paste_and_drop(page_and_traffic: tuple[Page, Traffic]) -> None:
    page, _ = page_and_traffic
    data = base64.b64encode((DATA / "coffee.jpg").read_bytes()).decode()
    for event in ("paste", "drop"):
        page.evaluate(
            """([event, data]) => {
                const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
                const file = new File([bytes], event + ".jpg", {type: "image/jpeg"});
                const transfer = new DataTransfer();
                transfer.items.add(file);
                const init = {bubbles: true, cancelable: true};
                const zone = document.getElementById("drop-zone");
                const target = event === "paste" ? document.body : zone;
                target.dispatchEvent(event === "paste"
                    ? new ClipboardEvent("paste", {...init, clipboardData: transfer})
                    : new DragEvent("drop", {...init, dataTransfer: transfer}));
            }""",
            [event, data],
        )
        expect(card(page, f"{event}.jpg")).to_have_class(re.compile(r"\bdone\b"))
        assert labels(page, f"{event}.jpg")[0] == "espresso"


def test_api_key_goes_as_bearer_from_the_page_only(
    page_and_traffic: tuple[Page, Traffic],
) -> None:
    page, traffic = page_and_traffic
    page.click("#key-toggle")
    page.fill("#api-key", "s3cret-key")
    page.set_input_files("#file-input", DATA / "coffee.jpg")
    expect(card(page, "coffee.jpg")).to_have_class(re.compile(r"\bdone\b"))
    (infer_headers,) = [
        h for url, h in zip(traffic.requests, traffic.headers, strict=True) if "/infer" in url
    ]
    assert infer_headers["authorization"] == "Bearer s3cret-key"
    stored = page.evaluate(
        "() => [document.cookie, localStorage.length, sessionStorage.length, location.href]"
    )
    assert stored[:3] == ["", 0, 0] and "s3cret" not in stored[3]


def test_api_key_asked_for_after_a_401(
    browser: Browser, predictor: Server, model_repository: Path, tmp_path: Path
) -> None:
    key = "demo-test-key-0123456789abcdef"
    key_file = tmp_path / "api-keys"
    key_file.write_text(f"{key}\n")
    log = tmp_path / "transformer-keyed.log"
    server = start_transformer(predictor, model_repository, log, "--api_key_file", str(key_file))
    page, traffic = open_page(browser, server, viewport={"width": 1200, "height": 900})
    try:
        expect(page.locator("#readiness")).to_have_text("ready")  # readiness needs no key
        expect(page.locator("#key-panel")).to_be_hidden()
        keyless = httpx.post(
            f"{server.url}/v2/models/{MODEL_NAME}/infer",
            content=b"{}",
            headers={"Content-Type": "application/json"},
        )
        assert keyless.status_code == 401
        page.set_input_files("#file-input", DATA / "coffee.jpg")
        result = card(page, "coffee.jpg")
        expect(result.locator(".state")).to_have_text("HTTP 401")
        expect(result.locator(".error")).to_have_text(keyless.json()["error"])
        expect(page.locator("#key-panel")).to_be_visible()
        page.fill("#api-key", key)
        page.locator("#api-key").dispatch_event("change")
        expect(result).to_have_class(re.compile(r"\bdone\b"))  # asked again, with the key
        assert labels(page, "coffee.jpg")[0] == "espresso"
        assert traffic.outside == []
    finally:
        page.context.close()
        server.stop()


def test_nothing_loads_from_outside_the_server(
    page_and_traffic: tuple[Page, Traffic], screenshots: Path
) -> None:
    page, traffic = page_and_traffic
    notes = screenshots / "notes.txt"
    notes.write_text("not an image\n")
    files = [DATA / name for name in PHOTOS] + [notes]
    page.set_input_files("#file-input", files)
    expect(page.locator(".card.done")).to_have_count(len(PHOTOS))
    expect(page.locator(".card.failed")).to_have_count(1)
    page.set_viewport_size({"width": 1200, "height": 640})  # full_page grows to the content
    page.screenshot(path=screenshots / "demo.png", full_page=True)
    paths = sorted({urlsplit(url).path for url in traffic.requests})
    assert traffic.outside == []
    assert {"/", "/demo/demo.css", "/demo/demo.js", f"/v2/models/{MODEL_NAME}/infer"} <= set(paths)
    assert len(traffic.to("/infer")) == len(files)
    print(f"\ndemo screenshot: {screenshots / 'demo.png'}; requests: {len(traffic.requests)}")


def test_phone_sized_screen(browser: Browser, transformer: Server, screenshots: Path) -> None:
    page, traffic = open_page(
        browser,
        transformer,
        viewport={"width": 375, "height": 720},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    try:
        page.set_input_files("#file-input", [DATA / "coffee.jpg", DATA / "rocket.jpg"])
        expect(page.locator(".card.done")).to_have_count(2)
        overflow = page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"the page is {overflow}px wider than a phone screen"
        for element in ("#model-name", "#readiness", ".button", "#top-k", ".card .thumb"):
            box = page.locator(element).first.bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375, element
        page.screenshot(path=screenshots / "demo-phone.png", full_page=True)
        assert traffic.outside == []
    finally:
        page.context.close()
