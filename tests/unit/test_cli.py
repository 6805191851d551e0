"""Every `cardinal` command explains itself."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from infra.cli import main
from infra.cli.ballot_files import FileBallot
from infra.cli.importer import _lanes
from tests.databases import create_database, drop_database

ROOT = Path(__file__).resolve().parents[2]

COMMANDS = [
    ["serve"],
    ["api"],
    ["relay"],
    ["project"],
    ["migrate"],
    ["ingest"],
    ["projections"],
    ["rebuild"],
    ["publish-test-votes"],
    ["bench"],
    ["bench", "http"],
    ["bench", "projection"],
    ["bench", "rebuild"],
    ["bench", "tabulation"],
    ["bench", "verify"],
    ["bench", "ingest"],
    ["bench", "app"],
    ["bench", "machine"],
    ["audit"],
    ["audit", "export"],
    ["audit", "verify"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: cardinal")
    assert len(out.splitlines()) > 3


def test_an_unknown_projection_is_refused_with_the_known_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["rebuild", "nonsense"])
    assert exited.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_ingest_without_a_broker_says_which_variable_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AMQP_URL", raising=False)
    assert main(["ingest"]) == 2
    assert "AMQP_URL is not set" in capsys.readouterr().err


def test_serve_refuses_to_start_when_the_metrics_port_is_taken(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Another PORT but the same METRICS_PORT as a running serve: refused at once, naming
    the setting, instead of a metrics server that crashes and restarts in the log."""
    with socket.socket() as taken, socket.socket() as free:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
        free.close()
        monkeypatch.setenv("HOST", "127.0.0.1")
        monkeypatch.setenv("PORT", str(port))
        monkeypatch.setenv("METRICS_PORT", str(taken.getsockname()[1]))
        monkeypatch.setenv("WEB_CONCURRENCY", "2")
        # Were the check gone, serve would fail fast here instead of starting a stack.
        monkeypatch.setenv("CARDINAL_DATA_DIR", str(tmp_path))
        monkeypatch.setenv("DATABASE_URL", "postgresql://root@127.0.0.1:1/nowhere")
        assert main(["serve"]) == 2
        metrics_port = taken.getsockname()[1]
    captured = capsys.readouterr()
    said = " ".join((captured.out + captured.err).split())
    assert f"port {metrics_port} on 127.0.0.1 is already in use" in said
    assert "choose another METRICS_PORT" in said


