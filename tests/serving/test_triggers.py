"""Triggers: rules over the intent signals and the profile fire messages once per session, as events arrive,
on SQLite and on a real redis-server; bad rules fail clearly; the command follows a store and resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from intentrec.errors import ConfigError, DataError
from intentrec.serving.bundle import load_bundle
from intentrec.serving.events.store import open_store
from intentrec.serving.recommender import Recommender
from intentrec.serving.request import Query
from intentrec.serving.triggers import Rule, Stock, Triggers, load_rules

T0 = 1_772_000_000_000  # a Wednesday, 06:13 UTC
MINUTE = 60_000
ROOT = Path(__file__).resolve().parents[2]

RULES = [
    {"name": "exit_offer", "action": "exit_offer", "signal": "exit", "above": 0.0, "needs": ["cart"], "k": 4},
    {"name": "cart_push", "action": "cart_push", "signal": "abandon", "above": 0.0, "min_steps": 4, "k": 4},
    {"name": "clienteling", "action": "clienteling", "min_views": 2, "k": 4},
]


@pytest.fixture(scope="module")
def items(bundle):
    """Two categories' most popular items: {"a": [...], "b": [...]}."""
    _, top = load_bundle(bundle).items_by_category()
    names = [c for c in top if len(top[c]) >= 6][:2]
    return {"a": top[names[0]][:6], "b": top[names[1]][:6]}


def scenario(items) -> list[dict]:
    """In time order: loyal customer c1 (home store r1 by two of three store purchases) browses online on d1 and fills a cart;
    an anonymous device d2 fills a cart; customer c3, not a loyalty member, browses what r1 sells."""
    a, b = items["a"], items["b"]
    events = []

    def add(event_id, minutes, item, kind="view", **fields):
        events.append(
            {
                "event_id": event_id,
                "event_time": T0 + int(minutes * MINUTE),
                "item_id": item,
                "event_type": kind,
                **fields,
            }
        )

    store = dict(channel="store", quantity=1)
    web = dict(channel="web", device_type="mobile", referrer="direct", region="r1")
    c1 = dict(customer_id="c1", device_id="d1", session_id="s1", **web)
    add("p1", -3 * 24 * 60, a[0], "store_purchase", customer_id="c1", session_id="pos:1", region="r1", **store)
    # A cart left from an earlier visit: it shows in the messages, but only what a session adds arms its rules.
    add("s0-1", -2.5 * 24 * 60, b[5], "add_to_cart", quantity=1, **{**c1, "session_id": "s0"})  # exit_offer:s0
    add("p2", -2 * 24 * 60, b[0], "store_purchase", customer_id="c1", session_id="pos:2", region="r2", **store)
    add("p3", -1 * 24 * 60, a[3], "store_purchase", customer_id="c1", session_id="pos:3", region="r1", **store)
    add("p4", -1 * 24 * 60 + 5, a[1], "store_purchase", customer_id="c9", session_id="pos:4", region="r1", **store)
    add("p5", -1 * 24 * 60 + 9, a[1], "store_purchase", customer_id="c3", session_id="pos:5", region="r1", **store)
    d2 = dict(device_id="d2", session_id="s2", **web)
    c3 = dict(customer_id="c3", device_id="d3", session_id="s3", **web)
    add("s1-1", 0, a[1], **c1)  # stocked at r1 (c9 bought it there)
    add("s2-1", 0.5, b[1], **d2)
    add("s1-2", 1, b[1], **c1)
    add("s3-1", 1.2, a[1], **c3)
    add("s2-2", 1.5, b[2], **d2)
    add("s1-3", 2, b[1], "add_to_cart", quantity=1, **c1)  # the cart fills: exit_offer:s1
    add("s2-3", 2.5, b[2], "add_to_cart", quantity=1, **d2)  # exit_offer:s2
    add("s3-2", 2.6, a[3], **c3)
    add("s1-4", 3, a[3], **c1)  # 2nd stocked view: clienteling:s1; 4th step with a cart: cart_push:s1
    add("s2-4", 3.5, b[3], **d2)  # cart_push:s2
    add("s1-5", 4, b[4], **c1)
    add("s1-6", 5, a[4], **c1)
    add("s2-5", 5.5, b[4], **d2)
    add("s3-3", 6, b[2], "add_to_cart", quantity=1, **c3)  # exit_offer:s3 (c3 has no e-mail: no cart_push channel)
    return events


