// Shared pieces of the chaos suite: the database it owns, real runner and
// fake-model processes whose every output line is kept (in memory and in the
// run's log directory, which the secret scan reads at the end), and small
// assertion and polling helpers.

import postgres from "postgres";

export const LOCAL_URL = `postgres://postgres@127.0.0.1:${Deno.env.get("PGPORT") ?? "54329"}`;
export const DATABASE_URL = Deno.env.get("CHAOS_DATABASE_URL") ?? `${LOCAL_URL}/ai_tasks_chaos`;
export const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
export const LOG_DIR = Deno.env.get("CHAOS_LOG_DIR") ??
  Deno.makeTempDirSync({ prefix: "chaos-" });
Deno.mkdirSync(LOG_DIR, { recursive: true });

// Secrets of this run: random, so a hit in the scan can only come from a leak.
// The scan also looks for every JWT the suite signs (see rememberSecret).
const runId = crypto.randomUUID().replaceAll("-", "");
export const SECRETS = {
  openrouterKey: `sk-or-chaos-${runId.slice(0, 24)}`,
  httpSecret: `chaos-runner-secret-${runId.slice(8, 32)}`,
  jwtSecret: `chaos-jwt-secret-${runId}-0123456789`,
};
const secrets = new Set<string>(Object.values(SECRETS));
export function rememberSecret(value: string): string {
  secrets.add(value);
  return value;
}
export function allSecrets(): string[] {
  return [...secrets];
}

export class AssertionError extends Error {
  override name = "AssertionError";
}

export function check(condition: unknown, message: string): asserts condition {
  if (!condition) throw new AssertionError(message);
}

export function checkEqual<T>(actual: T, expected: T, message: string): void {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new AssertionError(`${message}: expected ${e}, got ${a}`);
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `probe` until it returns a truthy value; fails with `what` after `ms`. */
export async function waitFor<T>(
  what: string,
  ms: number,
  probe: () => Promise<T> | T,
  everyMs = 100,
): Promise<NonNullable<T>> {
  const until = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (value) return value as NonNullable<T>;
    if (Date.now() > until) throw new AssertionError(`timed out after ${ms} ms: ${what}`);
    await sleep(everyMs);
  }
}

/** Everything the suite prints also goes to the run's log, for the secret scan. */
const suiteLog = await Deno.open(`${LOG_DIR}/suite.out`, { create: true, append: true });
const encoder = new TextEncoder();
export function say(line: string): void {
  console.log(line);
  suiteLog.writeSync(encoder.encode(line + "\n"));
}
/** Records text the suite saw but did not print (HTTP bodies, error messages). */
export function capture(name: string, text: string): void {
  Deno.writeTextFileSync(`${LOG_DIR}/${name}`, text + "\n", { append: true });
}

export function connect(max = 4): postgres.Sql {
  return postgres(DATABASE_URL, {
    max,
    onnotice: () => {},
    connection: { application_name: "chaos" },
  });
}

// ------------------------------------------------------------ processes

/** A child process whose stdout and stderr lines are kept and written to LOG_DIR. */
export class Proc {
  readonly lines: string[] = [];
  readonly #child: Deno.ChildProcess;
  readonly #file: Deno.FsFile;
  readonly #pumped: Promise<void>;
  readonly status: Promise<Deno.CommandStatus>;
  exitedAt: number | null = null;

  constructor(readonly name: string, args: string[], env: Record<string, string>) {
    this.#file = Deno.openSync(`${LOG_DIR}/${name}.log`, { create: true, append: true });
    this.#child = new Deno.Command(Deno.execPath(), {
      args,
      env,
      cwd: ROOT,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#pumped = Promise.all([this.#pump(this.#child.stdout), this.#pump(this.#child.stderr)])
      .then(() => {});
    this.status = this.#child.status.then(async (s) => {
      this.exitedAt = Date.now();
      await this.#pumped;
      this.#file.close();
      return s;
    });
  }

  get pid(): number {
    return this.#child.pid;
  }

  async #pump(stream: ReadableStream<Uint8Array>): Promise<void> {
    const decoder = new TextDecoder();
    let rest = "";
    for await (const chunk of stream) {
      this.#file.writeSync(chunk);
      rest += decoder.decode(chunk, { stream: true });
      const parts = rest.split("\n");
      rest = parts.pop()!;
      this.lines.push(...parts);
    }
    if (rest) this.lines.push(rest);
  }

  /** The JSON log lines (the runner logs JSON when its stdout is not a terminal). */
  events(): Record<string, unknown>[] {
    const out: Record<string, unknown>[] = [];
    for (const line of this.lines) {
      if (!line.startsWith("{")) continue;
      try {
        out.push(JSON.parse(line));
      } catch { /* a line that is not JSON is kept in lines only */ }
    }
    return out;
  }

  waitForEvent(what: string, ms: number, match: (e: Record<string, unknown>) => boolean) {
    return waitFor(what, ms, () => this.events().find(match));
  }

  kill(signal: Deno.Signal): void {
    try {
      this.#child.kill(signal);
    } catch { /* already gone */ }
  }

  /** Stops the process if it still runs (SIGTERM, then SIGKILL after `ms`). */
  async stop(ms = 15_000): Promise<Deno.CommandStatus> {
    if (this.exitedAt === null) this.kill("SIGTERM");
    const timer = setTimeout(() => this.kill("SIGKILL"), ms);
    try {
      return await this.status;
    } finally {
      clearTimeout(timer);
    }
  }
}

