// `deno task status` run as a subprocess against a migrated database
// (DATABASE_URL) holding a known data set of its own project, asserting the
// figures it prints; then --failed, --retry-failed, --watch, bad flags, and
// the supabase-js path through the PostgREST stand-in.
import postgres from "postgres";
import { signJwt, startPostgrestStandin } from "./testing/postgrest_standin.ts";
import { CLEAR, renderStats, seconds, type Stats, table } from "./status.ts";
import { assert, assertEquals } from "./testing/assert.ts";

const DATABASE_URL = Deno.env.get("DATABASE_URL");
if (!DATABASE_URL) {
  console.warn(
    "status_test: database tests SKIPPED, DATABASE_URL is not set " +
      "(e.g. postgres://postgres@127.0.0.1:54329/dev_ops after scripts/migrate.sh)",
  );
}

/** The line of `output` that starts (after indentation) with `label`, split into cells. */
function row(output: string, label: string): string[] {
  const line = output.split("\n").find((l) => l.trimStart().startsWith(label));
  assert(line !== undefined, `a line starting with "${label}" in:\n${output}`);
  return line.trim().split(/ {2,}/);
}

/** The cells of the row below the header line that starts with `header`. */
function rowUnder(output: string, header: string): string[] {
  const lines = output.split("\n");
  const i = lines.findIndex((l) => l.trimStart().startsWith(header));
  assert(i >= 0, `a header "${header}" in:\n${output}`);
  return lines[i + 1].trim().split(/ {2,}/);
}

const SECRET = "status-test-secret-that-is-long-enough-0123456789";
const ROOT = new URL("..", import.meta.url).pathname;

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs runner/status.ts with only the given environment (plus PATH and HOME). */
async function status(args: string[], env: Record<string, string>): Promise<Run> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-net",
      "--allow-env",
      "--allow-read",
      "--allow-sys",
      "runner/status.ts",
      ...args,
    ],
    cwd: ROOT,
    clearEnv: true,
    env: {
      PATH: Deno.env.get("PATH") ?? "",
      HOME: Deno.env.get("HOME") ?? "/tmp",
      DENO_NO_UPDATE_CHECK: "1",
      ...env,
    },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder();
  return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
}

interface Fixture {
  db: postgres.Sql;
  project: string;
  other: string;
  failedIds: string[];
}

/**
 * Project `project`: in the last 5 minutes four tasks completed (runs of 1,
 * 2, 3 and 4 s) and one failed; 10 and 30 minutes ago two more completed (10
 * and 20 s) and one failed; one was cancelled; two days ago at noon UTC one
 * completed with 120 prompt and 30 completion tokens costing $0.0125. Two
 * tasks are due (one for 90 s), one waits for a retry, one runs. The failed
 * ones have an error history. Project `other` has one failed task.
 */