def test_a_serve_refused_for_a_busy_port_names_itself_nowhere(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """serve.pid named the refused serve (a process that never served, newcomer review):
    it is written only once the ports are known to be free."""
    (tmp_path / "serve.pid").write_text('{"pid": 1, "port": 1, "metrics_port": 2}\n')
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setenv("HOST", "127.0.0.1")
        monkeypatch.setenv("PORT", str(taken.getsockname()[1]))
        monkeypatch.setenv("CARDINAL_DATA_DIR", str(tmp_path))
        monkeypatch.setenv("DATABASE_URL", "postgresql://root@127.0.0.1:1/nowhere")
        assert main(["serve"]) == 2
    assert "already in use" in capsys.readouterr().err
    assert (tmp_path / "serve.pid").read_text() == ""  # neither this serve nor the last


def test_the_data_folders_holder_is_named_once_its_ports_are_checked(tmp_path: Path) -> None:
    from infra.runtime.lifecycle import DataDirInUse, hold_data_dir, name_holder

    held = hold_data_dir(tmp_path)
    try:
        with pytest.raises(DataDirInUse, match="its pid not written yet"):
            hold_data_dir(tmp_path)  # (flock: another open file, even in this process)
        name_holder(held, 8123, 8124)
        with pytest.raises(DataDirInUse, match=f"pid {os.getpid()}, port 8123, metrics port 8124"):
            hold_data_dir(tmp_path)
    finally:
        os.close(held)
    os.close(hold_data_dir(tmp_path))  # released with its descriptor


def _beside_a_taken_metrics_port(command: list[str], env: dict[str, str]) -> tuple[int, int, str]:
    """`cardinal COMMAND` run with METRICS_PORT on a port held open, against a database of
    its own: its exit code, that port, and what it said (on one line)."""
    url = create_database()
    try:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            metrics_port = taken.getsockname()[1]
            done = subprocess.run(
                [sys.executable, "-m", "infra.cli", *command],
                check=False,
                env=env | {"METRICS_PORT": str(metrics_port), "DATABASE_URL": url},
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=30,
            )
    finally:
        drop_database(url)
    return done.returncode, metrics_port, " ".join((done.stdout + done.stderr).split())


def test_a_worker_refuses_to_start_when_the_metrics_port_is_taken() -> None:
    """`cardinal project` beside `make run`, with .cardinal/env sourced (serve's
    METRICS_PORT): its metrics task crashed and restarted forever (newcomer review
    helper-74). It is refused at once, naming the setting."""
    env = {k: v for k, v in os.environ.items() if k != "AMQP_URL"}
    # (the code before ran on, its metrics task restarting: the timeout fails it)
    code, metrics_port, said = _beside_a_taken_metrics_port(["project", "catalog"], env)
    assert code == 2, said
    assert f"port {metrics_port} on 127.0.0.1 is already in use" in said
    assert "choose another METRICS_PORT" in said


def test_ingest_refuses_to_start_when_the_metrics_port_is_taken() -> None:
    """`cardinal ingest` on a taken METRICS_PORT died with a 30-line traceback (operator
    review M3), where `project` and `relay` refuse it: it is refused the same way, exit 2,
    before it connects to anything."""
    env = dict(os.environ) | {
        "AMQP_URL": os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
        "CARDINAL_NAMESPACE": f"test-port-{os.getpid()}",
        "CARDINAL_SECRET": "s" * 40,
    }
    code, metrics_port, said = _beside_a_taken_metrics_port(["ingest"], env)
    assert code == 2, said
    assert f"cannot start: port {metrics_port} on 127.0.0.1 is already in use" in said
    assert "choose another METRICS_PORT (0: none)" in said
    assert "Traceback" not in said


@pytest.mark.parametrize("command", [["relay"], ["project"]])
def test_relay_and_project_refuse_a_taken_metrics_port_before_the_database(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README says a worker on a taken METRICS_PORT refuses to start before it connects
    to anything: `relay` and `project` migrated first, and with the database out of reach
    said so instead of naming the port (documentation review)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        metrics_port = taken.getsockname()[1]
        monkeypatch.setenv("METRICS_PORT", str(metrics_port))
        monkeypatch.setenv("DATABASE_URL", "postgresql://root@127.0.0.1:1/nowhere")
        monkeypatch.setenv("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/")
        assert main(command) == 2
    said = " ".join(capsys.readouterr().err.split())
    assert f"cannot start: port {metrics_port} on 127.0.0.1 is already in use" in said
    assert "choose another METRICS_PORT (0: none)" in said
    assert "database" not in said


def test_serve_refuses_a_metrics_port_equal_to_its_port(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    monkeypatch.setenv("HOST", "127.0.0.1")
    monkeypatch.setenv("PORT", port)
    monkeypatch.setenv("METRICS_PORT", port)
    monkeypatch.setenv("WEB_CONCURRENCY", "2")
    monkeypatch.setenv("CARDINAL_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DATABASE_URL", "postgresql://root@127.0.0.1:1/nowhere")
    assert main(["serve"]) == 2
    captured = capsys.readouterr()
    said = " ".join((captured.out + captured.err).split())
    assert f"METRICS_PORT and PORT are both {port}" in said


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("notaurl", "DATABASE_URL must be a PostgreSQL connection URL"),
        ("postgresql://root@127.0.0.1:1/nowhere", "cannot reach the database"),
    ],
)
def test_a_database_out_of_reach_is_a_message_not_a_traceback(
    url: str, said: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    assert main(["migrate"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert said in err
    assert "Traceback" not in err


def test_options_that_count_or_name_keys_are_checked_before_anything_runs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for command, said in (
        (["rebuild", "tally", "--page-size", "0"], "--page-size: must be at least 1; got 0"),
        (["audit", "verify", "--public-key", "nothex"], "64 hex digits"),
        (["import", "x.csv", "--election", "e", "--batch", "-5"], "must be at least 1"),
    ):
        with pytest.raises(SystemExit) as exited:
            main(command)
        assert exited.value.code == 2
        assert said in " ".join(capsys.readouterr().err.split())
    missing = tmp_path / "missing.ndjson"
    assert main(["audit", "verify", "--file", str(missing)]) == 2
    assert f"cannot use {missing}: No such file or directory" in " ".join(
        capsys.readouterr().err.split()
    )


def test_the_embedded_database_out_of_reach_says_to_start_make_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """After `make run` stopped, `. .cardinal/env` leaves DATABASE_URL on the embedded
    server's socket: "check DATABASE_URL, and that PostgreSQL is running" sent the user
    looking for a server they never ran (operator review L5)."""
    monkeypatch.setenv("CARDINAL_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres@/cardinal?host={tmp_path}/pgdata")
    assert main(["projections"]) == 2
    said = " ".join(capsys.readouterr().err.split())
    assert "cannot reach the database" in said
    assert "start `make run` first" in said
    assert "Traceback" not in said
    monkeypatch.setenv("DATABASE_URL", "postgresql://root@127.0.0.1:1/nowhere")
    assert main(["projections"]) == 2
    said = " ".join(capsys.readouterr().err.split())
    assert "check DATABASE_URL, and that PostgreSQL is running" in said
    assert "make run" not in said


def test_an_import_against_an_api_that_is_down_says_what_to_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ballots = tmp_path / "ballots.jsonl"
    ballots.write_text('{"voter_id": "v1", "choice": "a"}\n')
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    election = "00000000-0000-4000-8000-000000000000"
    assert main(["import", str(ballots), "--election", election, "--url", url, "--token", "t"])
    said = " ".join(capsys.readouterr().out.split())
    assert f"cannot reach the API at {url}" in said
    assert "check --url, and that the API is running" in said


def test_only_failures_to_reach_the_database_become_a_message() -> None:
    from infra.cli import _stopped_by

    said = _stopped_by(psycopg.OperationalError("connection refused"))
    assert said is not None
    assert "cannot reach the database" in said
    # What a statement met (a deadlock, a timeout) is an incident: its traceback stays.
    assert _stopped_by(psycopg.errors.DeadlockDetected("deadlock detected")) is None
    assert _stopped_by(psycopg.errors.QueryCanceled("canceling statement")) is None


def test_an_edited_migration_an_absent_api_and_a_classic_queue_are_messages(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each printed a traceback (review helper-31): what the user must do was in its last
    line, or nowhere."""
    from aiormq.exceptions import ChannelPreconditionFailed

    from infra.cli import _stopped_by
    from infra.store.migrations import MigrationError

    edited = _stopped_by(MigrationError("0009_chain_elections.sql was edited after it was applied"))
    assert edited is not None
    assert "cannot use this database" in edited
    classic = _stopped_by(
        ChannelPreconditionFailed("PRECONDITION_FAILED - inequivalent arg 'x-queue-type'")
    )
    assert classic is not None
    assert "choose another INGEST_QUEUE" in classic
    assert _stopped_by(RuntimeError("a bug")) is None
    monkeypatch.setenv("CARDINAL_ADMIN_TOKEN", "a" * 40)
    monkeypatch.setenv("CARDINAL_CLIENT_TOKEN", "c" * 40)
    assert main(["publish-test-votes", "-n", "1", "--url", "http://127.0.0.1:9"]) == 2
    assert "cannot connect" in capsys.readouterr().err


def test_an_unknown_log_level_is_a_configuration_error_naming_the_levels(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """It was a traceback from logging (ValueError: Unknown level), review helper-40."""
    monkeypatch.setenv("LOG_LEVEL", "verbose")
    monkeypatch.setenv("DATABASE_URL", "postgresql://root@127.0.0.1:1/nowhere")
    assert main(["migrate"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL; got 'VERBOSE'" in err
    assert "Traceback" not in err


def test_a_read_model_not_built_yet_is_not_called_a_missing_migration() -> None:
    """`audit verify` on a migrated database whose projections never ran told the
    operator to migrate it (review helper-40)."""
    import psycopg

    from infra.cli import _stopped_by

    said = _stopped_by(
        psycopg.errors.UndefinedTable('relation "read_models.tally_elections" does not exist')
    )
    assert said is not None
    assert "the read models are not built yet" in said
    other = _stopped_by(psycopg.errors.UndefinedTable('relation "cardinal_events" does not exist'))
    assert other is not None
    assert "cardinal migrate" in other


def test_a_rate_limit_of_zero_is_refused_and_an_export_needs_no_service_secret() -> None:
    """MAX_VOTES_PER_IP_PER_HOUR=0 with the limit on turned it off silently; and in
    production, `audit export` asked for CARDINAL_SECRET, the secret that links voters to
    ballots, which it never uses (review helper-51)."""
    from infra.runtime.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match="at least 1 with ENABLE_RATE_LIMITING"):
        Settings.from_env({"ENABLE_RATE_LIMITING": "true", "MAX_VOTES_PER_IP_PER_HOUR": "0"})
    exporter = {
        "CARDINAL_ENV": "production",
        "DATABASE_URL": "postgresql://root@127.0.0.1:5432/x",
        "CARDINAL_AUDIT_KEY": "a" * 64,
    }
    with pytest.raises(SettingsError, match="CARDINAL_SECRET"):
        Settings.from_env(exporter)  # the service needs it
    assert Settings.from_env(exporter, service=False).audit_key == "a" * 64


def test_an_import_deals_the_files_voters_by_chance_each_voters_lines_in_order() -> None:
    """Every ballot once; a voter's ballots on one lane in file order, its first ballots
    before anyone's second; and the voters in no order of the file's (review: the file's
    order kept between requests let an auditor narrow each voter to a few requests)."""
    voters = [f"v{n:03}" for n in range(300)]
    rows = [(v, turn) for turn in range(3) for v in voters[: 300 // (turn + 1)]]
    ballots = [
        FileBallot(line, {"voter_id": v, "choice": str(turn)}, f"k{line}")
        for line, (v, turn) in enumerate(rows, 1)
    ]
    lanes = _lanes(ballots, 2)
    assert sorted(b.line for lane in lanes for b in lane) == list(range(1, len(rows) + 1))
    for lane in lanes:
        turns = [int(b.body["choice"]) for b in lane]
        assert turns == sorted(turns)  # round by round
        for voter in {b.body["voter_id"] for b in lane}:
            lines = [b.line for b in lane if b.body["voter_id"] == voter]
            assert lines == sorted(lines)
            assert all(
                voter not in {b.body["voter_id"] for b in other}
                for other in lanes
                if other is not lane
            )
    for lane in lanes:  # in file order, each lane's rank correlation with it would be 1
        firsts = [int(b.body["voter_id"][1:]) for b in lane if b.body["choice"] == "0"]
        n = len(firsts)
        assert n > 50
        ranks = sorted(range(n), key=firsts.__getitem__)
        squares = sum((r - k) ** 2 for k, r in enumerate(ranks))
        assert abs(1 - 6 * squares / (n * (n * n - 1))) < 0.5  # (by chance: sd 0.08)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_second_serve_of_a_live_serves_data_folder_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A second serve with the data folder of a live one (other PORT, METRICS_PORT) wrote
    its env file over the first's without a word; once stopped, every `. data/env;
    cardinal ...` pointed at a dead setup (operator review, M2). It is refused, naming the
    live serve; once that serve is gone (even killed, its pid file left), it blocks
    nothing."""
    import httpx

    url = create_database()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "AMQP_URL"}
    env |= {
        "DATABASE_URL": url,
        "CARDINAL_DATA_DIR": str(tmp_path),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "METRICS_PORT": str(_free_port()),
        "WEB_CONCURRENCY": "1",
        "CARDINAL_ENV": "development",
    }
    first = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "serve"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).is_success:
                    break
            except httpx.TransportError:
                pass
            assert first.poll() is None, "the first serve stopped"
            time.sleep(0.1)
        written = (tmp_path / "env").read_text()
        second_port = _free_port()
        monkeypatch.setenv("CARDINAL_DATA_DIR", str(tmp_path))
        monkeypatch.setenv("HOST", "127.0.0.1")
        monkeypatch.setenv("PORT", str(second_port))
        monkeypatch.setenv("METRICS_PORT", str(_free_port()))
        monkeypatch.setenv("WEB_CONCURRENCY", "1")
        monkeypatch.setenv("DATABASE_URL", "postgresql://root@127.0.0.1:1/nowhere")
        monkeypatch.delenv("AMQP_URL", raising=False)
        assert main(["serve"]) == 2
        captured = capsys.readouterr()
        said = " ".join((captured.out + captured.err).split())
        assert f"another `cardinal serve` (pid {first.pid}, port {port}," in said, said
        assert f"CARDINAL_DATA_DIR={tmp_path}" in said
        assert "stop it first, or give this one its own CARDINAL_DATA_DIR" in said
        assert (tmp_path / "env").read_text() == written
    finally:
        first.kill()  # no clean exit: its pid file stays behind
        first.wait()
        drop_database(url)
    assert (tmp_path / "serve.pid").exists()
    assert main(["serve"]) == 2  # on to the (unreachable) database: not held any more
    captured = capsys.readouterr()
    said = " ".join((captured.out + captured.err).split())
    assert "cannot reach the database" in said, said


def test_the_projections_table_keeps_its_numbers_on_a_pipe(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`cardinal projections` into a pipe (80 columns) cut the figures short ("16,7…")
    (operator review, L1): every number is printed whole, however narrow the output."""
    import asyncio

    from infra.cli import operate

    big = 16_789_123_456

    async def found(_: object) -> list[dict[str, object]]:
        return [
            {
                "name": name,
                "version": 12,
                "state": "rebuilding",
                "position": big,
                "head": big + 1,
                "lag": 1,
                "dead_lettered": 1_234,
                "unsigned": 3_003_003,
                "stale": 4_004_004,
                "set_aside": 56_789,
                "detail": "",
                "rebuild": {
                    "version": 13,
                    "position": big - 5,
                    "head": big + 1,
                    "events_per_second": 123_456.0,
                },
            }
            for name in ("statistics", "catalog")
        ]

    monkeypatch.setattr(operate, "projection_status", found)
    url = create_database()
    try:
        assert asyncio.run(operate.print_status(url, as_json=False)) == 1
    finally:
        drop_database(url)
    out = capsys.readouterr().out
    assert "…" not in out, out
    # (the messages refused for their signature too, which the table left out: review)
    figures = ("16,789,123,456", "16,789,123,457", "56789", "3,003,003", "unsigned")
    for figure in (*figures, "4,004,004", "stale"):
        assert figure in out, figure
    for figure in ("statistics", "rebuilding"):
        assert figure in out, figure


def test_an_import_waiting_for_the_api_says_so_and_how_much_patience_is_left() -> None:
    """While the API was down, the import's progress froze without a word until --patience
    ran out (operator review, L2): the wait is shown, with why and the patience left."""
    import asyncio

    from infra.bench.loadgen import LeanConnection
    from infra.cli.importer import Unreachable, _Outcomes, _post

    notes: list[str] = []
    outcomes = _Outcomes(lambda _: None, notes.append)
    down = LeanConnection("127.0.0.1", _free_port())  # nothing listens there
    batch = [FileBallot(1, {"voter_id": "ada", "choice": "a"}, "k1")]
    with pytest.raises(Unreachable, match=r"for 1\.5 s the API took none of a batch"):
        asyncio.run(_post(down, "e", batch, outcomes, patience=1.5))
    assert notes, "nothing said while waiting"
    assert notes[0].startswith("API unreachable (the API did not answer (")
    assert re.search(r"\), waiting: [12] s of --patience left$", notes[0]), notes[0]


def test_an_import_asked_to_wait_past_its_patience_by_the_rate_limit_says_what_helps() -> None:
    """A rate limit counts a batch's ballots: a batch of 1,000 waits for 1,000 units back,
    longer than --patience, where smaller batches would each fit sooner. The import said
    only that the wait was too long (client review): it now says what to change."""
    import asyncio

    from infra.bench.loadgen import Reply
    from infra.cli.importer import Unreachable, _Outcomes, _post

    class Limited:
        async def request(self, method: str, path: str, body: object) -> Reply:
            problem = b'{"title":"Too many requests","status":429,"detail":"slow down"}'
            head = b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 3600\r\n\r\n"
            return Reply(429, head, problem)

    outcomes = _Outcomes(lambda _: None, lambda _: None)
    batch = [FileBallot(1, {"voter_id": "ada", "choice": "a"}, "k1")]
    with pytest.raises(Unreachable, match=r"asks to wait 3600 s") as refused:
        asyncio.run(_post(Limited(), "e", batch, outcomes, patience=5))  # type: ignore[arg-type]
    assert "a smaller --batch waits less" in str(refused.value)
    assert "--patience" in str(refused.value)


def test_an_import_honours_the_retry_after_of_a_bulk_answers_items() -> None:
    """A batch answered 200 whose items are 503 (the store away) was sent again after 0.2 s,
    then 0.4 s..., whatever the API asked: the items now carry ``retry_after`` (as a single
    ballot's 503 carries Retry-After), and the import waits as long as they ask, or says it
    will not wait past --patience."""
    import asyncio

    import orjson

    from infra.bench.loadgen import Reply
    from infra.cli.importer import Unreachable, _Outcomes, _post

    class AwayForAnHour:
        def __init__(self) -> None:
            self.posts = 0

        async def request(self, method: str, path: str, body: object) -> Reply:
            self.posts += 1
            item = {
                "title": "Event store unavailable",
                "status": 503,
                "detail": "the event store is unreachable",
                "retry_after": 3600,
            }
            return Reply(200, b"HTTP/1.1 200 OK\r\n\r\n", orjson.dumps({"results": [item]}))

    api = AwayForAnHour()
    outcomes = _Outcomes(lambda _: None, lambda _: None)
    batch = [FileBallot(1, {"voter_id": "ada", "choice": "a"}, "k1")]
    with pytest.raises(Unreachable, match=r"asks to wait 3600 s, longer than --patience"):
        asyncio.run(_post(api, "e", batch, outcomes, patience=2))  # type: ignore[arg-type]
    assert api.posts == 1  # (not sent again every fraction of a second meanwhile)


def test_the_import_summary_counts_marks_apart_from_ballots(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Counts of marks (overvotes, write-ins) stood in the "ballots" column, under the
    ballots recorded (operator review, L8): one ballot may hold several marks."""
    from collections import Counter

    from infra.cli.ballot_files import Reading
    from infra.cli.importer import _summary

    reading = Reading()
    reading.marks["overvote"] += 7
    _summary(tmp_path / "cvr.csv", Counter({"recorded: cast": 3}), reading, 3, 1.0)
    rows = {
        line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:-1]]
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("│")
    }
    assert rows["recorded: cast"] == ["3", ""]
    assert rows["marks: overvote"] == ["", "7"]


@pytest.mark.parametrize(
    ("seconds", "said"),
    [
        (0.037, "6 ballots read and answered in under a second"),
        (2.0, "6 ballots read and answered in 2.0 s (3 ballots/s)"),
        (0.037, "1 ballot read and answered in under a second"),
    ],
)
def test_the_import_summary_gives_a_rate_only_for_a_measurable_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, seconds: float, said: str
) -> None:
    """Six ballots answered in an instant were "0.0 s (162 ballots/s)" (newcomer review);
    one was "1 ballots" (operator review L5)."""
    from collections import Counter

    from infra.cli.ballot_files import Reading
    from infra.cli.importer import _summary

    total = int(said.split(maxsplit=1)[0])
    _summary(tmp_path / "few.jsonl", Counter({"recorded: cast": total}), Reading(), total, seconds)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == said


def test_the_csv_voter_columns_are_documented(capsys: pytest.CaptureFixture[str]) -> None:
    """Which header names a CVR's voter column was said nowhere (newcomer review)."""
    from infra.cli.ballot_files import VOTER_COLUMNS

    with pytest.raises(SystemExit):
        main(["import", "--help"])
    said = " ".join(capsys.readouterr().out.split())
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `cardinal import"))
    assert "docs/import.md" in row  # the README's row points to the details
    details = (root / "docs" / "import.md").read_text()
    for name in VOTER_COLUMNS:
        assert re.search(rf"\b{name}\b", said), name
        assert f"`{name}`" in details, name
    assert "voter column is the first headed voter_id, ballot_id, cvr_id or id" in said
