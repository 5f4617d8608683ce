"""The command line, hardened: no resubmission without --resume, one job per output at a time,
private files, a stop on a refusal that will not change, whole-job reports on resume,
honest `run --timeout`, `--version`, the progress bar and the summary table."""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from rich.console import Console

import zapier_async as za
from zapier_async.cli import _output, main
from zapier_async.testing import FakeZapier

PYTHON = sys.executable
REPO = Path(__file__).resolve().parent.parent


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeZapier]:
    async with FakeZapier(seed=1, record_requests=False) as server:
        yield server


@pytest.fixture(autouse=True)
def no_forced_terminal(monkeypatch):
    """rich honours these: a developer's shell must not change what the tests see."""
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def env(monkeypatch, fake):
    monkeypatch.setenv("ZAPIER_TOKEN", "cli-token")
    monkeypatch.setenv("ZAPIER_BASE_URL", fake.url)


def write_requests(path: Path, n: int, **extra: Any) -> None:
    with path.open("w") as fh:
        for i in range(n):
            fh.write(
                json.dumps(
                    {"action": "core:x", "authentication": None, "inputs": {"i": i, **extra}}
                )
                + "\n"
            )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def last_by_line(path: Path) -> dict[int, dict[str, Any]]:
    """The outcome of each line: the last record written for it."""
    return {r["line"]: r for r in read_jsonl(path)}


async def cli(*argv: str, timeout: float = 60) -> int:
    """`main(argv)` in a thread (it runs its own event loop), while ours serves the fake."""
    return await asyncio.wait_for(asyncio.to_thread(main, list(argv)), timeout)


def journal_of(out: Path) -> Path:
    return out.with_name(out.name + ".journal")


def write_journal(out: Path, entries: list[dict[str, Any]]) -> None:
    journal_of(out).write_text("".join(json.dumps(e) + "\n" for e in entries))


async def create_runs(fake: FakeZapier, inputs: list[dict[str, Any]]) -> list[str]:
    """Runs that exist at the emulator, as a job killed after their creates left them."""
    async with za.ZapierClient(auth=za.BearerToken("t"), base_url=fake.url) as client:
        handles = [await client.run("core:x", authentication=None, inputs=i) for i in inputs]
        for handle in handles:
            handle.cancel()
    return [h.id for h in handles]


# --- A: a journal that exists means "resume or refuse" -----------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("output_state", ["missing", "empty"])
async def test_a_killed_job_run_again_without_resume_is_refused_and_sends_nothing(
    env, fake, tmp_path, capsys, output_state
):
    """SIGKILL before any run ended: accepted runs in the journal, no outcome written."""
    requests = tmp_path / "in.jsonl"
    write_requests(requests, 6)
    out = tmp_path / "out.jsonl"
    ids = await create_runs(fake, [{"i": 0}, {"i": 1}, {"i": 2}])
    entries: list[dict[str, Any]] = []
    for line, run_id in enumerate(ids, start=1):
        entries += [
            {"line": line, "event": "sending"},
            {"line": line, "event": "submitted", "run_id": run_id},
        ]
    write_journal(out, entries)
    journal_before = journal_of(out).read_text()
    if output_state == "empty":
        out.write_text("")
    created = fake.stats.runs_created
    capsys.readouterr()

    code = await cli("bulk", str(requests), "--output", str(out), "--no-progress")

    assert code == 2
    err = capsys.readouterr().err
    assert "--resume" in err
    assert "journal" in err
    assert fake.stats.runs_created == created  # 0 new creates
    assert fake.stats.duplicate_submissions == 0
    assert journal_of(out).read_text() == journal_before  # not truncated


