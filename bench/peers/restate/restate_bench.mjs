#!/usr/bin/env node
// Restate peer of `keel bench engine`.
//
// Starts `restate-server` (the npm package's binary; single node, all roles, free TCP ports, its
// RocksDB-backed log and partition store on disk in a temp dir), an SDK service endpoint (HTTP/2,
// free port, in this Node process), registers the endpoint through the admin API, runs a tiny
// HTTP downstream (also in this process), then runs N cases of the reference workflow
// (validate -> decide -> switch -> set -> HTTP action -> end) at concurrency C through the
// ingress and prints cases/s and p50/p99 submit-to-complete latency.
//
// The workflow logic mirrors crates/core/src/workflow/bench_workflow.yaml; the measurement
// mirrors crates/keel/src/bench.rs (`bench_engine`) and ../temporal_bench.py: C submitters
// submit cases back to back (open loop, `/send`), completions are awaited separately
// (`/restate/invocation/{id}/attach`), latency is from just before the submit request to the
// attach response, and cases/s = completed / (first submit .. last completion).
//
// Dependencies (package.json, pinned): @restatedev/restate-server, @restatedev/restate-sdk.
// No TypeScript build step; plain ESM.

import { spawn } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { createRequire } from "node:module";
import { parseArgs } from "node:util";

const require = createRequire(import.meta.url);

// The SDK logs two INFO lines per invocation on stdout; it reads RESTATE_LOGGING once, when the
// module loads, so the variable is set before a dynamic import.
process.env.RESTATE_LOGGING ??= "WARN";
const restate = await import("@restatedev/restate-sdk");

// @restatedev/restate-sdk 1.15+ calls Promise.withResolvers (ES2024), which Node.js 22 has and
// Node.js 20 lacks. This is the standard definition, installed only where it is missing.
if (typeof Promise.withResolvers !== "function") {
  Promise.withResolvers = function withResolvers() {
    let resolve, reject;
    const promise = new this((res, rej) => {
      resolve = res;
      reject = rej;
    });
    return { promise, resolve, reject };
  };
}

// ------------------------------------------------------------------------------------------
// Flags.
// ------------------------------------------------------------------------------------------

const { values: flags } = parseArgs({
  options: {
    cases: { type: "string", default: "2000" },
    concurrency: { type: "string", default: "256" },
    json: { type: "boolean", default: false },
    "closed-loop": { type: "boolean", default: false },
    workflow: { type: "boolean", default: false },
    partitions: { type: "string" },
    timeout: { type: "string", default: "1800" },
    "max-attach-connections": { type: "string", default: "8192" },
    "invoker-limit": { type: "string" },
    help: { type: "boolean", short: "h", default: false },
  },
});
if (flags.help) {
  process.stdout.write(`usage: node restate_bench.mjs [--cases N] [--concurrency C] [--json]
       [--closed-loop] [--workflow] [--partitions P] [--timeout S]

  --cases N        number of cases (default 2000)
  --concurrency C  submitters (default 256)
  --json           print one JSON object (progress goes to stderr either way)
  --closed-loop    each submitter calls the handler with the ingress request/response call
                   (POST /BenchReference/run) and waits before its next case
  --workflow       a Restate *workflow* keyed by the case id (run handler) instead of a
                   stateless service; attach via /restate/workflow/BenchReference/{id}/attach
  --partitions P   restate-server default-num-partitions (server default: 24)
  --invoker-limit L
                   restate-server [worker.invoker] concurrent-invocations-limit (server
                   default: 1000); invocations running at once, cf. keel --max-in-flight 512
  --timeout S      seconds to wait for completions after submitting (default 1800)
  --max-attach-connections M
                   ingress connections for awaiting results (default 8192); further
                   attach requests queue in the harness until one is free
`);
  process.exit(0);
}
const TOTAL = Number(flags.cases);
const CONCURRENCY = Math.max(1, Number(flags.concurrency));
const TIMEOUT_S = Number(flags.timeout);
const SERVICE = "BenchReference";
const PARTITIONS = flags.partitions ? Number(flags.partitions) : 24; // restate-server's default-num-partitions

