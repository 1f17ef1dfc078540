"""The HTTP API against a real coordinator: every route, auth, bad input, paging, the event
stream, and the metrics as Prometheus' own parser reads them."""

import json
import os
import threading
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from conftest import wait_for

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def test_every_route_of_the_openapi_description_exists_and_it_is_served_as_in_the_repo(http):
    status, served, _ = http.request("GET", "/api/openapi.json", token=False)
    assert status == 200
    with open(os.path.join(ROOT, "docs", "openapi.json")) as f:
        assert served == json.load(f)
    task = http.ok("POST", "/api/tasks", {"tasks": [{"sleep": "1ms"}], "play": False}, status=201)[0]
    fill = {"{id}": task["id"], "{key}": "k", "{action}": "pause"}
    for path, methods in served["paths"].items():
        for method in methods:
            concrete = path
            for k, v in fill.items():
                concrete = concrete.replace(k, v)
            if path == "/api/events":
                continue  # a stream: its own test below
            status, body, _ = http.request(method.upper(), concrete,
                                           {"tasks": [{"sleep": "1ms"}]} if method == "post" and path == "/api/tasks" else None)
            not_route = isinstance(body, dict) and body.get("error", {}).get("kind") == "not_found"
            assert not not_route and status < 500, (method, concrete, status, body)
    # And a route that is not described is not served.
    status, body, _ = http.request("GET", "/api/nothing")
    assert status == 404 and body["error"]["kind"] == "not_found"


def test_the_token_is_required_as_a_bearer_header_or_in_the_query(http):
    status, body, headers = http.request("GET", "/api/summary", token=False)
    assert status == 401 and body["error"]["kind"] == "bad_token" and "token" in body["error"]["message"]
    assert headers["WWW-Authenticate"] == "Bearer"
    status, body, _ = http.request("GET", "/api/summary", token="wrong")
    assert status == 401 and body["error"]["message"] == "wrong token"
    status, _, _ = http.request("GET", "/metrics", token=False)
    assert status == 401
    status, body, _ = http.request("GET", "/api/summary?token=" + http.token, token=False)
    assert status == 200 and "counts" in body
    status, page, _ = http.request("GET", "/", token=False)
    assert status == 200 and "<title>tatzelwurm</title>" in page


def test_tasks_are_added_listed_in_pages_shown_and_changed(http):
    added = http.ok("POST", "/api/tasks", {"tasks": [{"command": ["true"], "name": f"t{i}", "tags": [f"i={i % 3}"]}
                                                    for i in range(25)], "play": False}, status=201)
    assert [a["number"] for a in added] == list(range(1, 26))
    assert len({a["batch"] for a in added}) == 1
    # Pages of ten, newest first, each task once, the last page says so.
    seen, before = [], None
    while True:
        page = http.ok("GET", "/api/tasks?limit=10" + (f"&before={before}" if before else ""))
        seen += [t["id"] for t in page["tasks"]]
        before = page["next"]
        if before is None:
            break
    assert seen == [a["id"] for a in reversed(added)]
    assert page["counts"]["created"] == 25
    # Filters: a tag, a state list, a name; `actionwurm --json` shapes.
    tagged = http.ok("GET", "/api/tasks?tag=i=1&limit=100")["tasks"]
    assert len(tagged) == 8 and all("i=1" in t["tags"] for t in tagged)
    assert http.ok("GET", "/api/tasks?state=ready,running")["tasks"] == []
    named = http.ok("GET", "/api/tasks?name=t7")["tasks"]
    assert [t["id"] for t in named] == [added[7]["id"]]
    # The shapes of `actionwurm --json`, field for field.
    assert json.loads(http.cli("task", "list", "--json", "--filter", "all", "--tag", "i=1")) == tagged
    # One task with its attempts; by number too.
    shown = http.ok("GET", f"/api/tasks/{added[0]['id']}")
    assert shown["state"] == "created" and shown["payload"]["argv"] == ["true"] and shown["attempts"] == []
    assert http.ok("GET", "/api/tasks/1")["id"] == added[0]["id"]
    # Changes, durable when answered.
    assert http.ok("POST", f"/api/tasks/{added[0]['id']}/pause") == {"changed": [added[0]["id"]]}
    assert http.ok("GET", f"/api/tasks/{added[0]['id']}")["state"] == "paused"
    assert http.ok("POST", f"/api/tasks/{added[0]['id']}/kill")["changed"] == [added[0]["id"]]
    assert http.ok("POST", f"/api/tasks/{added[0]['id']}/retry")["changed"] == [added[0]["id"]]
    assert http.ok("GET", f"/api/tasks/{added[0]['id']}")["state"] == "ready"
    assert http.ok("DELETE", f"/api/tasks/{added[1]['id']}")["changed"] == [added[1]["id"]]
    status, body, _ = http.request("GET", f"/api/tasks/{added[1]['id']}")
    assert status == 404 and body["error"]["kind"] == "unknown_id"


