// `make bench`: our queue beside graphile-worker and pg-boss on the same local
// PostgreSQL, with the same durability settings (the cluster's defaults:
// fsync and synchronous_commit on), in one run. Prints a Markdown table and
// writes bench/results/results.md and chart.svg. It measures; it never fails
// on a figure.
//
// Knobs (environment): BENCH_TASKS (20000), BENCH_LATENCY_TASKS (1000),
// BENCH_LATENCY_GAP_MS (20), BENCH_COST_TASKS (2000), BENCH_INFLIGHT
// ("10,100,1000"), BENCH_INFLIGHT_WAVES (6), BENCH_SCENARIOS (drain, cost,
// latency, inflight), BENCH_ONLY (contender keys,
// comma-separated), BENCH_KEEP_DBS (1 keeps the databases afterwards),
// BENCH_RUNNER_ENV (JSON of extra RUNNER_* settings for the runner, to try one),
// BENCH_RUNNER_LOG_LEVEL (info, the runner's default).

import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Child } from "./lib/child.mjs";
import {
  connect, databaseOid, dropDatabase, HOST, lsnDiff, PGPORT, serverFacts, urlFor, walLsn,
} from "./lib/pg.mjs";
import { graphile, ours, pgboss } from "./lib/systems.mjs";
import { walForDatabase } from "./lib/wal.mjs";
import { startWireCounter } from "./lib/wire.mjs";
import { renderChart, renderMarkdown } from "./lib/report.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "..");
const env = (name, fallback) => process.env[name] ?? fallback;
const knobs = {
  tasks: Number(env("BENCH_TASKS", 20000)),
  latencyTasks: Number(env("BENCH_LATENCY_TASKS", 1000)),
  latencyGapMs: Number(env("BENCH_LATENCY_GAP_MS", 20)),
  costTasks: Number(env("BENCH_COST_TASKS", 2000)),
  inflight: env("BENCH_INFLIGHT", "10,100,1000").split(",").map(Number),
  inflightWaves: Number(env("BENCH_INFLIGHT_WAVES", 6)),
  only: env("BENCH_ONLY", "") ? env("BENCH_ONLY").split(",") : null,
  scenarios: env("BENCH_SCENARIOS", "drain,cost,latency,inflight").split(","),
};

const wallMs = () => performance.timeOrigin + performance.now();
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const log = (message) => process.stderr.write(`bench: ${message}\n`);

function gitCommit() {
  try {
    return execFileSync("git", ["-C", root, "rev-parse", "--short", "HEAD"]).toString().trim();
  } catch {
    return "unknown";
  }
}

/** When the server started; waits through a restart (up to a minute). */
async function postmasterStart(admin) {
  for (let i = 0; ; i++) {
    try {
      const [row] = await admin`select pg_postmaster_start_time()::text as t`;
      return row.t;
    } catch (error) {
      if (i >= 60) throw error;
      await sleep(1000);
    }
  }
}

// ------------------------------------------------------------------ contenders

const nodeWorker = (file) => (settings) =>
  ["node", [path.join(here, "workers", file)], { BENCH_WORKER: JSON.stringify(settings) }];

const runnerEnv = JSON.parse(env("BENCH_RUNNER_ENV", "{}"));
const runnerWorker = (settings) => {
  const deno = path.join(root, ".tools/node_modules/.bin/deno");
  return [deno, ["run", "--config", path.join(root, "deno.json"), "--allow-net", "--allow-env",
    "--allow-read", "--allow-sys", path.join(here, "workers/ours_runner.ts")],
    { BENCH_WORKER: JSON.stringify({ ...settings, runnerEnv,
      logLevel: env("BENCH_RUNNER_LOG_LEVEL", "info") }) }];
};

// Each contender with the settings of each scenario. Concurrency 24 for the
// peers is graphile-worker's own benchmark setting; ours holds up to 100
// tasks and claims 50 at a time.
const contenders = [
  {
    key: "ours-runner", label: "ours (runner)", system: ours, spawn: runnerWorker,
    available: () => existsSync(path.join(here, "workers/ours_runner.ts")) &&
      existsSync(path.join(root, "runner/worker.ts")),
    drain: { concurrency: 100, batchSize: 50 },
    latency: { concurrency: 10, batchSize: 10 },
    inflight: (level) => ({ concurrency: level, batchSize: Math.min(level, 100),
      modelDelayMs: 1000 }),
  },
  {
    key: "ours-sql", label: "ours (SQL, unbatched)", system: ours, spawn: nodeWorker("ours_sql.mjs"),
    drain: { concurrency: 100, batchSize: 50, poolSize: 10 },
    latency: { concurrency: 10, batchSize: 10, poolSize: 10 },
    inflight: (level) => ({ concurrency: level, batchSize: Math.min(level, 100), poolSize: 10,
      modelDelayMs: 1000 }),
  },
  {
    key: "graphile-fast", label: "graphile-worker (fast)", system: graphile,
    spawn: nodeWorker("graphile.mjs"),
    drain: { concurrency: 24, fast: true },
    latency: { concurrency: 24, fast: true },
    inflight: (level) => ({ concurrency: level, fast: true, handlerDelayMs: 1000 }),
  },
  {
    key: "graphile-default", label: "graphile-worker (defaults)", system: graphile,
    spawn: nodeWorker("graphile.mjs"),
    drain: { concurrency: 24, fast: false },
    latency: { concurrency: 24, fast: false },
  },
  {
    key: "pgboss", label: "pg-boss", system: pgboss, spawn: nodeWorker("pgboss.mjs"),
    drain: { batchSize: 100, loops: 10 },
    latency: { batchSize: 100, loops: 10 },
  },
].filter((c) => (c.available ? c.available() : true))
  .filter((c) => !knobs.only || knobs.only.includes(c.key));