@pytest.mark.asyncio
async def test_a_second_invocation_on_the_same_files_is_refused_while_the_first_runs(
    monkeypatch, tmp_path, capsys
):
    n = 5
    async with FakeZapier(seed=2, durations=math.inf, record_requests=False) as fake:
        monkeypatch.setenv("ZAPIER_TOKEN", "t")
        monkeypatch.setenv("ZAPIER_BASE_URL", fake.url)
        requests = tmp_path / "in.jsonl"
        write_requests(requests, n)
        out = tmp_path / "out.jsonl"
        argv = ["bulk", str(requests), "--output", str(out), "--no-progress"]
        first = asyncio.create_task(cli(*argv))

        def submitted() -> int:
            if not journal_of(out).exists():
                return 0
            return sum(e["event"] == "submitted" for e in read_jsonl(journal_of(out)))

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while submitted() < n:  # every run accepted, none ended (they wait for complete())
            assert loop.time() < deadline, "the first job did not submit its runs"
            await asyncio.sleep(0.01)
        capsys.readouterr()

        # The same command again: refused (the journal exists), nothing sent.
        assert await cli(*argv, timeout=30) == 2
        assert "--resume" in capsys.readouterr().err
        # With --resume while the first still runs: refused by the lock, nothing read or sent.
        assert await cli(*argv, "--resume", timeout=30) == 2
        err = capsys.readouterr().err
        assert "another" in err
        assert "in use" in err
        assert fake.stats.runs_created == n

        for run in fake.runs():
            fake.complete(run.id)
        assert await first == 0
        stats = fake.stats
    assert stats.runs_created == n
    assert stats.duplicate_submissions == 0
    assert sorted(r["line"] for r in read_jsonl(out)) == list(range(1, n + 1))


@pytest.mark.asyncio
async def test_output_and_journal_are_created_private(env, tmp_path):
    requests = tmp_path / "in.jsonl"
    write_requests(requests, 3)
    out = tmp_path / "out.jsonl"
    old = os.umask(0o022)
    try:
        assert await cli("bulk", str(requests), "--output", str(out), "--no-progress") == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert stat.S_IMODE(journal_of(out).stat().st_mode) == 0o600


# --- B: a refusal that will not change stops the job --------------------------------------------


@pytest.mark.asyncio
async def test_bulk_with_a_wrong_token_stops_sending_and_says_so_once(
    monkeypatch, tmp_path, capsys
):
    n, concurrency = 1000, 20
    async with FakeZapier(seed=3, tokens={"good"}, record_requests=False) as fake:
        monkeypatch.setenv("ZAPIER_TOKEN", "wrong")
        monkeypatch.setenv("ZAPIER_BASE_URL", fake.url)
        requests = tmp_path / "in.jsonl"
        write_requests(requests, n)
        out = tmp_path / "out.jsonl"
        code = await cli(
            "bulk", str(requests), "--output", str(out), "--concurrency", str(concurrency)
        )
        creates = fake.stats.requests_by_endpoint["create"]
    assert code == 3
    assert 1 <= creates <= concurrency
    records = read_jsonl(out)
    assert sorted(r["line"] for r in records) == list(range(1, n + 1))  # none dropped
    assert all(r["error"]["type"] == "AuthenticationError" for r in records)
    err = capsys.readouterr().err
    assert err.count("stopped sending") == 1
    assert "--retry-failed" in err


# --- C: a resumed job reports the whole job; --retry-failed ----------------------------------


@pytest.mark.asyncio
async def test_a_resumed_job_reports_the_whole_job_and_retry_failed_reruns_the_failed_lines(
    monkeypatch, tmp_path, capsys
):
    n = 8
    async with FakeZapier(seed=4, tokens={"good"}, record_requests=False) as fake:
        monkeypatch.setenv("ZAPIER_BASE_URL", fake.url)
        requests = tmp_path / "in.jsonl"
        write_requests(requests, n)
        out = tmp_path / "out.jsonl"
        argv = ["bulk", str(requests), "--output", str(out), "--no-progress", "--json"]

        monkeypatch.setenv("ZAPIER_TOKEN", "wrong")
        assert await cli(*argv) == 3
        capsys.readouterr()

        # The right token, --resume alone: nothing to send, but the job as a whole failed.
        monkeypatch.setenv("ZAPIER_TOKEN", "good")
        assert await cli(*argv, "--resume") == 3
        summary = json.loads(capsys.readouterr().err.splitlines()[-1])
        assert summary["exit_code"] == 3
        assert (summary["lines"], summary["succeeded"], summary["failed"]) == (n, 0, n)
        assert summary["retryable"] == n
        assert fake.stats.runs_created == 0

        # --retry-failed re-runs them.
        assert await cli(*argv, "--resume", "--retry-failed") == 0
        summary = json.loads(capsys.readouterr().err.splitlines()[-1])
        assert (summary["lines"], summary["succeeded"], summary["failed"]) == (n, n, 0)
        assert fake.stats.runs_created == n

        # Done: resuming again sends nothing and still reports the whole, successful job.
        assert await cli(*argv, "--resume", "--retry-failed") == 0
        summary = json.loads(capsys.readouterr().err.splitlines()[-1])
        assert (summary["lines"], summary["succeeded"], summary["failed"]) == (n, n, 0)
        stats = fake.stats
    assert stats.runs_created == n
    assert stats.duplicate_submissions == 0
    outcome = last_by_line(out)
    assert sorted(outcome) == list(range(1, n + 1))
    assert all(r["ok"] for r in outcome.values())