const RUN_FLAGS = ["run", "--allow-net", "--allow-env", "--allow-read", "--allow-sys"];

/** The environment every child gets: no inherited keys or database URLs. */
function baseEnv(): Record<string, string> {
  const env: Record<string, string> = { DENO_NO_UPDATE_CHECK: "1", NO_COLOR: "1" };
  for (const name of ["PATH", "HOME", "DENO_DIR", "TMPDIR", "LANG"]) {
    const value = Deno.env.get(name);
    if (value) env[name] = value;
  }
  return env;
}

export interface WorkerOptions {
  name: string;
  /** The fake model's base URL; without one the offline model answers. */
  modelUrl?: string | null;
  env?: Record<string, string>;
  args?: string[];
}

/** The real runner, `runner/main.ts worker`, as a process of its own. */
export function startWorker(o: WorkerOptions): Proc {
  const env: Record<string, string> = {
    ...baseEnv(),
    DATABASE_URL,
    RUNNER_DB_CLIENT: "postgres",
    RUNNER_LOG_FORMAT: "json",
    RUNNER_WORKER_ID: o.name,
    RUNNER_DB_POOL: "4",
    RUNNER_POLL_MS: "100",
    RUNNER_POLL_MAX_MS: "1000",
    ...(o.modelUrl
      ? { OPENROUTER_BASE_URL: o.modelUrl, OPENROUTER_KEY: SECRETS.openrouterKey }
      : {}),
    ...o.env,
  };
  return new Proc(o.name, [...RUN_FLAGS, "runner/main.ts", "worker", ...(o.args ?? [])], env);
}

export interface FakeModel {
  url: string;
  proc: Proc;
  /** SIGTERMs the fake and returns the counts it served per kind. */
  stop(): Promise<Record<string, number>>;
}

/** A fake OpenAI-compatible model as a process: the shared CLI or chaos/fake_model.ts. */
export async function startFakeModel(
  name: string,
  script: string,
  args: string[],
): Promise<FakeModel> {
  const proc = new Proc(name, ["run", "--allow-net", script, "--port", "0", ...args], baseEnv());
  const line = await waitFor(
    `${name} prints its URL`,
    30_000,
    () => proc.lines.find((l) => l.startsWith('{"url"')),
  );
  const url = JSON.parse(line).url as string;
  return {
    url,
    proc,
    async stop() {
      await proc.stop();
      const counts = proc.lines.map((l) => {
        try {
          return JSON.parse(l);
        } catch {
          return null;
        }
      }).find((j) => j?.counts);
      return counts?.counts ?? {};
    },
  };
}

// ------------------------------------------------------------ database

/** Empties the queue's tables between scenarios (the chaos database is ours). */
export async function resetQueue(sql: postgres.Sql): Promise<void> {
  await sql`truncate public.build_logs, public.chat_messages, public.ai_tasks,
            public.projects, auth.users cascade`;
  await sql`delete from public.ai_model_limits`;
  await sql`update public.ai_queue_settings set default_max_running_tasks = 4`;
}

/** Creates `n` users with one project each (running cap `cap`); returns project ids. */
export async function makeProjects(
  sql: postgres.Sql,
  n: number,
  cap: number | null = null,
): Promise<string[]> {
  const rows = await sql`
    with u as (
      insert into auth.users (email)
      select 'chaos-' || g || '-' || gen_random_uuid() || '@example.test'
      from generate_series(1, ${n}::int) g
      returning id
    )
    insert into public.projects (owner_id, name, max_running_tasks)
    select u.id, 'chaos project', ${cap}::int from u
    returning id`;
  return rows.map((r) => String(r.id));
}

/**
 * Inserts `count` chat_reply tasks, each with its user message, round-robin
 * over `projects`, in one statement (a bulk insert as a backend would do).
 */