// ------------------------------------------------------------------ scenarios

async function startWorker(contender, settings, port = PGPORT) {
  const url = urlFor(contender.system.db, port);
  const [command, args, childEnv] = contender.spawn({ url, ...settings });
  const child = new Child(contender.key, command, args, childEnv);
  await child.waitFor("ready", 120_000);
  return child;
}

async function untilDrained(system, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (await system.pending()) {
    if (Date.now() > deadline) throw new Error(`${system.name}: not drained in ${timeoutMs} ms`);
    await sleep(20);
  }
}

/** Queue `n` tasks in one transaction while the worker idles; time until all are done. */
async function drain(contender, n,
  { countWire = false, settings = contender.drain, warmup = 200 } = {}) {
  const { system } = contender;
  await system.reset();
  const counter = countWire ? await startWireCounter({ host: HOST, port: PGPORT }) : null;
  const child = await startWorker(contender, settings, counter?.port);
  try {
    // A short warm-up, so that connections, prepared statements and plans exist.
    if (warmup > 0) {
      await system.enqueueBulk(1_000_001, 1_000_000 + warmup);
      await untilDrained(system, 60_000);
      await sleep(300);
    }

    const startLsn = await walLsn(system.sql);
    const before = counter?.counts();
    const xid = await system.enqueueBulk(1, n);
    const t0 = wallMs();
    await untilDrained(system, 600_000);
    const seconds = (wallMs() - t0) / 1000;
    const after = counter?.counts();
    const endLsn = await walLsn(system.sql);
    const result = { n, seconds, perSecond: n / seconds, peakRss: child.peakRss() };

    if (counter) {
      const oid = await databaseOid(system.sql, system.db);
      const wal = await walForDatabase({
        walDir: path.join((await serverFacts(system.sql)).data_directory, "pg_wal"),
        startLsn, endLsn, dbOid: oid, excludeXids: [xid],
        lsnDiffBytes: await lsnDiff(system.sql, startLsn, endLsn),
      });
      result.cost = {
        statements: (after.statements - before.statements) / n,
        roundTrips: (after.roundTrips - before.roundTrips) / n,
        transactions: (after.transactions - before.transactions) / n,
        walBytes: wal.bytes / n,
        walCommits: wal.commits === null ? null : wal.commits / n,
        walMethod: wal.method,
      };
    }
    return result;
  } finally {
    await child.stop();
    await counter?.close();
  }
}

/** An idle worker; tasks queued one at a time; enqueue commit to handler, in ms. */
async function latency(contender, count, gapMs) {
  const { system } = contender;
  await system.reset();
  const child = await startWorker(contender, { ...contender.latency, recordLatency: true });
  try {
    for (let i = 0; i < 20; i++) {
      await system.enqueueOne(2_000_000 + i);
      await sleep(gapMs);
    }
    await untilDrained(system, 60_000);
    await sleep(500);

    const committed = new Map();
    for (let seq = 1; seq <= count; seq++) {
      await system.enqueueOne(seq);
      committed.set(seq, wallMs());
      await sleep(gapMs);
    }
    await untilDrained(system, 120_000);
    child.send({ cmd: "report" });
    const { received } = await child.waitFor("report");
    const got = new Map(received);
    const samples = [];
    for (const [seq, at] of committed) {
      if (got.has(seq)) samples.push(got.get(seq) - at);
    }
    samples.sort((a, b) => a - b);
    const pct = (p) => samples[Math.min(samples.length - 1, Math.floor(p * samples.length))];
    return { count: samples.length, p50: pct(0.5), p95: pct(0.95), p99: pct(0.99),
      max: samples.at(-1) };
  } finally {
    await child.stop();
  }
}

// --------------------------------------------------------------------- main