@pytest.mark.asyncio
async def test_retry_failed_never_resends_a_line_whose_create_may_have_reached_zapier(
    env, fake, tmp_path, capsys
):
    """Each kind of failed line, laid out by hand in the files earlier invocations left."""
    requests = tmp_path / "in.jsonl"
    write_requests(requests, 6)
    out = tmp_path / "out.jsonl"
    # Line 2's run is still running (its outcome could not be read); line 4's run ended
    # with an error.
    line2, line4 = await create_runs(fake, [{"i": 1}, {"i": 3, "__fake__": {"status": "error"}}])
    created = fake.stats.runs_created

    def failed(line: int, exit_code: int, type_: str, run_id: str | None, status: str | None):
        error = {"type": type_, "code": None, "message": "x", "exit_code": exit_code}
        return {
            "line": line,
            "key": None,
            "ok": False,
            "run_id": run_id,
            "status": status,
            "results": None,
            "errors": [],
            "error": error,
        }

    records = [
        failed(1, 5, "OutcomeUnknownError", None, None),  # may exist: never re-sent
        failed(2, 5, "RunDetachedError", line2, "waiting"),  # accepted: followed by id
        failed(3, 3, "AuthenticationError", None, None),  # refused: re-sent
        failed(4, 1, "RunFailedError", line4, "error"),  # ended with an error: re-run
        failed(5, 3, "AuthenticationError", None, None),  # refused, then retried (below)
        {
            "line": 6,
            "key": None,
            "ok": True,
            "run_id": "r6",
            "status": "success",
            "results": [],
            "errors": [],
            "error": None,
        },
    ]
    out.write_text("".join(json.dumps(r) + "\n" for r in records))
    write_journal(
        out,
        [
            {"line": 1, "event": "sending"},
            {"line": 2, "event": "sending"},
            {"line": 2, "event": "submitted", "run_id": line2},
            {"line": 3, "event": "sending"},
            {"line": 4, "event": "sending"},
            {"line": 4, "event": "submitted", "run_id": line4},
            {"line": 5, "event": "sending"},
            # An earlier --retry-failed was killed while line 5's new create was on the wire.
            {"line": 5, "event": "retry"},
            {"line": 5, "event": "sending"},
        ],
    )
    code = await cli(
        "bulk", str(requests), "--output", str(out), "--resume", "--retry-failed", "--json"
    )
    summary = json.loads(capsys.readouterr().err.splitlines()[-1])
    outcome = last_by_line(out)
    assert sorted(outcome) == [1, 2, 3, 4, 5, 6]
    assert outcome[1]["error"]["type"] == "OutcomeUnknownError"
    assert outcome[2]["run_id"] == line2
    assert outcome[2]["ok"] is True  # followed to its end, not re-sent
    assert outcome[3]["ok"] is True
    assert outcome[3]["run_id"] not in (None, line2, line4)
    assert outcome[4]["ok"] is True
    assert outcome[4]["run_id"] != line4  # a new run
    assert outcome[5]["error"]["type"] == "OutcomeUnknownError"  # maybe sent: not again
    assert outcome[6]["ok"] is True
    assert code == 5
    assert (summary["lines"], summary["succeeded"], summary["failed"]) == (6, 4, 2)
    assert fake.stats.runs_created == created + 2  # lines 3 and 4 only
    assert fake.stats.duplicate_submissions == 0