@pytest.fixture()
def recommender(bundle, store):
    return Recommender(bundle, profile_store=store)


def replay(triggers: Triggers, store, events) -> list[dict]:
    """Store the events one by one; after each, the triggers read what arrived (as a follow run does)."""
    messages, cursor = [], 0
    for event in events:
        store.append([event])
        arrived = list(store.iter_events(after_seq=cursor))
        cursor = arrived[-1]["seq"]
        fired = triggers.feed(arrived)
        for message in fired:
            message["_parity"] = triggers.recommender.intent(
                [
                    Query(
                        identity=message["shopper"],
                        now=event["event_time"],
                        device_type=event.get("device_type"),
                        referrer=event.get("referrer"),
                        region=event.get("region"),
                    )
                ]
            )[0].info["intent"]
        messages += fired
    return messages


def test_rules_fire_once_per_session_with_their_lists_and_the_signals_of_recommend_by_identity(
    store, recommender, items
):
    store.identify("c1", device_id="d1", traits={"loyalty_member": True, "email": "c1@example.com"})
    store.identify("c3", device_id="d3", traits={"loyalty_member": False})
    events = scenario(items)
    rules = load_rules(RULES)
    messages = replay(Triggers(recommender, rules, store), store, events)
    by_id = {m["message_id"]: m for m in messages}
    assert len(by_id) == len(messages)  # once per session, though later events hold as well
    # s3 has three steps (cart_push needs 4) and c3 is no loyalty member; d2 is anonymous (no home store).
    assert sorted(by_id) == sorted(
        ["exit_offer:s0", "exit_offer:s1", "exit_offer:s2", "exit_offer:s3", "cart_push:s1", "cart_push:s2"]
        + ["clienteling:s1"]
    )
    b = items["b"]
    exit_s1 = by_id["exit_offer:s1"]
    assert exit_s1["event_id"] == "s1-3" and exit_s1["channel"] == "onsite" and exit_s1["to"] == "d1"
    assert exit_s1["shopper"] == "customer:c1"
    assert exit_s1["cart"] == sorted([{"item_id": b[1], "quantity": 1}, {"item_id": b[5], "quantity": 1}], key=str)
    assert len(exit_s1["recommendations"]) == 4 and b[1] not in exit_s1["recommendations"]
    assert exit_s1["recommendation_id"] and exit_s1["model_version"] == recommender.model_version
    assert by_id["exit_offer:s2"]["event_id"] == "s2-3" and by_id["exit_offer:s2"]["shopper"] == "device:d2"
    assert by_id["exit_offer:s3"]["event_id"] == "s3-3"

    push_s1, push_s2 = by_id["cart_push:s1"], by_id["cart_push:s2"]
    assert push_s1["event_id"] == "s1-4" and (push_s1["channel"], push_s1["to"]) == ("email", "c1@example.com")
    assert push_s2["event_id"] == "s2-4" and (push_s2["channel"], push_s2["to"]) == ("push", "d2")
    assert b[2] not in push_s2["recommendations"] and len(push_s2["recommendations"]) == 4

    clienteling = by_id["clienteling:s1"]
    stocked = {items["a"][0], items["a"][1], items["a"][3]}  # what r1 sold
    assert clienteling["event_id"] == "s1-4" and clienteling["store_id"] == "r1" and clienteling["to"] == "r1"
    assert clienteling["browsed"] == [items["a"][3], items["a"][1]] and clienteling["channel"] == "store"
    assert set(clienteling["recommendations"]) <= stocked
    # The signals are the ones recommend-by-identity answers at that moment: one rule builds both requests.
    for message in messages:
        assert message["signals"] is not None and set(message["signals"]) >= {"exit", "abandon"}
        for head in ("purchase", "exit", "abandon"):
            assert message["signals"][head] == pytest.approx(message["_parity"][head], abs=1e-6), message


