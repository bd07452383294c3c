"""
What partners and operators see, end to end: quick checks answered in the
CLOSE, the @results view, duplicate policies, tasks retry and archive prune,
against the real twistd process with OpenSSH sftp and paramiko.
"""

from __future__ import annotations

import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from .server import EPCIS_DIR, Server, require

EPCIS = EPCIS_DIR / "epcis.xml"
BROKEN = b'<?xml version="1.0"?>\n<EPCISDocument>\n  <EPCISBody>\n  <oops>\n'

RULES = """
[[rule]]
name = "EPCIS"
duplicates = "reject"

[[rule.step]]
name = "Well-formed"
class = "quartet_sftpd.steps.WellFormedXML"
check = true

[[rule.step]]
name = "Summary"
class = "quartet_sftpd.steps.EPCISSummary"

[[rule]]
name = "Plain"

[[rule.step]]
name = "Summary"
class = "quartet_sftpd.steps.EPCISSummary"

[[rule]]
name = "Outbox"
duplicates = "skip"

[[rule.step]]
name = "Copy"
class = "quartet_sftpd.steps.CopyToFolder"
parameters = {{ Folder = "{outbox}" }}
"""


@pytest.fixture
def site(tmp_path: Path, client_key: Path) -> Iterator[Server]:
    home = tmp_path / "site"
    home.mkdir()
    (home / "rules.toml").write_text(RULES.format(outbox=home / "outbox"))
    server = Server(home, {"rules": "rules.toml"})
    server.add_user("partner", client_key)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def connect_paramiko(
    server: Server, key: Path
) -> tuple[paramiko.Transport, paramiko.SFTPClient]:
    transport = paramiko.Transport(("127.0.0.1", server.port))
    transport.connect(
        username="partner", pkey=paramiko.Ed25519Key.from_private_key_file(str(key))
    )
    sftp = paramiko.SFTPClient.from_transport(transport)
    assert sftp is not None
    return transport, sftp


def close_with_reply(sftp: paramiko.SFTPClient, path: str, data: bytes) -> None:
    """
    Upload with an explicit CLOSE whose error is raised: paramiko's own
    close() hides the server's answer to CLOSE, as OpenSSH's sftp does.

    @raise IOError: with the server's message, when the CLOSE failed.
    """
    handle = sftp.open(path, "wb")
    handle.write(data)
    handle.flush()
    handle._closed = True  # paramiko must not send a second CLOSE
    sftp._request(paramiko.sftp.CMD_CLOSE, handle.handle)


def test_check_failure_is_told_in_the_close_and_shown_in_results(
    site: Server, client_key: Path, tmp_path: Path
) -> None:
    """
    A broken document fails its CLOSE with the check's reason (lftp prints
    the server's sentence; OpenSSH sftp prints its own "Failure" and exits
    1); the bytes are archived; @results shows one FINISHED and one FAILED
    file, and the FAILED one can be downloaded.
    """
    broken = tmp_path / "broken.xml"
    broken.write_bytes(BROKEN)
    result = site.sftp("partner", client_key, f"put {EPCIS} EPCIS/\n")
    assert result.returncode == 0, result.stderr

    options = " ".join(site.ssh_options(client_key))
    connect = (
        f'set sftp:connect-program "ssh -a -x {options}"; '
        f"open -u partner, sftp://127.0.0.1:{site.port}; cd EPCIS; put {broken}"
    )
    lftp = subprocess.run(
        [require("lftp"), "-c", connect], capture_output=True, text=True, timeout=60
    )
    assert (
        "Access failed: EPCIS rejected broken.xml: not well-formed XML at line 5"
        in lftp.stderr
    ), lftp.stderr

    result = site.sftp("partner", client_key, f"put {broken} EPCIS/again.xml\n")
    assert result.returncode == 1
    assert 'close remote "/EPCIS/again.xml": Failure' in result.stderr or (
        "close remote: Failure" in result.stderr
    )

    transport, sftp = connect_paramiko(site, client_key)
    try:
        with pytest.raises(IOError) as refused:
            close_with_reply(sftp, "/EPCIS/third.xml", BROKEN)
        assert "EPCIS rejected third.xml: not well-formed XML" in str(refused.value)
    finally:
        transport.close()

    contents = sorted(p.read_bytes() for p in site.archived())
    assert contents == sorted([EPCIS.read_bytes()] + [BROKEN] * 3)

    site.wait_for_tasks(4)
    result = site.sftp("partner", client_key, "ls -l EPCIS/@results\n")
    assert result.returncode == 0, result.stderr
    lines = [ln for ln in result.stdout.splitlines() if ".txt" in ln]
    assert len(lines) == 4
    assert any("FINISHED epcis.xml.txt" in ln for ln in lines)
    assert any("FAILED broken.xml.txt" in ln for ln in lines)

    download = tmp_path / "got"
    download.mkdir()
    result = site.sftp(
        "partner", client_key, f"get EPCIS/@results/*FAILED?broken* {download}/\n"
    )
    assert result.returncode == 0, result.stderr
    [text] = [p.read_text() for p in download.iterdir()]
    assert "Status:    FAILED" in text
    assert "not well-formed XML at line 5" in text