def test_retry_failed_needs_resume(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ZAPIER_TOKEN", "t")
    requests = tmp_path / "in.jsonl"
    write_requests(requests, 1)
    out = tmp_path / "out.jsonl"
    assert main(["bulk", str(requests), "--output", str(out), "--retry-failed"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert not out.exists()


# --- D: run --timeout ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_run_timeout_prints_the_last_status_and_how_to_follow_the_run(env, fake, capsys):
    slow = '__fake__={"duration": 1000}'
    assert await cli("run", "core:x", "--input", slow, "--timeout", "0.1") == 5
    captured = capsys.readouterr()
    assert captured.out.startswith("run ")
    assert captured.out.splitlines()[0].endswith(": waiting")
    assert "unknown" not in captured.out
    assert "still polled" not in captured.err
    assert "zapier-async resume " in captured.err

    assert await cli("run", "core:x", "--input", slow, "--timeout", "0.1", "--json") == 5
    record = json.loads(capsys.readouterr().out)
    assert record["status"] == "waiting"
    assert record["ok"] is False
    assert "still polled" not in record["error"]["message"]
    token = record["continuation_token"]
    assert token

    # ... and the command it names follows the run to its end.
    fake.complete(record["run_id"])
    assert await cli("resume", token, "--json") == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["status"] == "success"
    assert resumed["run_id"] == record["run_id"]
    assert fake.stats.runs_created == 2


def test_resume_refuses_a_malformed_token_as_a_usage_error(env, capsys):
    assert main(["resume", "not a token/../x"]) == 2
    assert "zapier-async resume:" in capsys.readouterr().err


# --- E: --version, progress bar, summary table ------------------------------------------------


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"zapier-async {za.__version__}"


def test_version_from_python_m():
    done = subprocess.run(
        [PYTHON, "-m", "zapier_async", "--version"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"zapier-async {za.__version__}"


def test_progress_is_plain_lines_when_not_a_terminal(capsys):
    assert main(["demo", "--runs", "20", "--seed", "1", "--rate-limit", "500/1"]) == 0
    captured = capsys.readouterr()
    assert "20/20 done, " in captured.err
    assert "\r" not in captured.err
    assert "\x1b[" not in captured.err + captured.out  # no terminal control sequences
    assert "runs started" in captured.out  # the summary as plain aligned lines


def test_progress_is_plain_lines_with_json_even_on_a_terminal(capsys, monkeypatch):
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    assert main(["demo", "--runs", "20", "--seed", "1", "--json"]) == 0
    captured = capsys.readouterr()
    assert "20/20 done, " in captured.err
    assert "\x1b[" not in captured.err
    json.loads(captured.out)


def test_a_terminal_gets_a_progress_bar_and_a_table(capsys, monkeypatch):
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich's switch: treat the streams as terminals
    monkeypatch.setenv("COLUMNS", "140")
    assert main(["demo", "--runs", "20", "--seed", "1", "--error-rate", "0.5"]) == 0
    captured = capsys.readouterr()
    assert "━" in captured.err  # the bar
    assert "20/20" in captured.err
    assert "runs/s" in captured.err  # rate
    assert "ETA" in captured.err
    assert "failed" in captured.err
    assert " done, " not in captured.err  # not the plain lines
    assert "runs started" in captured.out
    assert "│" in captured.out  # a rich table, not plain lines


def test_the_progress_bar_counts_failures():
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=140)
    bar = _output.make_progress(4, buffer, console=console)
    bar.update(failed=False)
    bar.update(failed=True)
    bar.update(failed=True)
    bar.close()
    text = buffer.getvalue()
    assert "3/4" in text
    assert "failed 2" in text


# --- F: the emulator is imported only by the commands that serve it -------------------------


def test_importing_the_cli_does_not_import_the_emulator():
    code = (
        "import zapier_async.cli, sys; "
        "assert 'zapier_async.testing._fake' not in sys.modules, 'emulator imported'; "
        "assert 'rich' not in sys.modules, 'rich imported'"
    )
    done = subprocess.run(
        [PYTHON, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
