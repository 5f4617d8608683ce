"""The command line, end to end: `main(argv)` and real subprocesses against the emulator."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from zapier_async.cli import _common, _output, main
from zapier_async.testing import FakeZapier

PYTHON = sys.executable
REPO = Path(__file__).resolve().parent.parent


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeZapier]:
    async with FakeZapier(seed=1, record_requests=False) as server:
        yield server


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


async def cli(*argv: str) -> int:
    """`main(argv)` in a thread (it runs its own event loop), while ours serves the fake."""
    return await asyncio.to_thread(main, list(argv))


# --- main(argv) -------------------------------------------------------------------------------


def test_demo_runs_against_the_in_process_emulator(capsys):
    code = main(["demo", "--runs", "30", "--seed", "1", "--json", "--rate-limit", "200/1"])
    assert code == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["outcomes"] == 30
    assert summary["emulator"]["duplicate_submissions"] == 0
    metrics = summary["metrics"]
    assert metrics["runs_succeeded"] + metrics["runs_failed"] + metrics["outcome_unknown"] <= 30
    # A create whose answer a fault spoiled may or may not exist at the emulator (that is
    # what "unknown" means), and it is never "started"; every run started exists.
    created = summary["emulator"]["runs_created"]
    assert (
        metrics["runs_started"] <= created <= metrics["runs_started"] + metrics["outcome_unknown"]
    )
    assert "30/30 done" in err


def test_demo_prints_a_table(capsys):
    assert main(["demo", "--runs", "10", "--seed", "2", "--fault-rate", "0"]) == 0
    out, _ = capsys.readouterr()
    assert "latency avg / p50 / p95 / max" in out
    assert "runs started" in out
    assert "errors by code" in out


def test_usage_errors_exit_2(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("ZAPIER_TOKEN", "t")
    assert main(["nope"]) == 2
    assert main(["demo", "--runs", "0"]) == 2
    assert main(["bulk", str(tmp_path / "missing.jsonl")]) == 2
    requests = tmp_path / "in.jsonl"
    write_requests(requests, 1)
    assert main(["bulk", str(requests), "--resume"]) == 2  # --resume needs --output
    out = tmp_path / "out.jsonl"
    out.write_text('{"line": 1}\n')
    assert main(["bulk", str(requests), "--output", str(out)]) == 2  # would clobber
    assert "--resume" in capsys.readouterr().err


def test_missing_token_exits_3(monkeypatch, capsys):
    monkeypatch.delenv("ZAPIER_TOKEN", raising=False)
    assert main(["run", "core:x"]) == 3
    assert "ZAPIER_TOKEN" in capsys.readouterr().err


@pytest.mark.asyncio
async def test_run_prints_the_outcome_as_json(env, fake, capsys):
    code = await cli("run", "core:x", "--auth", "a1", "--input", "n=3", "--input", "s=hi", "--json")
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    assert record["ok"] is True
    assert record["status"] == "success"
    run = fake.run(record["run_id"])
    assert run.inputs == {"n": 3, "s": "hi"}  # JSON values parsed, others kept as text
    assert run.authentication == "a1"


@pytest.mark.asyncio
async def test_run_exit_codes_follow_the_error_class(env, fake, capsys):
    code = await cli("run", "core:x", "--input", '__fake__={"status": "error"}')
    assert code == 1
    assert "error:" in capsys.readouterr().err
    fake.inject("500", endpoint="create", after_create=True)
    assert await cli("run", "core:x") == 5  # outcome unknown


@pytest.mark.asyncio
async def test_an_unauthorised_token_exits_3(monkeypatch, capsys):
    async with FakeZapier(tokens={"good"}) as fake:
        monkeypatch.setenv("ZAPIER_TOKEN", "bad")
        monkeypatch.setenv("ZAPIER_BASE_URL", fake.url)
        assert await cli("run", "core:x") == 3


@pytest.mark.asyncio
async def test_bulk_writes_one_outcome_per_line_with_line_numbers(env, fake, tmp_path):
    requests = tmp_path / "in.jsonl"
    write_requests(requests, 20)
    with requests.open("a") as fh:
        fh.write("\n")  # blank lines are skipped
        fh.write("{not json\n")
        fh.write(json.dumps({"action": "core:x", "authentication": None, "key": "k"}) + "\n")
        fh.write(
            json.dumps(
                {
                    "action": "core:x",
                    "authentication": None,
                    "inputs": {"__fake__": {"status": "error"}},
                }
            )
            + "\n"
        )
    out = tmp_path / "out.jsonl"
    code = await cli("bulk", str(requests), "--output", str(out), "--concurrency", "4")
    assert code == 1  # two lines failed
    records = read_jsonl(out)
    assert sorted(r["line"] for r in records) == [*range(1, 21), 22, 23, 24]
    by_line = {r["line"]: r for r in records}
    assert by_line[22]["error"]["type"] == "InvalidRequestError"
    assert by_line[22]["run_id"] is None
    assert by_line[23]["ok"] is True
    assert by_line[23]["key"] == "k"
    assert by_line[24]["error"]["type"] == "RunFailedError"
    assert by_line[24]["run_id"]
    for line in range(1, 21):
        assert fake.run(by_line[line]["run_id"]).inputs == {"i": line - 1}
    journal = read_jsonl(out.with_name("out.jsonl.journal"))
    submitted = {e["key"]: e["run_id"] for e in journal if e["event"] == "submitted"}
    assert submitted == {r["line"]: r["run_id"] for r in records if r["run_id"]}
    assert fake.stats.runs_created == 22


@pytest.mark.asyncio
async def test_bulk_to_stdout(env, fake, tmp_path, capsys):
    requests = tmp_path / "in.jsonl"
    write_requests(requests, 5)
    assert await cli("bulk", str(requests), "--no-progress", "--json") == 0
    captured = capsys.readouterr()
    assert sorted(r["line"] for r in map(json.loads, captured.out.splitlines())) == [1, 2, 3, 4, 5]
    assert json.loads(captured.err.splitlines()[-1])["succeeded"] == 5


@pytest.mark.asyncio
async def test_resume_follows_submitted_runs_and_never_resends_a_maybe_sent_create(
    env, fake, tmp_path
):
    """Each window of an interrupted job, laid out by hand in the files a crash leaves."""
    requests = tmp_path / "in.jsonl"
    write_requests(requests, 6)
    out = tmp_path / "out.jsonl"
    journal = out.with_name("out.jsonl.journal")
    # Line 1 ended; line 2 was accepted (and is still running); line 3 may have been sent;
    # lines 4-6 never started. The crash tore the last outcome line in half.
    from zapier_async import BearerToken, ZapierClient

    async with ZapierClient(auth=BearerToken("t"), base_url=fake.url) as client:
        first = await client.run("core:x", authentication=None, inputs={"i": 0})
        second = await client.run("core:x", authentication=None, inputs={"i": 1})
        first.cancel()
        second.cancel()
    out.write_text(
        json.dumps({"line": 1, "run_id": first.id, "ok": True}) + "\n" + '{"line": 2, "ok'
    )
    journal.write_text(
        "\n".join(
            json.dumps(e)
            for e in [
                {"line": 1, "event": "sending"},
                {"line": 1, "event": "submitted", "run_id": first.id},
                {"line": 2, "event": "sending"},
                {"line": 2, "event": "submitted", "run_id": second.id},
                {"line": 3, "event": "sending"},
            ]
        )
        + "\n"
    )
    created_before = fake.stats.runs_created
    code = await cli("bulk", str(requests), "--output", str(out), "--resume")
    assert code == 5  # line 3's outcome is unknown
    records = read_jsonl(out)
    by_line = {r["line"]: r for r in records}
    assert sorted(by_line) == [1, 2, 3, 4, 5, 6]
    assert len(records) == 6
    assert by_line[2]["run_id"] == second.id
    assert by_line[2]["ok"] is True
    assert by_line[3]["error"]["type"] == "OutcomeUnknownError"
    assert by_line[3]["run_id"] is None
    assert fake.stats.runs_created == created_before + 3  # lines 4-6 only
    assert {fake.run(by_line[n]["run_id"]).inputs["i"] for n in (4, 5, 6)} == {3, 4, 5}
    # Resuming a finished job sends nothing, and its exit code still describes the whole job
    # (line 3's outcome is unknown).
    assert await cli("bulk", str(requests), "--output", str(out), "--resume") == 5
    assert len(read_jsonl(out)) == 6
    assert fake.stats.runs_created == created_before + 3


def test_exit_code_table_is_in_the_help(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for code in _common.EXIT_CODES:
        assert f"{code:>3}  " in out


def test_progress_is_a_rich_bar_on_a_terminal_and_plain_lines_elsewhere():
    import io

    from rich.console import Console

    stream = io.StringIO()
    assert isinstance(_output.make_progress(2, stream), _output.PlainProgress)
    terminal = Console(file=stream, force_terminal=True)
    bar = _output.make_progress(2, stream, console=terminal)
    bar.close()
    assert isinstance(bar, _output.RichProgress)
    # --json: plain lines even on a terminal.
    plain = _output.make_progress(2, stream, console=terminal, plain=True)
    assert isinstance(plain, _output.PlainProgress)
    plain.close()


# --- real subprocesses --------------------------------------------------------------------------


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("ZAPIER_TOKEN", None)
    env.update(extra)
    return env


async def wait_for(predicate: Any, *, timeout: float, what: str) -> None:
    """Poll an observable condition (a file's lines, a process's output) until a deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.mark.asyncio
