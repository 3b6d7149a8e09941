"""``numaemu dashboards export DIR`` and ``numaemu dashboards push --url URL``.

``push`` creates or updates numaemu's dashboards by uid in a Grafana server
with grafana-client (``POST /api/dashboards/db`` with ``overwrite``), in a
folder found or created by title with ``--folder``; without it a dashboard
already there stays in the folder it is in, a new one goes to General. The token comes from the
GRAFANA_TOKEN environment variable or from ``--token-file``: never from the
command line, where other users could read it.

Exit codes: 0 done; 1 Grafana refused or could not be reached; 2 bad input.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import urlparse

import click

from . import __version__
from .dashboards import all_dashboards, filename, render


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.group("dashboards")
def dashboards_cmd() -> None:
    """numaemu's Grafana dashboards: write them out or push them to Grafana."""


@dashboards_cmd.command("export")
@click.argument("directory", type=click.Path(file_okay=False, path_type=str))
def export_cmd(directory: str) -> None:
    """Write the dashboards as Grafana JSON into DIRECTORY (created if missing)."""
    out = Path(directory)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for uid, dash in all_dashboards().items():
            path = out / filename(uid)
            tmp = path.with_name(path.name + f".tmp{os.getpid()}")
            tmp.write_text(render(dash), encoding="utf-8")
            os.replace(tmp, path)
            click.echo(f"{path}  ({uid})")
    except OSError as exc:
        _fail(f"{directory}: cannot write: {exc.strerror or exc}", 2)


def _grafana_url(ctx: click.Context, param: click.Parameter, url: str) -> str:
    """--url: http(s), a host, a port in 1..65535, no credentials, checked
    before anything is sent (urlparse raises on a bad port or an unclosed
    IPv6 bracket only when asked for them)."""
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise click.BadParameter(f"{url!r}: must not contain spaces or control characters")
    try:
        parsed = urlparse(url)
        host, port = parsed.hostname, parsed.port
    except ValueError as exc:       # "Port out of range 0-65535", "Invalid IPv6 URL"
        raise click.BadParameter(f"{url}: {exc}") from None
    if parsed.scheme not in ("http", "https") or not host:
        raise click.BadParameter(f"{url}: must be an http:// or https:// URL with a host")
    if port == 0:
        raise click.BadParameter(f"{url}: the port must be 1..65535")
    if parsed.username or parsed.password:
        raise click.BadParameter("put no credentials in the URL; use GRAFANA_TOKEN or --token-file")
    return url


def _checked_token(token: str, where: str) -> str:
    """An HTTP header carries the token: printable ASCII, no spaces."""
    if not token:
        _fail(f"{where}: the token is empty", 2)
    if not token.isascii() or any(ch.isspace() or not ch.isprintable() for ch in token):
        _fail(f"{where}: the token must be printable ASCII without spaces "
              "(a Grafana service account token, glsa_...)", 2)
    return token


def _token(token_file: str | None) -> str:
    if token_file is not None:
        try:
            raw = Path(token_file).read_bytes()
        except OSError as exc:
            _fail(f"--token-file {token_file}: cannot read: {exc.strerror or exc}", 2)
        try:
            token = raw.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            _fail(f"--token-file {token_file}: not UTF-8 text (byte {exc.start})", 2)
        if not token:
            _fail(f"--token-file {token_file}: the file is empty", 2)
        return _checked_token(token, f"--token-file {token_file}")
    token = os.environ.get("GRAFANA_TOKEN", "").strip()
    if not token:
        _fail("no Grafana token: set GRAFANA_TOKEN or pass --token-file FILE "
              "(a service account token with the Editor role)", 2)
    return _checked_token(token, "GRAFANA_TOKEN")


@dashboards_cmd.command("push")
@click.option("--url", required=True, metavar="URL", callback=_grafana_url,
              help="Grafana's base URL, e.g. http://127.0.0.1:3000")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=str), default=None, metavar="FILE",
              help="read the API token from FILE (default: the GRAFANA_TOKEN environment variable)")
@click.option("--folder", default=None, metavar="NAME",
              help="put the dashboards in this folder, created if missing (default: a dashboard "
                   "already in Grafana stays in its folder, a new one goes to General)")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=10.0, show_default=True,
              metavar="SECONDS", help="per request")
def push_cmd(url: str, token_file: str | None, folder: str | None, timeout: float) -> None:
    """Create or update the dashboards in Grafana, by uid."""
    if folder is not None and not folder.strip():
        _fail("--folder: must not be empty", 2)
    token = _token(token_file)

    import niquests
    from grafana_client import GrafanaApi
    from grafana_client.client import GrafanaClientError, GrafanaException, GrafanaUnauthorizedError

    api = GrafanaApi.from_url(url, credential=token, timeout=timeout)
    dashboards = all_dashboards()
    try:
        folder_uid = None
        if folder is not None:
            found = [f for f in api.folder.get_all_folders() if f.get("title") == folder]
            if found:
                folder_uid = found[0]["uid"]
            else:
                folder_uid = api.folder.create_folder(folder)["uid"]
                click.echo(f"created folder {folder!r} ({folder_uid})")
        hits = api.search.search_dashboards(type_="dash-db", dashboard_uids=list(dashboards))
        existing = {h.get("uid") for h in hits or []}
        for uid, dash in dashboards.items():
            body = {"dashboard": {**dash, "id": None}, "overwrite": True,
                    "message": f"numaemu {__version__}"}
            kept = ""
            if folder_uid is not None:
                body["folderUid"] = folder_uid
            elif uid in existing:
                # without folderUid Grafana saves into General: a dashboard someone
                # moved into a folder would move back, so it keeps the folder it is in
                meta = (api.dashboard.get_dashboard(uid) or {}).get("meta") or {}
                if meta.get("folderUid"):
                    body["folderUid"] = meta["folderUid"]
                    kept = f" in folder {meta.get('folderTitle') or meta['folderUid']!r}"
            res = api.dashboard.update_dashboard(body)
            verb = "updated" if uid in existing else "created"
            where = res.get("url", "") if isinstance(res, dict) else ""
            click.echo(f"{verb} {uid}" + (f" (version {res['version']})" if isinstance(res, dict)
                                          and "version" in res else "") + kept + (f": {where}" if where else ""))
    except GrafanaUnauthorizedError:
        _fail(f"Grafana at {url} refused the token (401 Unauthorized)", 1)
    except GrafanaClientError as exc:
        _fail(f"Grafana at {url} refused the request: {exc.message}", 1)
    except GrafanaException as exc:
        _fail(f"Grafana at {url}: {exc.message}", 1)
    except niquests.exceptions.RequestException as exc:
        _fail(f"cannot reach Grafana at {url}: {exc}", 1)