// ------------------------------------------------------------------------------------------
// Helpers.
// ------------------------------------------------------------------------------------------

const log = (msg) => process.stderr.write(msg + "\n");
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function vmHwmKib(pid) {
  try {
    const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
    const line = status.split("\n").find((l) => l.startsWith("VmHWM:"));
    return line ? Number(line.split(/\s+/)[1]) : 0;
  } catch {
    return 0;
  }
}

function dirBytes(dir) {
  let total = 0;
  let entries;
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true });
  } catch {
    return 0;
  }
  for (const e of entries) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) total += dirBytes(p);
    else if (e.isFile()) {
      try {
        total += fs.statSync(p).size;
      } catch {
        /* compaction removed it */
      }
    }
  }
  return total;
}

/** utime + stime of a process, in seconds (Linux /proc; 0 elsewhere). */
function cpuSeconds(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / 100; // USER_HZ is 100 on Linux
  } catch {
    return 0;
  }
}

function percentile(sorted, q) {
  if (sorted.length === 0) return 0;
  const index = Math.round((sorted.length - 1) * q);
  return sorted[Math.min(index, sorted.length - 1)];
}

function benchInput(i, callback) {
  return {
    id: `INV-${String(i).padStart(7, "0")}`,
    // Below the review threshold, so that every case takes the whole path including the action.
    amount: (i % 1000) + 0.5,
    vendor_trusted: i % 3 !== 0,
    callback,
  };
}

/** One HTTP/1.1 request with a keep-alive agent; resolves to { status, body }. */
function request(agent, method, url, { headers = {}, body, timeoutMs } = {}) {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : Buffer.from(body);
    const req = http.request(
      url,
      {
        method,
        agent,
        headers: payload ? { ...headers, "content-length": payload.length } : headers,
      },
      (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString() }));
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    if (timeoutMs) {
      req.setTimeout(timeoutMs, () => req.destroy(new Error(`timed out after ${timeoutMs} ms`)));
    }
    req.end(payload);
  });
}

// ------------------------------------------------------------------------------------------
// The service: the reference workflow as code.
// ------------------------------------------------------------------------------------------

const CALLBACK = /^https?:\/\//;
const isNumber = (v) => typeof v === "number" && Number.isFinite(v);

/** The input JSON schema of the reference workflow. */
function validateInput(data) {
  if (data === null || typeof data !== "object" || Array.isArray(data)) return ["input must be an object"];
  const errors = ["id", "amount", "callback"].filter((k) => !(k in data)).map((k) => `missing required property ${k}`);
  if ("id" in data && typeof data.id !== "string") errors.push("id must be a string");
  if ("amount" in data) {
    if (!isNumber(data.amount)) errors.push("amount must be a number");
    else if (data.amount < 0) errors.push("amount must be >= 0");
  }
  if ("vendor_trusted" in data && typeof data.vendor_trusted !== "boolean") errors.push("vendor_trusted must be a boolean");
  if ("callback" in data && !(typeof data.callback === "string" && CALLBACK.test(data.callback))) {
    errors.push("callback must match ^https?://");
  }
  return errors;
}

// The action's HTTP client: keep-alive HTTP/1.1 connections (Keel uses reqwest's pool).
const actionAgent = new http.Agent({ keepAlive: true, maxSockets: Infinity });

// Attempt numbers of the `notify` side effect, per invocation. A ctx.run retry ends the attempt and
// Restate re-invokes the handler after the backoff; the SDK does not expose the run's retry count,
// so the count is kept here, in memory (see the README: fine for this benchmark, which never
// restarts the endpoint, but not durable).
const notifyAttempts = new Map();