async def test_serve_fake_runs_until_sigterm_and_the_cli_talks_to_it(tmp_path):
    server = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "zapier_async", "serve-fake", "--seed", "3",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        url = (await asyncio.wait_for(server.stdout.readline(), 30)).decode().strip()
        assert url.startswith("http://127.0.0.1:")
        client = await asyncio.create_subprocess_exec(
            PYTHON, "-m", "zapier_async", "run", "core:x", "--input", "a=1", "--json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO,
            env=subprocess_env(ZAPIER_TOKEN="t", ZAPIER_BASE_URL=url),
        )  # fmt: skip
        out, err = await asyncio.wait_for(client.communicate(), 60)
        assert client.returncode == 0, err.decode()
        assert json.loads(out)["ok"] is True
    finally:
        server.send_signal(signal.SIGTERM)
        rest, _ = await asyncio.wait_for(server.communicate(), 30)
    assert server.returncode == 0
    stats = json.loads(rest.decode().strip().splitlines()[-1])
    assert stats["runs_created"] == 1
    assert stats["duplicate_submissions"] == 0


@pytest.mark.asyncio
async def test_a_bulk_job_killed_mid_run_resumes_without_losing_or_duplicating(tmp_path):
    n = 150
    async with FakeZapier(seed=5, durations=(0.2, 0.4), record_requests=False) as fake:
        requests = tmp_path / "in.jsonl"
        write_requests(requests, n)
        out = tmp_path / "out.jsonl"
        journal = out.with_name("out.jsonl.journal")
        argv = [PYTHON, "-m", "zapier_async", "bulk", str(requests), "--output", str(out)]
        env = subprocess_env(ZAPIER_TOKEN="t", ZAPIER_BASE_URL=fake.url)
        first = await asyncio.create_subprocess_exec(
            *argv, "--concurrency", "10", cwd=REPO, env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await wait_for(lambda: count_lines(out) >= 30, timeout=60, what="30 outcome lines")
        first.kill()  # SIGKILL: no cleanup at all
        await first.wait()
        assert first.returncode == -signal.SIGKILL

        written = read_jsonl(out)
        events = read_jsonl(journal)
        done = {r["line"] for r in written}
        in_flight = {e["key"] for e in events if e["event"] == "submitted"} - done
        assert 30 <= len(written) < n
        assert in_flight, "the kill should catch accepted runs without an outcome"
        created_at_kill = fake.stats.runs_created

        second = await asyncio.create_subprocess_exec(
            *argv, "--resume", "--concurrency", "20", cwd=REPO, env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(second.communicate(), 120)
        stats = fake.stats

    records = read_jsonl(out)
    lines = [r["line"] for r in records]
    assert sorted(lines) == list(range(1, n + 1))  # exactly one outcome per input line
    unknown = [r for r in records if r["error"] and r["error"]["type"] == "OutcomeUnknownError"]
    assert second.returncode == (5 if unknown else 0), err.decode()
    assert stats.duplicate_submissions == 0
    # Every run created was created once; only lines whose create may have been on the wire
    # at the kill can lack a run id.
    run_ids = [r["run_id"] for r in records if r["run_id"]]
    assert len(run_ids) == len(set(run_ids)) == n - len(unknown)
    # Each create on the wire at the kill may or may not have reached the server.
    assert len(run_ids) <= stats.runs_created <= len(run_ids) + len(unknown)
    assert stats.runs_created - created_at_kill == n - len(done) - len(in_flight) - len(unknown)
    for record in records:
        if record["run_id"]:
            assert fake.run(record["run_id"]).inputs == {"i": record["line"] - 1}
    # The runs in flight at the kill were followed by id, not re-sent.
    resumed = {r["line"]: r for r in records if r["line"] in in_flight}
    submitted = {e["key"]: e["run_id"] for e in events if e["event"] == "submitted"}
    assert all(resumed[line]["run_id"] == submitted[line] for line in in_flight)