def test_bad_input_gets_a_clear_error_and_changes_nothing(http):
    http.ok("POST", "/api/tasks", {"tasks": [{"sleep": "1ms"}], "play": False}, status=201)
    before = http.ok("GET", "/api/summary")["counts"]
    cases = [
        ("POST", "/api/tasks", b"{not json", 400, "invalid_request"),
        ("POST", "/api/tasks", {"tasks": []}, 400, "invalid_request"),
        ("POST", "/api/tasks", {"tasks": [{"sleep": "1ms", "colour": "red"}]}, 400, "invalid_request"),
        ("POST", "/api/tasks", {"tasks": [{"command": []}]}, 400, "invalid_request"),
        ("POST", "/api/tasks", {"tasks": [{"sleep": "1ms", "tags": ["nokey"]}]}, 400, "invalid_request"),
        ("GET", "/api/tasks?state=sleeping", None, 400, "invalid_request"),
        ("GET", "/api/tasks?limit=0", None, 400, "invalid_request"),
        ("GET", "/api/tasks?limit=ten", None, 400, "invalid_request"),
        ("GET", "/api/tasks?before=xyz", None, 400, "invalid_request"),
        ("GET", "/api/tasks?stat=ready", None, 400, "invalid_request"),
        ("GET", "/api/tasks/ffffffff", None, 404, "unknown_id"),
        ("POST", "/api/tasks/1/explode", None, 400, "invalid_request"),
        ("POST", "/api/tasks/1/retry", None, 409, "invalid_state"),
        ("GET", "/api/events?colour=red", None, 400, "invalid_request"),
    ]
    for method, path, body, status, kind in cases:
        got, answer, _ = http.request(method, path, body)
        assert (got, answer["error"]["kind"]) == (status, kind), (method, path, got, answer)
        assert answer["error"]["message"]
    assert http.ok("GET", "/api/summary")["counts"] == before


def test_workers_queues_summary_and_breakdown_follow_real_work(http):
    http.worker("--slots", "4", "--name", "web-w")
    http.ok("POST", "/api/tasks", {"tasks": [{"command": ["true"], "tags": ["project=a"], "queue": "q1"} for _ in range(5)]
                                   + [{"command": ["false"], "tags": ["project=b"]}]}, status=201)
    wait_for(lambda: http.ok("GET", "/api/summary")["counts"]["completed"] == 5
             and http.ok("GET", "/api/summary")["counts"]["failed"] == 1, what="the tasks to end")
    summary = http.ok("GET", "/api/summary")
    assert summary["workers_connected"] == 1 and summary["finished_last_minute"] == 6
    workers = http.ok("GET", "/api/workers")
    assert [w["name"] for w in workers] == ["web-w"] and workers[0]["state"] == "active"
    queues = {q["name"]: q for q in http.ok("GET", "/api/queues")}
    assert queues["q1"]["counts"]["completed"] == 5 and queues["default"]["counts"]["failed"] == 1
    b = http.ok("GET", "/api/breakdown/project")
    assert b["values"]["a"]["completed"] == 5 and b["values"]["b"]["failed"] == 1


