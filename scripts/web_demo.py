"""The playground on a bundle: Triton, the event collector and the web API on loopback, for a person or a screenshot.

    python scripts/web_demo.py --bundle artifacts/runs/demo/bundle --serve-seconds 600   # open the printed URL
    python scripts/web_demo.py --bundle artifacts/runs/demo/bundle --screenshot docs/playground.png

The repository serves recommend, intent and banners (conf/banners/synthetic.yaml) and reads a fresh SQLite
event store; the web API checks the shipped trigger rules' exit offer (or `--rules`). With `--screenshot` a
headless Chromium (Debian's chromium, driven by Playwright) views five dresses, five beauty items and adds one
to the cart, prints what the page shows after each run and saves the page.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def drive(url: str, screenshot: Path, chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.goto(url + "/")
        page.wait_for_selector("body[data-ready=true]", timeout=30_000)

        def updated(action) -> None:
            before = int(page.get_attribute("body", "data-updates"))
            action()
            page.wait_for_function(f"Number(document.body.dataset.updates) > {before}", timeout=30_000)

        for category in ("dresses", "beauty"):
            page.click(f"#categories button[data-category={category}]")
            page.wait_for_selector(f"#items .card[data-category={category}]")
            cards = page.locator(f"#items .card[data-category={category}]")
            for n in range(5):
                updated(lambda n=n, cards=cards: cards.nth(n).locator(".id").click())
            shown = {
                "list": page.eval_on_selector_all("#recs li", "els => els.map(e => e.dataset.category)"),
                "next_category": page.eval_on_selector_all(
                    "#next-category li", "els => els.map(e => e.dataset.category)"
                ),
                "banner": page.get_attribute("#banner", "data-banner"),
            }
            print(f"after 5 {category}: {json.dumps(shown)}", flush=True)
        updated(lambda: page.locator("#items .card[data-category=beauty] .add").first.click())
        print(f"after an add to cart: exit offer shown {page.is_visible('#exit-offer')}", flush=True)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(screenshot))
        browser.close()
    print(f"screenshot written to {screenshot}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "artifacts" / "runs" / "demo" / "bundle")
    parser.add_argument("--rules", type=Path, default=REPO / "conf" / "triggers" / "default.yaml")
    parser.add_argument("--work", type=Path, default=REPO / "artifacts" / "web_demo")
    parser.add_argument("--screenshot", type=Path, default=None)
    parser.add_argument("--serve-seconds", type=float, default=0.0)
    args = parser.parse_args()
    if not (args.bundle / "manifest.json").is_file():
        raise SystemExit(f"error: no bundle at {args.bundle}; run ./scripts/demo.sh first.")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if args.screenshot and chromium is None:
        raise SystemExit("error: --screenshot needs chromium (apt-get install chromium)")

    from intentrec.serving.events.local import Collector, WebApi
    from intentrec.serving.repository import ServingOptions, build
    from intentrec.serving.server import TritonServer

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    url = f"sqlite:///{args.work / 'events.db'}"
    options = ServingOptions(profile_store=url, banners=str(REPO / "conf" / "banners" / "synthetic.yaml"))
    repository = build(args.bundle, args.work / "repository", options)
    with (
        TritonServer(repository, None, None, None, log_file=args.work / "server.log") as server,
        Collector(url, log_file=args.work / "collector.log") as collector,
        WebApi(
            server.grpc_url,
            log_file=args.work / "web.log",
            collector=collector.url,
            bundle=str(args.bundle),
            rules=str(args.rules),
        ) as web,  # fmt: skip
    ):
        print(f"[web] playground at {web.url}/ (Triton {server.grpc_url}, collector {collector.url})", flush=True)
        if args.screenshot:
            drive(web.url, args.screenshot, chromium)
        if args.serve_seconds > 0:
            time.sleep(args.serve_seconds)


if __name__ == "__main__":
    main()