async function main() {
  const started = new Date();
  const commit = gitCommit();
  const admin = connect("postgres");
  const facts = await serverFacts(admin);
  log(`PostgreSQL ${facts.version}, fsync=${facts.fsync}, ` +
    `synchronous_commit=${facts.synchronous_commit}; contenders: ` +
    contenders.map((c) => c.key).join(", "));

  const systems = [...new Set(contenders.map((c) => c.system))];
  for (const system of systems) {
    log(`setting up ${system.db}`);
    await system.setup(admin, root);
  }

  let restarts = 0;
  const results = Object.fromEntries(contenders.map((c) => [c.key, { label: c.label }]));
  // Other sessions on this machine may restart the shared cluster; a step the
  // restart cut short (or that overlapped it) is run again, up to twice.
  const step = async (what, run) => {
    for (let attempt = 1; ; attempt++) {
      const t = wallMs();
      const bootBefore = await postmasterStart(admin);
      let result;
      try {
        result = await run();
      } catch (error) {
        result = { error: error.message.split("\n")[0] };
      }
      const bootAfter = await postmasterStart(admin);
      log(`${what} ${result.error ? `failed (${result.error})` : "done"} in ` +
        `${((wallMs() - t) / 1000).toFixed(1)} s`);
      const restarted = bootBefore !== bootAfter || /shutting down|ECONNRE|terminat|CONNECTION_/
        .test(result.error ?? "");
      if (!restarted || attempt === 3) {
        if (attempt > 1) result.attempts = attempt;
        return result;
      }
      log(`${what}: the cluster restarted during the step; running it again`);
      restarts++;
    }
  };

  try {
    const want = (scenario) => knobs.scenarios.includes(scenario);
    for (const c of want("drain") ? contenders : []) {
      results[c.key].drain = await step(`${c.key} drain ${knobs.tasks}`,
        () => drain(c, knobs.tasks));
    }
    for (const c of want("cost") ? contenders : []) {
      results[c.key].cost = await step(`${c.key} cost ${knobs.costTasks}`,
        () => drain(c, knobs.costTasks, { countWire: true }));
    }
    for (const c of want("latency") ? contenders.filter((c) => c.key !== "graphile-default") : []) {
      const count = c.key === "pgboss" ? Math.min(200, knobs.latencyTasks) : knobs.latencyTasks;
      results[c.key].latency = await step(`${c.key} latency ${count}`,
        () => latency(c, count, knobs.latencyGapMs));
    }
    for (const c of want("inflight") ? contenders.filter((c) => c.inflight) : []) {
      results[c.key].inflight = {};
      for (const level of knobs.inflight) {
        results[c.key].inflight[level] = await step(`${c.key} in-flight ${level}`,
          () => drain(c, level * knobs.inflightWaves,
            { settings: c.inflight(level), warmup: 0 }));
      }
    }
  } finally {
    for (const system of systems) await system.close();
    if (process.env.BENCH_KEEP_DBS !== "1") {
      for (const system of systems) await dropDatabase(admin, system.db);
    }
    await admin.end({ timeout: 5 });
  }

  const machine = {
    cores: os.cpus().length,
    cpu: os.cpus()[0]?.model ?? "unknown",
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    postgres: facts.version,
    durability: `fsync=${facts.fsync}, synchronous_commit=${facts.synchronous_commit}, ` +
      `wal_sync_method=${facts.wal_sync_method}, shared_buffers=${facts.shared_buffers}`,
    node: process.version,
    date: started.toISOString(),
    durationSeconds: Math.round((Date.now() - started.getTime()) / 1000),
    command: "make bench",
    commit,
    restarts,
  };
  const markdown = renderMarkdown({ machine, knobs, results });
  process.stdout.write(markdown + "\n");

  const out = path.join(here, "results");
  mkdirSync(path.join(out, "raw"), { recursive: true });
  writeFileSync(path.join(out, "results.md"), markdown + "\n");
  writeFileSync(path.join(out, "chart.svg"), renderChart({ machine, results }));
  writeFileSync(path.join(out, "raw", `results-${started.toISOString()}.json`),
    JSON.stringify({ machine, knobs, results }, null, 2));
  log(`wrote ${path.relative(root, out)}/results.md and chart.svg`);
}

// `node bench/run.mjs --render FILE.json` writes results.md and chart.svg again
// from a raw results file (after a change to the report's wording).
if (process.argv[2] === "--render") {
  const { machine, knobs: saved, results } = JSON.parse(readFileSync(process.argv[3], "utf8"));
  const out = path.join(here, "results");
  const markdown = renderMarkdown({ machine, knobs: saved, results });
  writeFileSync(path.join(out, "results.md"), markdown + "\n");
  writeFileSync(path.join(out, "chart.svg"), renderChart({ machine, results }));
  process.stdout.write(markdown + "\n");
} else {
  await main();
}
