"""One owner per store, everything else its client: CLI reads go through a running `serve`."""

import json
import subprocess

from shelfsight.search.discovery import RECORD_NAME, ServerRecord, find_server, write_record

from tests.e2e.helpers import run_cli, serving


def _ids(proc: subprocess.CompletedProcess) -> list[str]:
    return [h["id"] for h in json.loads(proc.stdout)]


def test_cli_search_and_stats_answer_through_the_serving_process(built_db, catalog_dir):
    image = catalog_dir / "images" / sorted(p.name for p in (catalog_dir / "images").iterdir())[0]
    query = ("search", "red bag", "--db", built_db, "--image", image, "--filter", "price<=80", "--json")
    direct = run_cli(*query, check=True)
    assert _ids(direct) and "answered by the server" not in direct.stderr
    # fp32 query texts, as the CLI embeds them: the same engine then gives the very same hits
    with serving("serve", "--db", built_db, "--fp32-queries", health="/health"):
        record = find_server(built_db)
        assert record is not None and (built_db / RECORD_NAME).stat().st_mode & 0o777 == 0o600
        through = run_cli(*query, check=True)
        assert f"answered by the server that owns {built_db}: pid {record.pid}" in through.stderr
        assert _ids(through) == _ids(direct)  # the same engine answers, so the same hits
        stats = json.loads(run_cli("stats", "--db", built_db, "--json", check=True).stdout)
        assert stats["count"] == 48 and stats["collection"] == "products"
        other = run_cli("search", "red", "--db", built_db, "--collection", "other")
        assert other.returncode == 1 and "for collection 'products', not 'other'" in other.stderr
    assert not (built_db / RECORD_NAME).exists()  # the server removes its record when it stops
    after = run_cli(*query, check=True)
    assert "answered by the server" not in after.stderr and _ids(after) == _ids(direct)


def test_a_stale_record_is_ignored_and_removed(built_db):
    dead = subprocess.Popen(["true"])
    dead.wait()
    write_record(built_db, ServerRecord(dead.pid, "http://127.0.0.1:9", "products"))
    proc = run_cli("search", "red bag", "--db", built_db, "--json", check=True)
    assert _ids(proc) and "answered by the server" not in proc.stderr
    assert not (built_db / RECORD_NAME).exists()