async function httpAction(invocationId, url, body) {
  const attempt = (notifyAttempts.get(invocationId) ?? 0) + 1;
  notifyAttempts.set(invocationId, attempt);
  // Keel: keel:{case_id}:{step}:{attempt}; here the invocation id stands for the case id.
  const key = `restate:${invocationId}:notify:${attempt}`;
  const res = await request(actionAgent, "POST", url, {
    headers: { "content-type": "application/json", "idempotency-key": key },
    body: JSON.stringify(body),
    timeoutMs: 5000,
  });
  if (res.status >= 500 || res.status === 408 || res.status === 429) {
    throw new Error(`downstream answered ${res.status}`); // retryable
  }
  if (res.status >= 400) throw new restate.TerminalError(`downstream answered ${res.status}`);
  notifyAttempts.delete(invocationId);
  try {
    return res.body ? JSON.parse(res.body) : null;
  } catch {
    return res.body;
  }
}

async function benchReference(ctx, input) {
  // validate: input schema (Keel checks it at submit) + the `check` step's assertion.
  const errors = validateInput(input);
  if (errors.length) throw new restate.TerminalError("invalid input: " + errors.join("; "));
  if (!(input.amount >= 0)) throw new restate.TerminalError("amount must not be negative");
  const data = {};

  // decide (hit: first) into routing.
  const columns = [input.amount > 1000, Boolean(input.vendor_trusted ?? false)];
  const rules = [
    [[true, null], { lane: "review" }],
    [[false, true], { lane: "fast" }],
  ];
  const hit = rules.find(([when]) => when.every((w, i) => w === null || w === columns[i]));
  data.routing = hit ? hit[1] : { lane: "standard" };

  // switch
  if (data.routing.lane === "review") return { outcome: "needs-review", data };

  // set
  data.total = Number(input.amount) * 1.2;
  data.lane = data.routing.lane;

  // action: POST, timeout 5s, retry max_attempts 3, backoff 50ms .. 1s, into notified.
  const invocationId = String(ctx.request().id);
  data.notified = await ctx.run(
    "notify",
    () => httpAction(invocationId, input.callback, { id: input.id, total: data.total, lane: data.lane }),
    { maxRetryAttempts: 3, initialRetryInterval: 50, maxRetryInterval: 1000, retryIntervalFactor: 2 },
  );

  // end: done
  return { outcome: "done", data };
}

const definition = flags.workflow
  ? restate.workflow({ name: SERVICE, handlers: { run: (ctx, input) => benchReference(ctx, input) } })
  : restate.service({ name: SERVICE, handlers: { run: (ctx, input) => benchReference(ctx, input) } });

// ------------------------------------------------------------------------------------------
// The downstream: answers every POST /act with {"accepted": true, "reference": "R-1"}.
// ------------------------------------------------------------------------------------------

class Downstream {
  constructor() {
    this.hits = 0;
    this.keys = new Set();
    this.url = "";
    this.server = http.createServer({ keepAlive: true }, (req, res) => {
      const chunks = [];
      req.on("data", (c) => chunks.push(c));
      req.on("end", () => {
        if (req.method === "POST" && req.url === "/act") {
          this.hits += 1;
          const key = req.headers["idempotency-key"];
          if (key) this.keys.add(key);
          const reply = '{"accepted":true,"reference":"R-1"}';
          res.writeHead(200, { "content-type": "application/json", "content-length": reply.length });
          res.end(reply);
        } else {
          res.writeHead(404, { "content-length": 0 });
          res.end();
        }
      });
    });
    this.server.keepAliveTimeout = 60_000;
  }