def test_a_threshold_decides_and_a_stock_file_replaces_observed_sales(recommender, store, items, tmp_path):
    store.identify("c1", device_id="d1", traits={"loyalty_member": True})
    events = scenario(items)
    # The exit probability at s1's cart event, then a rule just above it and one at it.
    probe = replay(Triggers(recommender, load_rules(RULES[:1]), store), store, events)
    p = next(m for m in probe if m["message_id"] == "exit_offer:s1")["signals"]["exit"]
    assert Rule("r", "exit_offer", "exit", above=p).holds_signal({"exit": p})
    assert not Rule("r", "exit_offer", "exit", above=min(1.0, p + 1e-6)).holds_signal({"exit": p})
    assert Rule("r", "exit_offer", "exit", below=p).holds_signal({"exit": p})
    assert not Rule("r", "exit_offer", "exit", above=0.0).holds_signal(None)  # no signals: no signal rule fires

    stock = tmp_path / "stock.csv"
    stock.write_text(f"store_id,item_id\nr1,{items['a'][4]}\nr1,{items['a'][1]}\nr2,{items['a'][3]}\n")
    triggers = Triggers(recommender, load_rules(RULES[2:]), store, Stock(stock))
    messages = triggers.feed(list(store.iter_events()))
    assert [m["message_id"] for m in messages] == ["clienteling:s1"]
    assert messages[0]["event_id"] == "s1-6" and messages[0]["browsed"] == [items["a"][4], items["a"][1]]
    assert set(messages[0]["recommendations"]) <= {items["a"][4], items["a"][1]}


@pytest.mark.parametrize(
    "rule, message",
    [
        (
            {"signal": "exitt", "above": 0.5},
            r"unknown signal 'exitt'; expected one of \['purchase', 'exit', 'abandon'\]",
        ),
        ({"signal": "exit", "above": 1.5}, r"above=1\.5 is not a threshold in \[0, 1\]"),
        ({"signal": "exit", "below": -0.1}, r"below=-0\.1 is not a threshold in \[0, 1\]"),
        ({"signal": "exit"}, r"needs exactly one of `above` or `below`"),
        ({"above": 0.3}, r"\['above'\] without a `signal`"),
        ({"action": "popup"}, r"action 'popup' is not one of \['exit_offer', 'cart_push', 'clienteling'\]"),
        ({"needs": ["basket"]}, r"unknown condition\(s\) \['basket'\]"),
        ({"k": 0}, r"k=0; expected an integer from 1 to 100"),
        ({"treshold": 0.5}, r"unknown key\(s\) \['treshold'\]"),
        ({"needs": "cart"}, r"`needs` must be a list of conditions among \['cart', 'no_purchase'"),
        ({"min_steps": 0}, r"min_steps=0; expected an integer from 1 to 10000"),
    ],
)
def test_bad_rules_fail_naming_the_rule_and_the_fix(rule, message):
    entry = {"name": "r1", "action": "exit_offer", **rule}
    with pytest.raises(ConfigError, match=message) as raised:
        load_rules([entry])
    assert "rule 'r1'" in str(raised.value) or "rule 0" in str(raised.value)


