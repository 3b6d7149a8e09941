"""`numaemu dashboards push` against the shape of Grafana's HTTP API.

There is no Grafana server on these machines: a small http.server on
127.0.0.1 implements the calls the push makes (GET /api/folders, POST
/api/folders, GET /api/search, GET /api/dashboards/uid/UID, POST
/api/dashboards/db) as Grafana answers them, and records every request.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
from click.testing import CliRunner

from cluster import __version__
from cluster.cli import main
from cluster.dashboards import UIDS, all_dashboards
from metrics_support import free_port

TOKEN = "glsa_test_token_0123456789"


class FakeGrafana:
    def __init__(self):
        self.requests: list[dict] = []
        self.folders: list[dict] = []
        self.dashboards: dict[str, dict] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _reply(self, status: int, doc) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self, method: str) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                fake.requests.append({"method": method, "path": url.path, "query": parse_qs(url.query),
                                      "auth": self.headers.get("Authorization"), "body": body})
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._reply(401, {"message": "invalid API key"})
                route = (method, url.path)
                if route == ("GET", "/api/folders"):
                    return self._reply(200, [{"id": i + 1, "uid": f["uid"], "title": f["title"]}
                                             for i, f in enumerate(fake.folders)])
                if route == ("POST", "/api/folders"):
                    f = {"uid": f"folder{len(fake.folders) + 1}", "title": body["title"]}
                    fake.folders.append(f)
                    return self._reply(200, {"id": len(fake.folders), **f, "url": f"/dashboards/f/{f['uid']}/"})
                if route == ("GET", "/api/search"):
                    uids = parse_qs(url.query).get("dashboardUIDs", [])
                    return self._reply(200, [{"uid": u, "title": d["dashboard"]["title"], "type": "dash-db"}
                                             for u, d in fake.dashboards.items() if not uids or u in uids])
                if method == "GET" and url.path.startswith("/api/dashboards/uid/"):
                    d = fake.dashboards.get(url.path.rsplit("/", 1)[1])
                    if d is None:
                        return self._reply(404, {"message": "Dashboard not found"})
                    titles = {f["uid"]: f["title"] for f in fake.folders}
                    # a dashboard in General: folderUid "" and folderTitle "General", as Grafana 10 answers
                    return self._reply(200, {"dashboard": d["dashboard"],
                                             "meta": {"version": d["version"], "folderUid": d["folderUid"] or "",
                                                      "folderTitle": titles.get(d["folderUid"], "General")}})
                if route == ("POST", "/api/dashboards/db"):
                    d = body["dashboard"]
                    old = fake.dashboards.get(d["uid"])
                    if old is not None and not body.get("overwrite"):
                        return self._reply(412, {"message": "A dashboard with the same uid already exists",
                                                 "status": "name-exists"})
                    if body.get("folderUid") and body["folderUid"] not in {f["uid"] for f in fake.folders}:
                        return self._reply(400, {"message": "folder not found"})
                    version = (old["version"] + 1) if old else 1
                    fake.dashboards[d["uid"]] = {"dashboard": d, "version": version,
                                                 "folderUid": body.get("folderUid")}
                    return self._reply(200, {"id": 1, "uid": d["uid"], "url": f"/d/{d['uid']}/x",
                                             "status": "success", "version": version, "slug": "x"})
                return self._reply(404, {"message": "Not found"})

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def posts(self, path: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == "POST" and r["path"] == path]


@pytest.fixture
def grafana():
    g = FakeGrafana()
    g.thread.start()
    yield g
    g.server.shutdown()
    g.server.server_close()


def push(*args: str, env: dict | None = None):
    try:
        runner = CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        runner = CliRunner()
    return runner.invoke(main, ["dashboards", "push", *args], env=env or {}, catch_exceptions=False)


def test_push_creates_then_updates_by_uid_in_a_folder(grafana):
    res = push("--url", grafana.url, "--folder", "numaemu", env={"GRAFANA_TOKEN": TOKEN})
    assert res.exit_code == 0, res.output + res.stderr
    assert [r["body"] for r in grafana.posts("/api/folders")] == [{"title": "numaemu"}]
    posts = grafana.posts("/api/dashboards/db")
    assert [p["body"]["dashboard"]["uid"] for p in posts] == list(UIDS)
    built = all_dashboards()
    for p in posts:
        body = p["body"]
        assert body["overwrite"] is True
        assert body["folderUid"] == "folder1"
        assert body["message"] == f"numaemu {__version__}"
        assert body["dashboard"]["id"] is None
        assert body["dashboard"] == {**built[body["dashboard"]["uid"]], "id": None}
    assert {r["auth"] for r in grafana.requests} == {f"Bearer {TOKEN}"}
    for uid in UIDS:
        assert f"created {uid} (version 1)" in res.output

    # again: the folder is found by title, the dashboards are updated in place
    res = push("--url", grafana.url + "/", "--folder", "numaemu", env={"GRAFANA_TOKEN": TOKEN})
    assert res.exit_code == 0, res.output + res.stderr
    assert len(grafana.posts("/api/folders")) == 1
    for uid in UIDS:
        assert f"updated {uid} (version 2)" in res.output
        assert grafana.dashboards[uid]["folderUid"] == "folder1"
    searches = [r for r in grafana.requests if r["path"] == "/api/search"]
    assert searches and sorted(searches[-1]["query"]["dashboardUIDs"]) == sorted(UIDS)


def test_push_without_folder_goes_to_general(grafana):
    res = push("--url", grafana.url, env={"GRAFANA_TOKEN": TOKEN})
    assert res.exit_code == 0, res.output + res.stderr
    assert not [r for r in grafana.requests if r["path"] == "/api/folders"]
    assert all("folderUid" not in p["body"] for p in grafana.posts("/api/dashboards/db"))


def test_push_without_folder_keeps_each_dashboard_in_the_folder_it_is_in(grafana):
    """POST /api/dashboards/db without folderUid saves into General: a
    dashboard someone moved into a folder must stay there when pushed again."""
    res = push("--url", grafana.url, env={"GRAFANA_TOKEN": TOKEN})
    assert res.exit_code == 0, res.output + res.stderr
    moved, *others = UIDS
    grafana.folders.append({"uid": "team", "title": "Team"})
    grafana.dashboards[moved]["folderUid"] = "team"          # moved in Grafana's UI
    grafana.requests.clear()

    res = push("--url", grafana.url, env={"GRAFANA_TOKEN": TOKEN})
    assert res.exit_code == 0, res.output + res.stderr
    assert grafana.dashboards[moved]["folderUid"] == "team" and grafana.dashboards[moved]["version"] == 2
    for uid in others:
        assert grafana.dashboards[uid]["folderUid"] is None and grafana.dashboards[uid]["version"] == 2
    posts = {p["body"]["dashboard"]["uid"]: p["body"] for p in grafana.posts("/api/dashboards/db")}
    assert posts[moved]["folderUid"] == "team"
    assert all("folderUid" not in posts[uid] for uid in others)
    assert f"updated {moved} (version 2) in folder 'Team'" in res.output
    assert not [r for r in grafana.requests if r["path"] == "/api/folders"]

    # --folder still says where they all go
    res = push("--url", grafana.url, "--folder", "numaemu", env={"GRAFANA_TOKEN": TOKEN})
    assert res.exit_code == 0, res.output + res.stderr
    assert {grafana.dashboards[uid]["folderUid"] for uid in UIDS} == {"folder2"}


def test_token_file_is_read_and_wins_over_the_environment(grafana, tmp_path):
    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    res = push("--url", grafana.url, "--token-file", str(f), env={"GRAFANA_TOKEN": "not-this-one"})
    assert res.exit_code == 0, res.output + res.stderr
    assert {r["auth"] for r in grafana.requests} == {f"Bearer {TOKEN}"}


def test_no_token_is_bad_input_and_sends_nothing(grafana):
    res = push("--url", grafana.url, env={"GRAFANA_TOKEN": ""})
    assert res.exit_code == 2
    assert "set GRAFANA_TOKEN or pass --token-file FILE" in res.stderr
    assert grafana.requests == []


def test_there_is_no_token_option(grafana):
    res = push("--url", grafana.url, "--token", TOKEN)
    assert res.exit_code == 2
    assert "No such option" in res.stderr
    help_text = push("--help").output
    assert "--token-file" in help_text and "--token " not in help_text
    assert grafana.requests == []


def test_credentials_in_the_url_are_refused(grafana):
    host = grafana.url.removeprefix("http://")
    res = push("--url", f"http://admin:secret@{host}", env={"GRAFANA_TOKEN": TOKEN})
    assert res.exit_code == 2
    assert "put no credentials in the URL" in res.stderr
    assert grafana.requests == []


def test_a_refused_token_is_an_error(grafana):
    res = push("--url", grafana.url, env={"GRAFANA_TOKEN": "wrong"})
    assert res.exit_code == 1
    assert res.stderr.strip() == f"error: Grafana at {grafana.url} refused the token (401 Unauthorized)"


def test_an_unreachable_grafana_is_an_error():
    url = f"http://127.0.0.1:{free_port()}"
    res = push("--url", url, "--timeout", "3", env={"GRAFANA_TOKEN": TOKEN})
    assert res.exit_code == 1
    assert res.stderr.startswith("error: ") and url in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("url, expected", [
    ("grafana.local:3000", "must be an http:// or https:// URL"),
    ("http://127.0.0.1:99999", "http://127.0.0.1:99999: Port out of range 0-65535"),
    ("http://[::1", "http://[::1: Invalid IPv6 URL"),
    ("http://127.0.0.1:0", "the port must be 1..65535"),
    ("http://127.0.0.1:3000x", "Port could not be cast to integer value"),
    ("http://grafana .local", "must not contain spaces or control characters"),
])
def test_a_bad_url_is_bad_input(url, expected):
    res = push("--url", url, env={"GRAFANA_TOKEN": TOKEN})
    assert res.exit_code == 2, res.stderr
    assert "Invalid value for '--url'" in res.stderr and expected in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("content, expected", [
    (b"\xff\xfeglsa_token", "not UTF-8 text (byte 0)"),
    ("glsa_\u2603".encode(), "the token must be printable ASCII without spaces"),
    (b"glsa_one\nglsa_two", "the token must be printable ASCII without spaces"),
])
def test_a_token_that_cannot_be_sent_is_bad_input_and_sends_nothing(grafana, tmp_path, content, expected):
    f = tmp_path / "token"
    f.write_bytes(content)
    res = push("--url", grafana.url, "--token-file", str(f))
    assert res.exit_code == 2
    assert res.stderr.strip() == f"error: --token-file {f}: {expected}" + \
        ("" if "UTF-8" in expected else " (a Grafana service account token, glsa_...)")
    assert grafana.requests == []
    res = push("--url", grafana.url, env={"GRAFANA_TOKEN": "glsa_\u2603"})
    assert res.exit_code == 2 and res.stderr.startswith("error: GRAFANA_TOKEN: the token must be printable ASCII")
    assert grafana.requests == []
