"""The web API (a JSON facade over the real Triton server) and the playground page in a real headless Chromium:
the same answers and refusals as the gRPC models, CORS by allowlist, the token, and a shopper whose list,
banner and next-category intent follow a run of dresses, then of beauty items."""

from __future__ import annotations

import os
import shutil

import httpx
import pytest

from intentrec.serving.client import Client, RecommendRequest, ServingError
from intentrec.serving.events.local import Collector, WebApi
from intentrec.serving.repository import ServingOptions
from intentrec.serving.server import free_port
from intentrec.serving.web import WebSettings, create_app
from tests.conftest import CONF_DIR
from tests.serving.conftest import triton_for

pytestmark = pytest.mark.triton

ORIGIN = "https://shop.example.com"
TOKEN = "web-test-token-0123456789"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def stack(bundle, tmp_path_factory):
    """(Triton, collector, web API) on one SQLite store: the repository serves recommend, intent and banners and
    reads the store for requests by identity; the web API needs the token and allows ORIGIN; its on-site exit
    offer fires at any exit probability once the session's cart holds items (threshold 0: deterministic)."""
    root = tmp_path_factory.mktemp("web")
    url = f"sqlite:///{root / 'events.db'}"
    rules = root / "rules.yaml"
    rules.write_text(
        "rules:\n  - {name: exit_offer, action: exit_offer, signal: exit, above: 0.0, needs: [cart, no_purchase], k: 4}\n"
    )
    (root / "token").write_text(TOKEN)
    options = ServingOptions(profile_store=url, banners=str(CONF_DIR / "banners" / "synthetic.yaml"))
    with (
        triton_for(bundle, root, options) as server,
        Collector(url, log_file=root / "collector.log") as collector,
        WebApi(
            server.grpc_url,
            log_file=root / "web.log",
            collector=collector.url,
            bundle=str(bundle),
            rules=str(rules),
            allow_origins=ORIGIN,
            token_file=str(root / "token"),
        ) as web,
    ):
        yield server, collector, web


def post(web, path, body, **headers):
    return httpx.post(web.url + path, json=body, headers={"Authorization": f"Bearer {TOKEN}", **headers}, timeout=30)


def test_answers_are_the_models_answers_and_refusals_keep_their_words(stack, bundle):
    server, _, web = stack
    items = ["i1", "i2", "i3"]
    with Client(server.grpc_url) as client:
        direct = client.recommend(RecommendRequest(item_ids=items, device_type="mobile", k=5))
        with pytest.raises(ServingError) as refused:
            client.recommend(RecommendRequest(item_ids=items, k=300))
    reply = post(web, "/v1/recommend", {"item_ids": items, "device_type": "mobile", "k": 5})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["item_ids"] == direct.item_ids and body["scores"] == pytest.approx(direct.scores, abs=1e-6)
    assert body["recommendation_id"] and body["recommendation_id"] != direct.recommendation_id
    assert [i["item_id"] for i in body["items"]] == body["item_ids"] and all(i["category"] for i in body["items"])
    assert set(body["info"]["intent"]) >= {"purchase", "exit", "abandon", "next_category"}
    banners = post(web, "/v1/banners", {"item_ids": items, "k": 2}).json()
    assert len(banners["item_ids"]) == 2 and banners["info"]["banners"][0]["id"] == banners["item_ids"][0]
    at = {"item_ids": items, "now": 1_772_000_000_000, "device_type": "mobile"}
    intent = post(web, "/v1/intent", at).json()
    listed = post(web, "/v1/recommend", at).json()
    assert intent["item_ids"] == [] and intent["info"]["intent"]["exit"] == pytest.approx(
        listed["info"]["intent"]["exit"], abs=1e-6
    )
    similar = post(web, "/v1/similar", {"item_ids": ["i1"], "k": 3}).json()
    assert len(similar["item_ids"]) == 3 and "i1" not in similar["item_ids"]

    too_many = post(web, "/v1/recommend", {"item_ids": items, "k": 300})
    assert too_many.status_code == 400 and too_many.json()["error"] == str(refused.value)
    cases = [
        ({"itemz": ["i1"]}, 422, "unknown field(s) ['itemz']; a request has the fields"),
        ({"item_ids": "i1", "k": "ten"}, 422, "item_ids: Input should be a valid list (got 'i1')"),
        ({"item_ids": ["i1"], "event_types": ["view", "view"]}, 400, "event_types"),
        ([1, 2], 422, "expected a JSON object"),
    ]
    for body, status, message in cases:
        answer = post(web, "/v1/recommend", body)
        assert answer.status_code == status and message in answer.json()["error"], answer.text
    broken = httpx.post(
        web.url + "/v1/recommend", content=b"{not json", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    )
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]
    huge = post(web, "/v1/recommend", {"item_ids": ["i1"] * 20_000})
    assert huge.status_code == 413 and "max_body_bytes" in huge.json()["error"]
    assert post(web, "/v1/similar", {"item_ids": "i1"}).status_code == 422
    refused = post(web, "/v1/similar", {"item_ids": ["i1"], "k": 0})  # the model's own words, as gRPC gives them
    assert refused.status_code == 400 and "k=0; expected an integer from 1 to" in refused.json()["error"], refused.text
    assert httpx.get(web.url + "/healthz").status_code == 200  # still serving