def test_rules_the_model_cannot_serve_and_bad_files_fail_clearly(tmp_path):
    available = {"purchase": None, "exit": None, "abandon": "no session ends with a cart"}
    with pytest.raises(
        ConfigError, match=r"signal 'abandon' is not served by this model \(no session ends with a cart"
    ):
        load_rules([{"name": "push", "action": "cart_push", "signal": "abandon", "above": 0.5}], available)
    with pytest.raises(ConfigError, match="name 'x' is used twice"):
        load_rules([{"name": "x", "action": "exit_offer"}, {"name": "x", "action": "cart_push"}])
    with pytest.raises(ConfigError, match="rules file .*nope.yaml not found"):
        load_rules(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"rule 0: `name` must be a non-empty string without ':', got 'a:b'"):
        load_rules([{"name": "a:b", "action": "exit_offer"}])
    bad = tmp_path / "stock.csv"
    bad.write_text("store,item\nr1,i1\n")
    with pytest.raises(DataError, match=r"expected the columns store_id,item_id"):
        Stock(bad)
    bad.write_text("store_id,item_id\nr1,i1\nr2,\n")
    with pytest.raises(DataError, match=r"stock.csv line 3: store_id and item_id must both be given"):
        Stock(bad)
    shipped = load_rules(ROOT / "conf" / "triggers" / "default.yaml")
    assert [r.action for r in shipped] == ["exit_offer", "cart_push", "clienteling"]
    assert shipped[1].needs == ("cart", "no_purchase") and shipped[2].needs == ("loyalty_member", "home_store_stock")


def _command(*args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "intentrec.serving.triggers", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT.parent)},
        **kwargs,
    )


def test_the_command_follows_a_store_as_events_arrive_and_resumes_without_sending_twice(bundle, items, tmp_path):
    url = f"sqlite:///{tmp_path / 'events.db'}"
    store = open_store(url)
    events = scenario(items)
    first = [e for e in events if e.get("session_id") != "s2"]
    store.append(first)
    rules = tmp_path / "rules.yaml"
    rules.write_text(json.dumps({"rules": RULES[:1]}))  # JSON is YAML
    out = tmp_path / "messages.jsonl"
    args = [f"bundle={bundle}", f"store={url}", f"rules={rules}", f"out={out}", "follow=true", "poll_seconds=0.1"]

    def lines():
        return [json.loads(line)["message_id"] for line in out.read_text().splitlines()] if out.is_file() else []

    def wait_for(count, process):
        deadline = time.monotonic() + 60
        while len(lines()) < count and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.1)
        return lines()

    running = _command(*args)
    try:
        assert wait_for(3, running) == ["exit_offer:s0", "exit_offer:s1", "exit_offer:s3"]
        store.append([e for e in events if e.get("session_id") == "s2"])  # a new session arrives
        assert wait_for(4, running) == ["exit_offer:s0", "exit_offer:s1", "exit_offer:s3", "exit_offer:s2"]
    finally:
        running.send_signal(signal.SIGTERM)
        stdout, stderr = running.communicate(timeout=60)
    assert running.returncode == 0, stderr
    assert json.loads(stdout)["messages"] == 4
    cursor = json.loads((tmp_path / "messages.jsonl.state.json").read_text())["cursor"]
    assert cursor == store.count()

    # A restart (the state's cursor lost as well) resumes: the messages in `out` are never sent again.
    (tmp_path / "messages.jsonl.state.json").unlink()
    store.append([{**events[-1], "event_id": "s3-4", "event_time": events[-1]["event_time"] + MINUTE}])
    again = _command(*args[:-1], "max_seconds=4")
    stdout, stderr = again.communicate(timeout=120)
    assert again.returncode == 0, stderr
    assert json.loads(stdout)["messages"] == 0 and len(lines()) == 4
    store.close()


def test_the_command_refuses_a_bad_rules_file_before_loading_the_model(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - {name: exit, action: exit_offer, signal: exit, above: 5}\n")
    url = f"sqlite:///{tmp_path / 'events.db'}"
    open_store(url).close()
    done = _command(f"bundle={tmp_path}", f"store={url}", f"rules={rules}", f"out={tmp_path / 'o.jsonl'}")
    stdout, stderr = done.communicate(timeout=60)
    assert done.returncode == 2 and "Traceback" not in stderr
    assert "rule 'exit': above=5 is not a threshold in [0, 1]" in stderr