def test_duplicates_rejected_skipped_and_accepted(
    site: Server, client_key: Path
) -> None:
    transport, sftp = connect_paramiko(site, client_key)
    try:
        sftp.put(str(EPCIS), "/EPCIS/first.xml")
        with pytest.raises(IOError) as refused:
            close_with_reply(sftp, "/EPCIS/again.xml", EPCIS.read_bytes())
        assert "EPCIS rejected again.xml: the same file was uploaded before, as " in (
            str(refused.value)
        )
        assert "first.xml at " in str(refused.value)
        (site.home / "outbox").mkdir()
        sftp.put(str(EPCIS), "/Outbox/one.xml")
        sftp.put(str(EPCIS), "/Outbox/two.xml")
        sftp.put(str(EPCIS), "/Plain/p1.xml")
        sftp.put(str(EPCIS), "/Plain/p2.xml")
    finally:
        transport.close()
    tasks = {t["file"]: t for t in site.wait_for_tasks(6)}
    assert tasks["again.xml"]["status"] == "DUPLICATE"
    assert tasks["two.xml"]["status"] == "DUPLICATE"
    assert tasks["one.xml"]["status"] == "FINISHED"
    # The default policy, accept: both run, and the second says it repeats.
    plain = {name: site.task(tasks[name]["name"]) for name in ("p1.xml", "p2.xml")}
    assert plain["p1.xml"]["status"] == plain["p2.xml"]["status"] == "FINISHED"
    assert any(
        "The same bytes were uploaded to Plain before, as p1.xml" in m["text"]
        for m in plain["p2.xml"]["messages"]
    )
    assert sorted(p.name for p in (site.home / "outbox").iterdir()) == ["one.xml"]
    assert len(site.archived("EPCIS")) == 2 and len(site.archived("Outbox")) == 2


def test_retry_reruns_a_failed_task_and_prune_cleans_up(
    site: Server, client_key: Path
) -> None:
    """
    A task that failed because its outbox was missing finishes when retried
    after the operator created it; prune then removes archive and tasks.
    """
    result = site.sftp("partner", client_key, f"put {EPCIS} Outbox/late.xml\n")
    assert result.returncode == 0, result.stderr
    [task] = site.wait_for_tasks(1)
    assert task["status"] == "FAILED"

    (site.home / "outbox").mkdir()
    result = site.cli("tasks", "retry", task["name"], "--wait", "20")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Status" in result.stdout and "FINISHED" in result.stdout
    assert (site.home / "outbox" / "late.xml").read_bytes() == EPCIS.read_bytes()
    messages = [m["text"] for m in site.task(task["name"])["messages"]]
    assert "Queued again by an operator (tasks retry)." in messages

    # Prune refuses an age of zero; let the upload become a second old.
    time.sleep(1.1)
    result = site.cli("archive", "prune", "--older-than", "1s", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "Would remove 1 archived files" in result.stdout
    assert len(site.archived("Outbox")) == 1
    result = site.cli("archive", "prune", "--older-than", "1s")
    assert "Removed 1 archived files" in result.stdout and "1 tasks" in result.stdout
    assert site.archived("Outbox") == []
    assert site.tasks() == []


def scrape(url: str) -> dict[str, float]:
    """
    The samples of a Prometheus text page, by name with labels.
    """
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_metrics_move_with_logins_uploads_and_tasks(
    tmp_path: Path, client_key: Path
) -> None:
    """
    The metrics endpoint, scraped over HTTP, counts logins by outcome,
    completed and aborted uploads with their bytes, and tasks by status.
    """
    home = tmp_path / "metrics"
    home.mkdir()
    server = Server(home, {"metrics_listen": "tcp:0:interface=127.0.0.1"})
    server.add_user("partner", client_key)
    server.start()
    try:
        port = re.search(r"metrics at http://[\d.]+:(\d+)/metrics", server.log())
        assert port, server.log()
        url = f"http://127.0.0.1:{port.group(1)}/metrics"
        before = scrape(url)
        assert (
            before.get(
                'quartet_sftpd_uploads_total{outcome="completed",rule="EPCIS"}', 0
            )
            == 0
        )

        result = server.sftp("partner", client_key, f"put {EPCIS} EPCIS/\n")
        assert result.returncode == 0, result.stderr
        server.wait_for_tasks(1)
        # A login naming a user who does not exist counts as refused.
        assert server.sftp("nobody", client_key, "ls\n").returncode != 0

        after = scrape(url)
        assert (
            after['quartet_sftpd_uploads_total{outcome="completed",rule="EPCIS"}'] == 1
        )
        assert (
            after['quartet_sftpd_upload_bytes_total{rule="EPCIS"}']
            == EPCIS.stat().st_size
        )
        assert after['quartet_sftpd_tasks_total{rule="EPCIS",status="FINISHED"}'] == 1
        assert after['quartet_sftpd_logins_total{outcome="accepted"}'] >= 1
        assert after['quartet_sftpd_logins_total{outcome="refused"}'] >= 1
        assert after['quartet_sftpd_rule_duration_seconds_count{rule="EPCIS"}'] == 1
    finally:
        server.stop()