async function withData(fn: (f: Fixture) => Promise<void>) {
  const db = postgres(DATABASE_URL!, { max: 2, onnotice: () => {} });
  const [user] = await db`
    insert into auth.users (email) values (${`status-${crypto.randomUUID()}@test`})
    returning id`;
  const [p] = await db`insert into public.projects (owner_id) values (${user.id}) returning id`;
  const [o] = await db`insert into public.projects (owner_id) values (${user.id}) returning id`;

  const finished = (
    status: string,
    agoS: number,
    runS: number | null,
    result: unknown = {},
    project = p.id,
  ) =>
    db`
      insert into public.ai_tasks (project_id, type, status, attempts, result, errors, error,
                                   started_at, finished_at, created_at)
      values (${project}, 'chat_reply', ${status}, ${status === "cancelled" ? 0 : 1},
              ${status === "completed" ? db.json(result as postgres.JSONValue) : null},
              ${
      status === "failed"
        ? db.json([{
          attempt: 1,
          error: "provider said 503",
          retryable: true,
          worker: "w1",
          at: "2026-12-03T10:00:00Z",
        }])
        : db.json([])
    },
              ${status === "failed" ? "provider said 503" : null},
              ${runS === null ? null : db`now() - make_interval(secs => ${agoS + runS})`},
              now() - make_interval(secs => ${agoS}),
              now() - make_interval(secs => ${agoS + (runS ?? 0) + 60}))
      returning id`;

  for (const [ago, run] of [[60, 1], [120, 2], [180, 3], [240, 4], [600, 10], [1800, 20]]) {
    await finished("completed", ago, run);
  }
  const failedIds = [
    (await finished("failed", 240, 30))[0].id,
    (await finished("failed", 1800, 1))[0].id,
  ];
  await finished("cancelled", 1200, null);
  await db`
    insert into public.ai_tasks (project_id, type, status, attempts, result, started_at,
                                 finished_at)
    values (${p.id}, 'chat_reply', 'completed', 1,
            ${
    db.json({ prompt_tokens: 120, completion_tokens: 30, cost: 0.0125, latency_ms: 800 })
  },
            (date_trunc('day', now() at time zone 'UTC') - interval '2 days'
              + interval '12 hours') at time zone 'UTC' - interval '5 seconds',
            (date_trunc('day', now() at time zone 'UTC') - interval '2 days'
              + interval '12 hours') at time zone 'UTC')`;
  await db`
    insert into public.ai_tasks (project_id, type, run_at, created_at) values
      (${p.id}, 'chat_reply', now() - interval '90 seconds', now() - interval '90 seconds'),
      (${p.id}, 'chat_reply', now() - interval '5 seconds', now() - interval '5 seconds'),
      (${p.id}, 'chat_reply', now() + interval '1 hour', now() - interval '1 minute')`;
  await db`
    insert into public.ai_tasks (project_id, type, status, attempts, started_at, locked_by,
                                 locked_until)
    values (${p.id}, 'chat_reply', 'running', 1, now(), 'w1', now() + interval '5 minutes')`;
  await finished("failed", 60, 1, {}, o.id);

  try {
    await fn({ db, project: p.id, other: o.id, failedIds });
  } finally {
    await db`delete from auth.users where id = ${user.id}`; // cascades to projects and tasks
    await db.end();
  }
}

function dbTest(name: string, fn: (f: Fixture) => Promise<void>) {
  Deno.test({
    name,
    ignore: !DATABASE_URL,
    sanitizeResources: false,
    sanitizeOps: false,
    fn: () => withData(fn),
  });
}

// ------------------------------------------------------------------ stats

function assertProjectFigures(out: string, project: string) {
  assert(out.includes(`project ${project}`), "the header names the project");
  const now = rowUnder(out, "queued");
  assertEquals(
    now.slice(0, 5),
    ["3", "2", "1", "1", "0"],
    "queued, due, waiting retry, running, lease expired",
  );
  assert(/^1m 3\ds$/.test(now[5]), `the oldest due task waits about 90 s, got ${now[5]}`);
  assertEquals(
    rowUnder(out, "completed"),
    ["7", "2", "1"],
    "finished in 7 days: completed, failed, cancelled",
  );
  assertEquals(
    row(out, "5 min"),
    ["5 min", "4", "1", "0", "0.80", "20.0%", "2.5s", "3.85s"],
    "5 minutes: 4 completed, 1 failed, 0.8 a minute, 20% failed, p50 2.5 s, p95 3.85 s",
  );
  assertEquals(
    row(out, "60 min"),
    ["60 min", "6", "2", "1", "0.10", "25.0%", "3.5s", "17.5s"],
    "60 minutes: 6 completed, 2 failed, 1 cancelled, 0.1 a minute, 25% failed, " +
      "p50 3.5 s, p95 17.5 s",
  );
  const twoDaysAgo = new Date(Date.now() - 2 * 86_400_000).toISOString().slice(0, 10);
  assertEquals(row(out, twoDaysAgo), [
    twoDaysAgo,
    project,
    "1",
    "0",
    "120",
    "30",
    "$0.0125",
    "800 ms",
  ], "usage two days ago: tokens, cost and model latency");
}

dbTest("status prints a project's counts, windows, percentiles and usage", async (f) => {
  const r = await status(["--project", f.project], { DATABASE_URL: DATABASE_URL! });
  assertEquals(r.code, 0, `exit code (stderr: ${r.stderr})`);
  assertProjectFigures(r.stdout, f.project);
  assert(
    r.stdout.includes("pg_net: no · runner URL: not set"),
    "the dispatch line says what is missing",
  );
  assert(
    r.stdout.includes("Realtime: no supabase_realtime publication in this database"),
    "the Realtime line says the publication is missing",
  );
  assert(!r.stdout.includes("password"), "no connection secret is printed");
});