def test_cors_allows_listed_origins_only_and_every_v1_call_needs_the_token(stack):
    _, _, web = stack
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    allowed = httpx.options(web.url + "/v1/recommend", headers={"Origin": ORIGIN, **preflight})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ORIGIN
    other = httpx.options(web.url + "/v1/recommend", headers={"Origin": "https://evil.example", **preflight})
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    answered = post(web, "/v1/recommend", {"item_ids": ["i1"]}, Origin=ORIGIN)
    assert answered.headers["access-control-allow-origin"] == ORIGIN
    assert (
        "access-control-allow-origin"
        not in post(web, "/v1/recommend", {"item_ids": ["i1"]}, Origin="https://x.y").headers
    )
    no_token = httpx.post(web.url + "/v1/recommend", json={"item_ids": ["i1"]}, headers={"Origin": ORIGIN})
    assert no_token.status_code == 401 and "bearer token" in no_token.json()["error"]
    assert no_token.headers["access-control-allow-origin"] == ORIGIN  # the page can read why
    wrong = httpx.post(web.url + "/v1/events", json={"events": []}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert httpx.get(web.url + "/").status_code == 200  # the page itself is public; its calls carry the token


def test_unreachable_triton_and_collector_are_503_and_missing_parts_404(bundle):
    from fastapi.testclient import TestClient

    dead = f"127.0.0.1:{free_port()}"
    app = create_app(WebSettings(triton=dead, collector=f"http://{dead}", timeout_s=2.0))
    with TestClient(app) as client:
        reply = client.post("/v1/recommend", json={"item_ids": ["i1"]})
        assert reply.status_code == 503 and "recommend" in reply.json()["error"]
        events = client.post("/v1/events", json={"events": []})
        assert events.status_code == 503 and "resend the events" in events.json()["error"]
        missing = client.get("/v1/catalogue")
        assert missing.status_code == 404 and "start the web API with bundle=<bundle>" in missing.json()["error"]
        assert client.get("/healthz").status_code == 503
    # A catalogue and no collector: the page's parts answer what is missing, by name.
    with TestClient(create_app(WebSettings(triton=dead, bundle=bundle, timeout_s=2.0))) as client:
        events = client.post("/v1/events", json={"events": []})
        assert (
            events.status_code == 404 and "start the web API with collector=<collector URL>" in events.json()["error"]
        )
        unknown = client.get("/v1/catalogue", params={"category": "spaceships"})
        assert unknown.status_code == 404 and "category 'spaceships' is not in the catalogue; known:" in unknown.text
        assert client.get("/v1/catalogue", params={"limit": 0}).json()["error"] == "limit=0; expected 1 to 500"
        k = client.post("/v1/similar", json={"item_ids": ["i1"], "k": "ten"})
        assert k.status_code == 422 and k.json()["error"] == "k: expected an integer, got 'ten'"


def _browser():
    if CHROMIUM is None:
        pytest.skip("chromium not installed (Debian package chromium; ./scripts/test.sh installs it as root)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright not installed (pip install -e '.[dev]')")
    return sync_playwright


def test_the_playground_follows_dresses_then_beauty_in_a_real_browser(stack, tmp_path):
    _, _, web = stack
    sync_playwright = _browser()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{web.url}/#token={TOKEN}")
        page.wait_for_selector("body[data-ready=true]", timeout=30_000)

        def updated(action):
            before = int(page.get_attribute("body", "data-updates"))
            action()
            page.wait_for_function(f"Number(document.body.dataset.updates) > {before}", timeout=30_000)

        def browse(category: str, views: int = 5) -> dict:
            page.click(f"#categories button[data-category={category}]")
            page.wait_for_selector(f"#items .card[data-category={category}]")
            cards = page.locator(f"#items .card[data-category={category}]")
            for n in range(views):
                updated(lambda n=n: cards.nth(n).locator(".id").click())
            return {
                "list": page.eval_on_selector_all("#recs li", "els => els.map(e => e.dataset.category)"),
                "next": page.eval_on_selector_all("#next-category li", "els => els.map(e => e.dataset.category)"),
                "banner": page.get_attribute("#banner", "data-banner"),
            }

        dresses = browse("dresses")
        assert dresses["list"].count("dresses") >= len(dresses["list"]) // 2 + 1, dresses
        assert dresses["next"][0] == "dresses" and dresses["banner"] == "summer-dresses", dresses
        assert page.is_hidden("#exit-offer")  # nothing in the cart yet
        beauty = browse("beauty")
        assert beauty["list"].count("beauty") >= len(beauty["list"]) // 2 + 1, beauty
        assert beauty["next"][0] in ("beauty", "fragrance") and beauty["banner"] == "beauty-week", beauty

        # A cart: the on-site exit offer shows once in the session, with its list.
        updated(lambda: page.locator("#items .card[data-category=beauty] .add").first.click())
        assert page.is_visible("#exit-offer") and page.get_attribute("#exit-offer", "data-rule") == "exit_offer"
        assert page.locator("#offer-items li").count() == 4
        page.screenshot(path=str(tmp_path / "playground.png"))
        page.click("#close-offer")
        updated(lambda: page.locator("#items .card[data-category=beauty] .add").nth(1).click())
        assert page.is_hidden("#exit-offer")
        assert page.locator("#log li", has_text="exit offer").count() == 1

        # Context switches show and travel with the next request.
        listed = page.text_content("#status")
        updated(lambda: page.select_option("#device", "mobile"))
        updated(lambda: page.select_option("#daypart", "20"))
        assert page.get_attribute("body", "data-context") == "mobile · evening"
        assert page.text_content("#context") == "mobile · evening" and page.text_content("#status") != listed
        assert page.locator("#log li", has_text="context: mobile · evening").count() == 1
        browser.close()
    assert errors == []
    assert (tmp_path / "playground.png").stat().st_size > 10_000


def test_the_web_command_refuses_bad_settings_without_a_traceback(tmp_path):
    import subprocess
    import sys

    from intentrec.paths import IMPORT_ROOT

    env = {**os.environ, "PYTHONPATH": str(IMPORT_ROOT)}
    for args, message in (
        (["host=0.0.0.0"], "host=0.0.0.0 is reachable beyond this machine and no web API token is set"),
        (["allow_origins=shop.example.com"], "allow_origins: ['shop.example.com'] are not origins"),
        (["token=abc"], "token= on the command line is visible to every local user"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "intentrec.serving.web", *args], capture_output=True, text=True, env=env, timeout=60
        )
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