def test_the_event_stream_sends_changes_live_with_subscribes_filters(http):
    events, ready = [], threading.Event()

    def read(query, into):
        req = urllib.request.Request(http.base + "/api/events?" + query,
                                     headers={"Authorization": "Bearer " + http.token})
        with urllib.request.urlopen(req, timeout=30) as r:
            ready.set()
            kind = None
            for raw in r:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind == "task":
                    into.append(json.loads(line[6:]))
                    if into[-1]["state"] == "completed":
                        return

    only_completed = []
    for q, into in (("tag=watch=yes", events), ("tag=watch=yes&state=completed", only_completed)):
        ready.clear()
        threading.Thread(target=read, args=(q, into), daemon=True).start()
        assert ready.wait(10)
    http.ok("POST", "/api/tasks", {"tasks": [{"command": ["true"]}]}, status=201)  # not watched
    # Long enough to be seen running: the worker sends `started` 20 ms after the start, and
    # leaves it out for a task that has ended by then (a `true` usually has).
    task = http.ok("POST", "/api/tasks", {"tasks": [{"command": ["sleep", "0.3"], "tags": ["watch=yes"]}]},
                   status=201)[0]
    quick = http.ok("POST", "/api/tasks", {"tasks": [{"command": ["true"]}]}, status=201)[0]
    http.worker()
    wait_for(lambda: events and events[-1]["state"] == "completed", what="the completed event")
    assert {e["id"] for e in events} == {task["id"]}
    assert [e["state"] for e in events] == ["ready", "assigned", "running", "completed"]
    wait_for(lambda: only_completed, what="the filtered stream")
    assert [e["state"] for e in only_completed] == ["completed"]
    # With a `started` or without, its times are in order.
    wait_for(lambda: http.ok("GET", f"/api/tasks/{quick['id']}")["state"] == "completed", what="the quick task")
    shown = http.ok("GET", f"/api/tasks/{quick['id']}")
    assert shown["times"]["assigned"] <= shown["times"]["running"] <= shown["times"]["ended"], shown["times"]


def test_metrics_parse_with_prometheus_own_parser_and_match_the_counts(http):
    http.worker("--slots", "2")
    http.ok("POST", "/api/tasks", {"tasks": [{"command": ["true"], "queue": "m"} for _ in range(4)]}, status=201)
    wait_for(lambda: http.ok("GET", "/api/summary")["counts"]["completed"] == 4, what="the tasks to end")
    status, text, headers = http.request("GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    counts = http.ok("GET", "/api/summary")["counts"]
    by_state = {s.labels["state"]: s.value for s in families["tatzelwurm_tasks"].samples}
    assert by_state == {k: float(v) for k, v in counts.items()}
    queue = {(s.labels["queue"], s.labels["state"]): s.value for s in families["tatzelwurm_queue_tasks"].samples}
    assert queue[("m", "completed")] == 4.0
    dispatched = families["tatzelwurm_tasks_dispatched"].samples[0].value
    assert dispatched == 4.0, text
    assert families["tatzelwurm_tasks_finished"].samples[0].value == 4.0
    commits = {s.name: s.value for s in families["tatzelwurm_store_commit_seconds"].samples}
    assert commits["tatzelwurm_store_commit_seconds_count"] > 0
    workers = {s.labels["state"]: s.value for s in families["tatzelwurm_workers"].samples}
    assert workers["connected"] == 1.0
    conns = {s.labels["role"]: s.value for s in families["tatzelwurm_connections"].samples}
    assert conns["worker"] == 1.0
    assert families["tatzelwurm_resident_memory_bytes"].samples[0].value > 1e6