dbTest("status reads the same figures through supabase-js and PostgREST", async (f) => {
  const standin = await startPostgrestStandin({ databaseUrl: DATABASE_URL!, jwtSecret: SECRET });
  try {
    const serviceKey = await signJwt(
      { role: "service_role", exp: Math.floor(Date.now() / 1000) + 600 },
      SECRET,
    );
    const r = await status(["--project", f.project], {
      SUPABASE_URL: standin.url,
      SUPABASE_SERVICE_ROLE_KEY: serviceKey,
    });
    assertEquals(r.code, 0, `exit code (stderr: ${r.stderr})`);
    assert(r.stdout.includes(`supabase-js ${standin.url}`), "the header says supabase-js");
    assertProjectFigures(r.stdout, f.project);

    const anonKey = await signJwt(
      { role: "anon", exp: Math.floor(Date.now() / 1000) + 600 },
      SECRET,
    );
    const denied = await status([], {
      SUPABASE_URL: standin.url,
      SUPABASE_SERVICE_ROLE_KEY: anonKey,
    });
    assertEquals(denied.code, 1, "an anon key is refused");
    assert(
      denied.stderr.includes("ai_task_stats: permission denied"),
      `the refusal names the call, got ${denied.stderr}`,
    );
  } finally {
    await standin.close();
  }
});

dbTest("status --json prints what ai_task_stats returned", async (f) => {
  const r = await status(["--project", f.project, "--json", "--days", "1"], {
    DATABASE_URL: DATABASE_URL!,
  });
  assertEquals(r.code, 0, `exit code (stderr: ${r.stderr})`);
  const stats = JSON.parse(r.stdout) as Stats;
  assertEquals(stats.usage_days, 1, "--days reaches usage_days");
  assertEquals(stats.counts.completed, 6, "the two-day-old task is outside one day");
});

// ------------------------------------------------------------------ failed tasks

dbTest("status --failed lists a project's failed tasks with their error history", async (f) => {
  const r = await status(["--failed", "--project", f.project], { DATABASE_URL: DATABASE_URL! });
  assertEquals(r.code, 0, `exit code (stderr: ${r.stderr})`);
  const lines = r.stdout.split("\n");
  const headers = lines.filter((l) => /^[0-9a-f-]{36} {2}chat_reply/.test(l));
  assertEquals(
    headers.map((l) => l.slice(0, 36)),
    f.failedIds,
    "both failed tasks, newest failure first",
  );
  assert(headers.every((l) => l.includes("attempts 1/3")), "with their attempt counts");
  assertEquals(row(r.stdout, "1  2026-12-03 10:00:00"), [
    "1",
    "2026-12-03 10:00:00",
    "w1",
    "yes",
    "provider said 503",
  ], "each failed attempt: number, time, worker, retryable, error");
  assert(!r.stdout.includes(f.other), "another project's failure is not listed");
});

dbTest("status --retry-failed queues a project's failed tasks again", async (f) => {
  const r = await status(["--retry-failed", "--project", f.project, "--extra-attempts", "5"], {
    DATABASE_URL: DATABASE_URL!,
  });
  assertEquals(r.code, 0, `exit code (stderr: ${r.stderr})`);
  assert(
    r.stdout.startsWith(`Queued 2 failed tasks again (project ${f.project}`),
    `it says how many, got ${r.stdout}`,
  );
  const rows = await f.db`
    select status, attempts, max_attempts from public.ai_tasks
    where id in ${f.db(f.failedIds)}`;
  assertEquals(rows.map((t) => [t.status, t.attempts, t.max_attempts]), [["queued", 1, 6], [
    "queued",
    1,
    6,
  ]], "queued with attempts kept and 5 more allowed");
  const [other] = await f.db`
    select status from public.ai_tasks where project_id = ${f.other}`;
  assertEquals(other.status, "failed", "the other project's task stays failed");
});