  async start() {
    await new Promise((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.url = `http://127.0.0.1:${this.server.address().port}/act`;
  }

  async stop() {
    this.server.closeAllConnections?.();
    await new Promise((resolve) => this.server.close(() => resolve()));
  }
}

// ------------------------------------------------------------------------------------------
// The server.
// ------------------------------------------------------------------------------------------

function restateServerExecutable() {
  // The npm package ships the binary in a per-platform optional dependency.
  return require.resolve(`@restatedev/restate-server-${os.platform()}-${os.arch()}/bin/restate-server`);
}

function restateServerVersion() {
  try {
    return require("@restatedev/restate-server/package.json").version;
  } catch {
    return "?";
  }
}

function sdkVersion() {
  try {
    const dir = path.dirname(require.resolve("@restatedev/restate-sdk"));
    return JSON.parse(fs.readFileSync(path.join(dir, "..", "package.json"), "utf8")).version;
  } catch {
    return "?";
  }
}

class RestateServer {
  constructor(workdir) {
    this.workdir = workdir;
    this.dataDir = path.join(workdir, "data");
    this.logPath = path.join(workdir, "server.log");
    this.proc = null;
    this.exited = null;
  }

  async start() {
    const [nodePort, adminPort, ingressPort] = [await freePort(), await freePort(), await freePort()];
    this.nodeUrl = `http://127.0.0.1:${nodePort}`;
    this.adminUrl = `http://127.0.0.1:${adminPort}`;
    this.ingressUrl = `http://127.0.0.1:${ingressPort}`;
    const config = [
      `base-dir = ${JSON.stringify(this.dataDir)}`,
      `bind-address = "127.0.0.1:${nodePort}"`,
      `advertised-address = "http://127.0.0.1:${nodePort}/"`,
      `disable-telemetry = true`,
      `shutdown-timeout = "10s"`,
      `log-filter = "error"`,
      ...(flags.partitions ? [`default-num-partitions = ${Number(flags.partitions)}`] : []),
      ...(flags["invoker-limit"]
        ? [`[worker.invoker]`, `concurrent-invocations-limit = ${Number(flags["invoker-limit"])}`]
        : []),
      `[admin]`,
      `bind-address = "127.0.0.1:${adminPort}"`,
      `disable-web-ui = true`,
      `[ingress]`,
      `bind-address = "127.0.0.1:${ingressPort}"`,
      "",
    ].join("\n");
    fs.writeFileSync(path.join(this.workdir, "restate.toml"), config);
    this.log = fs.openSync(this.logPath, "w");
    this.proc = spawn(
      restateServerExecutable(),
      ["--config-file", path.join(this.workdir, "restate.toml"), "--no-logo", "--listen-mode", "tcp",
        "--node-name", "bench", "--log-disable-ansi-codes", "true"],
      { stdio: ["ignore", this.log, this.log], detached: true, env: { ...process.env, DO_NOT_TRACK: "1" } },
    );
    this.exited = new Promise((resolve) => this.proc.on("exit", (code, signal) => resolve({ code, signal })));
  }

  logTail() {
    try {
      return fs.readFileSync(this.logPath, "utf8").slice(-4000);
    } catch {
      return "";
    }
  }

  async waitReady(agent, timeoutS = 60) {
    const deadline = Date.now() + timeoutS * 1000;
    let last = null;
    while (Date.now() < deadline) {
      if (!this.running()) throw new Error(`restate-server exited (${this.proc.exitCode ?? this.proc.signalCode}):\n${this.logTail()}`);
      try {
        const admin = await request(agent, "GET", `${this.adminUrl}/health`, { timeoutMs: 1000 });
        const ingress = await request(agent, "GET", `${this.ingressUrl}/restate/health`, { timeoutMs: 1000 });
        if (admin.status === 200 && ingress.status === 200) return;
        last = `admin ${admin.status}, ingress ${ingress.status}`;
      } catch (e) {
        last = e.message;
      }
      await sleep(200);
    }
    throw new Error(`restate-server did not come up in ${timeoutS}s: ${last}\n${this.logTail()}`);
  }

  running() {
    return this.proc !== null && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /**
   * Waits until every partition has an active leader (`restate_num_active_partition_leaders` on
   * the node's /metrics). Admin and ingress answer /health seconds before that, and cases sent
   * earlier wait for partition leadership. Keel's engine is likewise fully started before timing.
   */
  async waitLeaders(agent, partitions, timeoutS = 120) {
    const deadline = Date.now() + timeoutS * 1000;
    let leaders = 0;
    while (Date.now() < deadline) {
      if (!this.running()) throw new Error(`restate-server exited:\n${this.logTail()}`);
      try {
        const res = await request(agent, "GET", `${this.nodeUrl}/metrics`, { timeoutMs: 2000 });
        const line = res.body.split("\n").find((l) => l.startsWith("restate_num_active_partition_leaders"));
        leaders = line ? Number(line.trim().split(/\s+/).pop()) : 0;
        if (leaders >= partitions) return leaders;
      } catch {
        /* retry */
      }
      await sleep(100);
    }
    throw new Error(`only ${leaders} of ${partitions} partitions had a leader after ${timeoutS}s`);
  }

  peakRssMib() {
    return this.proc ? vmHwmKib(this.proc.pid) / 1024 : 0;
  }

  async stop() {
    if (!this.proc || !this.running()) return;
    try {
      process.kill(-this.proc.pid, "SIGTERM");
    } catch {
      /* gone */
    }
    const done = await Promise.race([this.exited, sleep(15_000).then(() => null)]);
    if (!done) {
      try {
        process.kill(-this.proc.pid, "SIGKILL");
      } catch {
        /* gone */
      }
      await Promise.race([this.exited, sleep(5_000)]);
    }
    fs.closeSync(this.log);
  }
}

// ------------------------------------------------------------------------------------------
// The benchmark.
// ------------------------------------------------------------------------------------------

async function run(state) {
  const workdir = fs.mkdtempSync(path.join(os.tmpdir(), "restate-bench-"));
  state.workdir = workdir;
  const server = new RestateServer(workdir);
  state.server = server;
  const downstream = new Downstream();
  state.downstream = downstream;
  // Separate keep-alive pools for submitting and for awaiting results (cf. temporal_bench.py).
  const adminAgent = new http.Agent({ keepAlive: true, maxSockets: 4 });
  const submitAgent = new http.Agent({ keepAlive: true, maxSockets: Infinity });
  // One HTTP/1.1 connection per awaited case, up to --max-attach-connections; more wait in the
  // agent's queue (needed above ~8000 cases in flight: the fd limit here is 20000).
  const attachAgent = new http.Agent({ keepAlive: true, maxSockets: Number(flags["max-attach-connections"]) });
  state.agents = [adminAgent, submitAgent, attachAgent, actionAgent];

  await server.start();
  const bootStarted = performance.now();
  await server.waitReady(adminAgent);
  await server.waitLeaders(adminAgent, PARTITIONS);
  const serverReadyS = (performance.now() - bootStarted) / 1000;
  await downstream.start();

  // The SDK endpoint: HTTP/2 (h2c), in this process.
  const endpoint = http2.createServer(restate.createEndpointHandler({ services: [definition] }));
  state.endpoint = endpoint;
  const sessions = new Set();
  state.sessions = sessions;
  endpoint.on("session", (s) => {
    sessions.add(s);
    s.on("close", () => sessions.delete(s));
  });
  await new Promise((resolve) => endpoint.listen(0, "127.0.0.1", resolve));
  const endpointUrl = `http://127.0.0.1:${endpoint.address().port}/`;

  // Register the deployment through the admin API.
  const reg = await request(adminAgent, "POST", `${server.adminUrl}/deployments`, {
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ uri: endpointUrl }),
    timeoutMs: 30_000,
  });
  if (reg.status !== 201 && reg.status !== 200) throw new Error(`registering ${endpointUrl} failed: ${reg.status} ${reg.body}`);
  // Wait until the ingress knows the service (schema propagation is asynchronous). HEAD on the
  // handler path answers 404 while the service is unknown and 405 once it is known; it does not
  // start an invocation (GET would).
  for (let tries = 0; ; tries++) {
    const probe = await request(submitAgent, "HEAD", `${server.ingressUrl}/${SERVICE}/${flags.workflow ? "probe/" : ""}run`, { timeoutMs: 5000 });
    if (probe.status !== 404) break;
    if (tries > 300) throw new Error("the ingress never learned the registered service");
    await sleep(20);
  }

  const runTag = `${process.pid}-${Date.now()}`;
  const latencies = [];
  const outcomes = {};
  const failures = [];
  let nextI = 0;
  let resolveDone;
  const allDone = new Promise((resolve) => (resolveDone = resolve));
  const finished = (kind) => {
    outcomes[kind] = (outcomes[kind] ?? 0) + 1;
    if (countDone() >= TOTAL) resolveDone();
  };
  const countDone = () => Object.values(outcomes).reduce((a, b) => a + b, 0) + failures.length;
  const fail = (what) => {
    failures.push(what);
    if (countDone() >= TOTAL) resolveDone();
  };
  const outcomeOf = (body) => {
    try {
      return JSON.parse(body).outcome ?? "?";
    } catch {
      return "?";
    }
  };
  const caseKey = (i) => `bench-${runTag}-${String(i).padStart(7, "0")}`;
  const handlerPath = (i) => (flags.workflow ? `/${SERVICE}/${caseKey(i)}/run` : `/${SERVICE}/run`);
  const jsonHeaders = { "content-type": "application/json" };

  async function awaitResult(i, invocationId, began) {
    const url = flags.workflow
      ? `${server.ingressUrl}/restate/workflow/${SERVICE}/${caseKey(i)}/attach`
      : `${server.ingressUrl}/restate/invocation/${invocationId}/attach`;
    try {
      const res = await request(attachAgent, "GET", url);
      if (res.status !== 200) return fail(`${invocationId}: attach answered ${res.status} ${res.body.slice(0, 200)}`);
      latencies.push(performance.now() - began);
      finished(outcomeOf(res.body));
    } catch (e) {
      fail(`${invocationId}: ${e.message}`);
    }
  }

  async function submitter() {
    for (;;) {
      const i = nextI++;
      if (i >= TOTAL) return;
      const body = JSON.stringify(benchInput(i, downstream.url));
      const began = performance.now();
      try {
        if (flags["closed-loop"]) {
          const res = await request(submitAgent, "POST", `${server.ingressUrl}${handlerPath(i)}`, { headers: jsonHeaders, body });
          if (res.status !== 200) {
            fail(`case ${i}: call answered ${res.status} ${res.body.slice(0, 200)}`);
            continue;
          }
          latencies.push(performance.now() - began);
          finished(outcomeOf(res.body));
        } else {
          const res = await request(submitAgent, "POST", `${server.ingressUrl}${handlerPath(i)}/send`, { headers: jsonHeaders, body });
          if (res.status !== 200 && res.status !== 202) {
            fail(`case ${i}: send answered ${res.status} ${res.body.slice(0, 200)}`);
            continue;
          }
          const { invocationId } = JSON.parse(res.body);
          awaitResult(i, invocationId, began); // not awaited: open loop
        }
      } catch (e) {
        fail(`case ${i}: ${e.message}`);
      }
    }
  }

  const cpuBefore = { server: cpuSeconds(server.proc.pid), bench: cpuSeconds("self") };
  const started = performance.now();
  const progress = setInterval(() => {
    const n = Object.values(outcomes).reduce((a, b) => a + b, 0);
    const el = (performance.now() - started) / 1000;
    process.stderr.write(
      `\r${n}/${TOTAL} cases completed, ${failures.length} failed, submitted ${Math.min(nextI, TOTAL)}` +
        ` (${(n / el).toFixed(0)}/s, ${el.toFixed(0)}s)   `,
    );
  }, 1000);
  state.progress = progress;
  await Promise.all(Array.from({ length: CONCURRENCY }, submitter));
  const submitS = (performance.now() - started) / 1000;
  let timer;
  const timedOut = await Promise.race([
    allDone.then(() => false),
    new Promise((resolve) => (timer = setTimeout(() => resolve(true), TIMEOUT_S * 1000))),
  ]);
  clearTimeout(timer);
  if (timedOut) failures.push(`timed out after ${TIMEOUT_S}s waiting for completions`);
  const elapsedS = (performance.now() - started) / 1000;
  clearInterval(progress);
  process.stderr.write("\n");

  latencies.sort((a, b) => a - b);
  const completed = Object.values(outcomes).reduce((a, b) => a + b, 0);
  const figures = {
    benchmark: `restate-server, typescript sdk (reference workflow as a ${flags.workflow ? "workflow" : "service"})`,
    restate_server: restateServerVersion(),
    restate_sdk: sdkVersion(),
    node: process.version,
    persistence: "on disk: RocksDB (replicated loglet on the local log-server, WAL fsync on; partition store) in a temp dir",
    partitions: PARTITIONS,
    invoker_limit: flags["invoker-limit"] ? Number(flags["invoker-limit"]) : "server default (1000)",
    server_ready_s: serverReadyS,
    mode: flags["closed-loop"] ? "closed loop (ingress request/response call per submitter)" : "open loop (as keel): /send, then attach",
    cases: TOTAL,
    cases_completed: completed,
    outcomes,
    cases_failed: failures.length,
    actions_received: downstream.hits,
    distinct_idempotency_keys: downstream.keys.size,
    concurrency: CONCURRENCY,
    elapsed_s: elapsedS,
    submit_phase_s: submitS,
    cases_per_s: completed / elapsedS,
    latency_p50_ms: percentile(latencies, 0.5),
    latency_p99_ms: percentile(latencies, 0.99),
    server_cpu_s: cpuSeconds(server.proc.pid) - cpuBefore.server,
    bench_process_cpu_s: cpuSeconds("self") - cpuBefore.bench,
    server_peak_rss_mib: server.peakRssMib(),
    bench_process_peak_rss_mib: vmHwmKib("self") / 1024,
    // RocksDB files (WAL + SSTs) under the data dir at the end of the run, before shutdown.
    data_dir_bytes_per_case: Math.floor(dirBytes(server.dataDir) / Math.max(1, TOTAL)),
  };
  if (failures.length) figures.first_failures = failures.slice(0, 3);
  return figures;
}

async function cleanup(state) {
  if (state.cleaned) return;
  state.cleaned = true;
  if (state.progress) clearInterval(state.progress);
  for (const s of state.sessions ?? []) s.destroy();
  if (state.endpoint) await new Promise((resolve) => state.endpoint.close(() => resolve()));
  for (const a of state.agents ?? []) a.destroy();
  if (state.downstream) await state.downstream.stop().catch(() => {});
  if (state.server) await state.server.stop();
  if (state.workdir) fs.rmSync(state.workdir, { recursive: true, force: true });
}

const state = {};
for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, async () => {
    log("\ninterrupted");
    await cleanup(state);
    process.exit(130);
  });
}

let figures;
try {
  figures = await run(state);
} catch (e) {
  log(`error: ${e.stack ?? e}`);
  await cleanup(state);
  process.exit(1);
}
await cleanup(state);
if (flags.json) {
  process.stdout.write(JSON.stringify(figures) + "\n");
} else {
  process.stdout.write(figures.benchmark + "\n");
  for (const [k, v] of Object.entries(figures)) {
    if (k === "benchmark") continue;
    const shown = typeof v === "number" && !Number.isInteger(v) ? v.toFixed(2) : typeof v === "object" ? JSON.stringify(v) : v;
    process.stdout.write(`  ${k.padEnd(32)} ${shown}\n`);
  }
}
process.exit(0);