export async function insertTasks(
  sql: postgres.Sql,
  projects: string[],
  count: number,
  opts: { text?: string; maxAttempts?: number; offset?: number } = {},
): Promise<string[]> {
  const text = opts.text ?? "hello";
  const rows = await sql`
    with t as (
      insert into public.ai_tasks (project_id, type, payload, max_attempts)
      select (${projects}::uuid[])[1 + (${opts.offset ?? 0}::int + g) % ${projects.length}::int],
             'chat_reply', jsonb_build_object('n', g), ${opts.maxAttempts ?? 3}::int
      from generate_series(1, ${count}::int) g
      returning id, project_id
    ), m as (
      insert into public.chat_messages (project_id, role, content, created_at)
      select t.project_id, 'user', ${text} || ' ' || t.id, now() - interval '1 second'
      from t
    )
    select id from t`;
  return rows.map((r) => String(r.id));
}

export interface QueueFigures {
  total: number;
  byStatus: Record<string, number>;
  /** Tasks with more than one assistant message (the unique index forbids it). */
  duplicates: number;
  /** Completed tasks without exactly one assistant message. */
  missingAnswers: number;
  /** Tasks still queued or running. */
  unfinished: number;
}

export async function queueFigures(sql: postgres.Sql, ids?: string[]): Promise<QueueFigures> {
  const scope = ids ? sql`where t.id = any (${ids}::uuid[])` : sql``;
  const rows = await sql`
    select t.status, count(*)::int as n,
           count(*) filter (where a.answers > 1)::int as dup,
           count(*) filter (where t.status = 'completed' and coalesce(a.answers, 0) <> 1)::int
             as missing
    from public.ai_tasks t
    left join lateral (
      select count(*) as answers from public.chat_messages m
      where m.task_id = t.id and m.role = 'assistant'
    ) a on true
    ${scope}
    group by t.status`;
  const byStatus: Record<string, number> = {};
  let total = 0, duplicates = 0, missingAnswers = 0;
  for (const r of rows) {
    byStatus[r.status] = r.n;
    total += r.n;
    duplicates += r.dup;
    missingAnswers += r.missing;
  }
  const unfinished = (byStatus.queued ?? 0) + (byStatus.running ?? 0);
  return { total, byStatus, duplicates, missingAnswers, unfinished };
}

/** Count and digest of every row of the queue's tables: equal before and after = nothing changed. */
export async function tablesChecksum(sql: postgres.Sql): Promise<string> {
  const [row] = await sql`
    select concat_ws(' ',
      (select count(*) || ':' || coalesce(md5(string_agg(p::text, ',' order by p.id)), '-')
         from public.projects p),
      (select count(*) || ':' || coalesce(md5(string_agg(t::text, ',' order by t.id)), '-')
         from public.ai_tasks t),
      (select count(*) || ':' || coalesce(md5(string_agg(m::text, ',' order by m.seq)), '-')
         from public.chat_messages m),
      (select count(*) || ':' || coalesce(md5(string_agg(b::text, ',' order by b.id)), '-')
         from public.build_logs b),
      (select count(*) || ':' || coalesce(md5(string_agg(u::text, ',' order by u.id)), '-')
         from auth.users u),
      (select md5(s::text) from public.ai_queue_settings s),
      (select count(*) || ':' || coalesce(md5(string_agg(l::text, ',' order by l.model)), '-')
         from public.ai_model_limits l)) as digest`;
  return String(row.digest);
}

// ------------------------------------------------------------ scenarios

export interface Outcome {
  /** The scenario's figures, one line. */
  figures: string;
}

export interface Scenario {
  name: string;
  run(sql: postgres.Sql): Promise<Outcome>;
}

export type ApiRole = "anon" | "authenticated" | "service_role";

/**
 * Runs `fn` in a transaction as PostgREST would for a request: the API role
 * and the JWT claims set locally, so RLS and auth.uid() see a real caller.
 */
export function asCaller<T>(
  sql: postgres.Sql,
  role: ApiRole,
  sub: string | null,
  fn: (tx: postgres.TransactionSql) => Promise<T>,
): Promise<T> {
  const claims = JSON.stringify(sub ? { role, sub } : { role });
  return sql.begin(async (tx) => {
    await tx`select pg_catalog.set_config('role', ${role}, true),
                    pg_catalog.set_config('request.jwt.claims', ${claims}, true)`;
    return await fn(tx);
  }) as Promise<T>;
}

/** The SQLSTATE and message of a database error, or null when `run` succeeded. */
export async function sqlError(
  run: () => Promise<unknown>,
): Promise<{ code: string; message: string; column: string | null } | null> {
  try {
    await run();
    return null;
  } catch (error) {
    const e = error as { code?: string; message?: string; column_name?: string };
    return { code: String(e.code), message: String(e.message), column: e.column_name ?? null };
  }
}