// ------------------------------------------------------------------ watch

dbTest("status --watch redraws in place until interrupted", async (f) => {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-net",
      "--allow-env",
      "--allow-read",
      "--allow-sys",
      "runner/status.ts",
      "--watch",
      "--interval",
      "1",
      "--project",
      f.project,
    ],
    cwd: ROOT,
    clearEnv: true,
    env: {
      PATH: Deno.env.get("PATH") ?? "",
      DATABASE_URL: DATABASE_URL!,
      DENO_NO_UPDATE_CHECK: "1",
    },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const reader = child.stdout.getReader();
  const text = new TextDecoder();
  let seen = "";
  const deadline = Date.now() + 20_000;
  while (seen.split(CLEAR).length < 3 && Date.now() < deadline) {
    const { value, done } = await reader.read();
    if (done) break;
    seen += text.decode(value);
  }
  child.kill("SIGINT");
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    seen += text.decode(value);
  }
  const { code } = await child.status;
  await child.stderr.cancel();
  const screens = seen.split(CLEAR).slice(1);
  assert(screens.length >= 2, `two screens within 20 s, got ${screens.length}`);
  for (const screen of screens.slice(0, 2)) {
    assertEquals(row(screen, "5 min").slice(1, 3), ["4", "1"], "each screen has the figures");
  }
  assert(screens[0].includes("refreshing every 1s"), "the screen says how often it refreshes");
  assertEquals(code, 0, "Ctrl-C ends the watch cleanly");
});

// ------------------------------------------------------------------ bad input

Deno.test("status refuses a bad flag value with exit code 2, naming the flag", async () => {
  const r = await status(["--project", "nope"], { DATABASE_URL: "postgres://127.0.0.1:1/x" });
  assertEquals(r.code, 2, "exit code");
  assert(r.stderr.includes("--project must be a project id (a uuid), got nope"), r.stderr);
  const watchFailed = await status(["--failed", "--watch"], {});
  assertEquals(watchFailed.code, 2, "--watch with --failed is refused");
  assert(watchFailed.stderr.includes("--watch only refreshes the stats"), watchFailed.stderr);
});

Deno.test("status reports an unreachable database with exit code 1 and no password", async () => {
  const r = await status([], { DATABASE_URL: "postgres://ops:hunter2secret@127.0.0.1:1/x" });
  assertEquals(r.code, 1, "exit code");
  assert(r.stderr.startsWith("status: ai_task_stats:"), `names the call, got ${r.stderr}`);
  assert(
    !r.stderr.includes("hunter2secret") && !r.stdout.includes("hunter2secret"),
    "the password is never printed",
  );
});

// ------------------------------------------------------------------ rendering

Deno.test("seconds() prints short runs with decimals and long waits in minutes", () => {
  assertEquals([seconds(null), seconds(2.5), seconds(17.5), seconds(90.4), seconds(7300)], [
    "-",
    "2.5s",
    "17.5s",
    "1m 30s",
    "2h 1m",
  ], "formatted durations");
});

Deno.test("table() right-aligns numbers and left-aligns text", () => {
  assertEquals(
    table(["name", "n"], [["a", "1"], ["bbb", "1,000"]], ""),
    "name      n\na         1\nbbb   1,000",
    "the laid-out table",
  );
});

Deno.test("renderStats() says when pg_cron is missing and never prints a URL", () => {
  const out = renderStats({
    generated_at: "2026-12-03T12:00:00Z",
    project_id: null,
    usage_days: 7,
    counts: {
      queued: 0,
      due: 0,
      waiting_retry: 0,
      running: 0,
      lease_expired: 0,
      oldest_due_seconds: null,
      completed: 0,
      failed: 0,
      cancelled: 0,
    },
    windows: [],
    usage: [],
    dispatch: { pg_net: true, endpoint_source: "vault", enabled: true, cron_jobs: null },
  }, "postgres db:5432/postgres");
  assert(out.includes("pg_net: yes · runner URL: set in vault"), out);
  assert(out.includes("pg_cron: not installed in this database"), out);
  assert(out.includes("no finished tasks"), out);
  assert(out.includes("Realtime: no supabase_realtime publication"), out);
});
