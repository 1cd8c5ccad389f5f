// `deno task status`: the queue at a glance, for an operator's terminal.
//
//   deno task status [--project <uuid>] [--days <n>] [--watch [--interval <s>]] [--json]
//   deno task status --failed [--project <uuid>] [--since <time>] [--limit <n>]
//   deno task status --retry-failed [--project <uuid>] [--since <time>] [--extra-attempts <n>]
//
// Reads the SQL functions ai_task_stats, list_failed_ai_tasks and
// retry_failed_ai_tasks (db/functions), over postgres.js (DATABASE_URL or
// SUPABASE_DB_URL) or supabase-js `.rpc()` (SUPABASE_URL and
// SUPABASE_SERVICE_ROLE_KEY), chosen as the runner chooses (runner/config.ts).

import postgres from "postgres";
import { createClient } from "@supabase/supabase-js";
import { type Config, ConfigError, describeDatabase, loadConfig } from "./config.ts";

// ------------------------------------------------------------------ the data

export interface Window {
  minutes: number;
  completed: number;
  failed: number;
  cancelled: number;
  throughput_per_minute: number;
  failure_rate: number | null;
  run_p50_seconds: number | null;
  run_p95_seconds: number | null;
}

export interface UsageRow {
  project_id: string;
  day: string;
  completed: number;
  failed: number;
  prompt_tokens: number;
  completion_tokens: number;
  cost: number;
  model_latency_p50_ms: number | null;
}

export interface CronJob {
  name: string;
  schedule: string;
  active: boolean;
  last_status: string | null;
  last_start: string | null;
  last_message: string | null;
}

/** What public.ai_task_stats returns (db/functions/ai_task_stats.sql). */
export interface Stats {
  generated_at: string;
  project_id: string | null;
  usage_days: number;
  counts: {
    queued: number;
    due: number;
    waiting_retry: number;
    running: number;
    lease_expired: number;
    oldest_due_seconds: number | null;
    completed: number;
    failed: number;
    cancelled: number;
  };
  windows: Window[];
  usage: UsageRow[];
  dispatch: {
    pg_net: boolean;
    endpoint_source: "vault" | "settings" | null;
    enabled: boolean;
    cron_jobs: CronJob[] | null;
  };
  /** The queue's tables in the supabase_realtime publication; null without it. */
  realtime?: string[] | null;
}

export interface FailedAttempt {
  attempt: number;
  error: string;
  retryable?: boolean;
  worker?: string | null;
  at?: string;
}

/** A row of public.list_failed_ai_tasks. */
export interface FailedTask {
  id: string;
  project_id: string;
  type: string;
  model: string | null;
  attempts: number;
  max_attempts: number;
  error: string | null;
  errors: FailedAttempt[];
  created_at: string;
  finished_at: string;
}

export interface FailedQuery {
  projectId: string | null;
  since: string | null;
  limit: number;
}

export interface RetryQuery {
  projectId: string | null;
  since: string | null;
  extraAttempts: number;
}

export interface StatusSource {
  readonly where: string;
  stats(projectId: string | null, usageDays: number): Promise<Stats>;
  failed(query: FailedQuery): Promise<FailedTask[]>;
  retryFailed(query: RetryQuery): Promise<number>;
  close(): Promise<void>;
}

/** A failed call, named by the step; carries the SQLSTATE when there is one. */
export class StatusError extends Error {
  override name = "StatusError";
  constructor(step: string, readonly code: string | null, message: string, cause?: unknown) {
    super(`${step}: ${message}${code ? ` (${code})` : ""}`, { cause });
  }
}

function iso(value: unknown): string {
  return value instanceof Date ? value.toISOString() : String(value);
}

function postgresSource(config: Config): StatusSource {
  const sql = postgres(config.databaseUrl, {
    max: 1,
    onnotice: () => {},
    connection: { application_name: "ai-queue-status" },
  });
  const call = async <T>(step: string, run: () => Promise<T>): Promise<T> => {
    try {
      return await run();
    } catch (error) {
      const e = error as { code?: string; message?: string };
      throw new StatusError(step, e.code ?? null, e.message ?? String(error), error);
    }
  };
  return {
    where: describeDatabase(config),
    stats: (projectId, usageDays) =>
      call("ai_task_stats", async () => {
        const [row] = await sql`
          select public.ai_task_stats(${projectId}::uuid, ${usageDays}::integer) as stats`;
        return row.stats as Stats;
      }),
    failed: (q) =>
      call("list_failed_ai_tasks", async () => {
        const rows = await sql`
          select * from public.list_failed_ai_tasks(
            ${q.projectId}::uuid, ${q.limit}::integer, ${q.since}::timestamptz)`;
        return rows.map((r) => ({
          ...r,
          created_at: iso(r.created_at),
          finished_at: iso(r.finished_at),
        })) as unknown as FailedTask[];
      }),
    retryFailed: (q) =>
      call("retry_failed_ai_tasks", async () => {
        const [row] = await sql`
          select public.retry_failed_ai_tasks(${q.projectId}::uuid, ${q.since}::timestamptz,
                                              ${q.extraAttempts}::integer) as retried`;
        return Number(row.retried);
      }),
    close: () => sql.end({ timeout: 5 }),
  };
}

function supabaseSource(config: Config): StatusSource {
  const client = createClient(config.supabaseUrl!, config.serviceRoleKey!, {
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
  });
  const rpc = async <T>(fn: string, args: Record<string, unknown>): Promise<T> => {
    const { data, error } = await client.rpc(fn, args);
    if (error) throw new StatusError(fn, error.code ?? null, error.message, error);
    return data as T;
  };
  return {
    where: describeDatabase(config),
    stats: (projectId, usageDays) =>
      rpc<Stats>("ai_task_stats", { project_id: projectId, usage_days: usageDays }),
    failed: (q) =>
      rpc<FailedTask[]>("list_failed_ai_tasks", {
        project_id: q.projectId,
        max_tasks: q.limit,
        since: q.since,
      }),
    retryFailed: async (q) =>
      Number(
        await rpc<number>("retry_failed_ai_tasks", {
          project_id: q.projectId,
          since: q.since,
          extra_attempts: q.extraAttempts,
        }),
      ),
    close: () => Promise.resolve(),
  };
}

export function createStatusSource(config: Config): StatusSource {
  return config.dbClient === "supabase" ? supabaseSource(config) : postgresSource(config);
}

// ------------------------------------------------------------------ rendering

/** Lays rows out in columns; numbers (and "-") are right-aligned. */
export function table(header: string[], rows: string[][], indent = "  "): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const numeric = header.map((_, i) =>
    rows.length > 0 && rows.every((r) =>
      /^[-$]?[\d.,]*\d[\d.,]*( ?(%|s|ms|m \d+s))?$|^-$/
        .test(r[i])
    )
  );
  const line = (cells: string[]) =>
    indent + cells.map((c, i) => numeric[i] ? c.padStart(widths[i]) : c.padEnd(widths[i]))
      .join("  ").trimEnd();
  return [line(header), ...rows.map(line)].join("\n");
}

const int = (n: number) => Math.round(n).toLocaleString("en-US");

export function seconds(s: number | null): string {
  if (s === null || s === undefined) return "-";
  if (s < 60) return `${Number(s.toFixed(s < 10 ? 2 : 1))}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${Math.floor(s % 60)}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

const percent = (r: number | null) => (r === null ? "-" : `${(r * 100).toFixed(1)}%`);
const utc = (t: string | null) => (t ? t.replace("T", " ").slice(0, 19) : "-");

export function renderStats(s: Stats, where: string): string {
  const scope = s.project_id ? `project ${s.project_id}` : "all projects";
  const c = s.counts;
  const out = [
    `AI task queue · ${scope} · ${utc(s.generated_at)} UTC · ${where}`,
    "",
    "Now",
    table(
      ["queued", "due", "waiting retry", "running", "lease expired", "oldest due waits"],
      [
        [c.queued, c.due, c.waiting_retry, c.running, c.lease_expired].map(int)
          .concat(seconds(c.oldest_due_seconds)),
      ],
    ),
    "",
    `Finished in the last ${s.usage_days} day${s.usage_days === 1 ? "" : "s"}`,
    table(["completed", "failed", "cancelled"], [[c.completed, c.failed, c.cancelled].map(int)]),
    "",
    "Recent",
    table(
      [
        "window",
        "completed",
        "failed",
        "cancelled",
        "per minute",
        "failure rate",
        "p50 run",
        "p95 run",
      ],
      s.windows.map((w) => [
        `${w.minutes} min`,
        int(w.completed),
        int(w.failed),
        int(w.cancelled),
        Number(w.throughput_per_minute).toFixed(2),
        percent(w.failure_rate),
        seconds(w.run_p50_seconds),
        seconds(w.run_p95_seconds),
      ]),
    ),
    "",
    `Usage per project and UTC day (last ${s.usage_days} days)`,
  ];
  if (s.usage.length === 0) out.push("  no finished tasks");
  else {
    out.push(table(
      [
        "day",
        "project",
        "completed",
        "failed",
        "prompt tokens",
        "completion tokens",
        "cost (USD)",
        "model p50",
      ],
      s.usage.map((u) => [
        u.day,
        u.project_id,
        int(u.completed),
        int(u.failed),
        int(u.prompt_tokens),
        int(u.completion_tokens),
        `$${Number(u.cost).toFixed(4)}`,
        u.model_latency_p50_ms === null ? "-" : `${int(u.model_latency_p50_ms)} ms`,
      ]),
    ));
  }

  const d = s.dispatch;
  const url = d.endpoint_source ? `set in ${d.endpoint_source}` : "not set";
  out.push(
    "",
    "Waking the runner",
    `  pg_net: ${d.pg_net ? "yes" : "no"} · runner URL: ${url} · ` +
      `HTTP wake-up: ${d.enabled ? "on" : "off"}`,
  );
  if (d.cron_jobs === null) out.push("  pg_cron: not installed in this database");
  else if (d.cron_jobs.length === 0) out.push("  pg_cron: no ai-tasks jobs scheduled");
  else {
    out.push(table(
      ["pg_cron job", "schedule", "active", "last run", "started"],
      d.cron_jobs.map((j) => [
        j.name,
        j.schedule,
        j.active ? "yes" : "no",
        j.last_status ?? "never",
        utc(j.last_start),
      ]),
    ));
  }
  const published = s.realtime;
  out.push(
    "",
    published === null || published === undefined
      ? "Realtime: no supabase_realtime publication in this database"
      : `Realtime: ${published.length ? published.join(", ") : "no queue table"} ` +
        "published in supabase_realtime",
  );
  return out.join("\n");
}

export function renderFailed(tasks: FailedTask[], projectId: string | null): string {
  const scope = projectId ? `project ${projectId}` : "all projects";
  if (tasks.length === 0) return `No failed tasks · ${scope}`;
  const out = [`Failed tasks, newest first · ${scope}`, ""];
  for (const t of tasks) {
    out.push(
      `${t.id}  ${t.type}  project ${t.project_id}  attempts ${t.attempts}/${t.max_attempts}` +
        `  failed ${utc(t.finished_at)}${t.model ? `  model ${t.model}` : ""}`,
    );
    out.push(table(
      ["attempt", "at", "worker", "retryable", "error"],
      t.errors.map((e) => [
        String(e.attempt),
        utc(e.at ?? null),
        e.worker ?? "-",
        e.retryable === undefined ? "-" : e.retryable ? "yes" : "no",
        oneLine(e.error, 120),
      ]),
      "    ",
    ));
    out.push("");
  }
  return out.join("\n").trimEnd();
}

function oneLine(text: string, max: number): string {
  const flat = String(text).replace(/\s+/g, " ").trim();
  return flat.length > max ? `${flat.slice(0, max - 1)}…` : flat;
}

// ------------------------------------------------------------------ the command

export class UsageError extends Error {
  override name = "UsageError";
}

export interface Options {
  mode: "stats" | "failed" | "retry";
  projectId: string | null;
  usageDays: number;
  watch: boolean;
  intervalSeconds: number;
  since: string | null;
  limit: number;
  extraAttempts: number;
  json: boolean;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const USAGE = "usage: deno task status [--project <uuid>] [--days <n>] [--watch] " +
  "[--interval <seconds>] [--json]\n" +
  "       deno task status --failed [--project <uuid>] [--since <time>] [--limit <n>]\n" +
  "       deno task status --retry-failed [--project <uuid>] [--since <time>] " +
  "[--extra-attempts <n>]";

function wholeNumber(
  flag: string,
  raw: string | undefined,
  fallback: number,
  min: number,
  max: number,
): number {
  if (raw === undefined) return fallback;
  if (!/^\d+$/.test(raw) || Number(raw) < min || Number(raw) > max) {
    throw new UsageError(`${flag} must be a whole number from ${min} to ${max}, got ${raw}`);
  }
  return Number(raw);
}

const VALUE_FLAGS = ["project", "days", "interval", "since", "limit", "extra-attempts"] as const;
const SWITCHES = ["watch", "failed", "retry-failed", "json", "help"] as const;
type ValueFlag = typeof VALUE_FLAGS[number];
type Switch = typeof SWITCHES[number];

// Flags as `--name value` or `--name=value`. node:util's parseArgs would do,
// but its types need @types/node, which this npm-only setup does not carry.
function readFlags(args: string[]) {
  const values: Partial<Record<ValueFlag, string>> = {};
  const switches: Partial<Record<Switch, boolean>> = {};
  for (let i = 0; i < args.length; i++) {
    const arg = args[i] === "-h" ? "--help" : args[i];
    const match = /^--([a-z-]+)(?:=(.*))?$/.exec(arg);
    if (!match) throw new UsageError(`unexpected argument ${JSON.stringify(arg)}`);
    const [, name, inline] = match;
    if ((SWITCHES as readonly string[]).includes(name)) {
      if (inline !== undefined) throw new UsageError(`--${name} takes no value`);
      switches[name as Switch] = true;
    } else if ((VALUE_FLAGS as readonly string[]).includes(name)) {
      const value = inline ?? args[++i];
      if (value === undefined || value.startsWith("--")) {
        throw new UsageError(`--${name} needs a value`);
      }
      values[name as ValueFlag] = value;
    } else {
      throw new UsageError(`unknown flag --${name}`);
    }
  }
  return { ...values, ...switches };
}

export function parseOptions(args: string[]): Options {
  const v = readFlags(args);
  if (v.help) throw new UsageError("");
  if (v.failed && v["retry-failed"]) {
    throw new UsageError("--failed and --retry-failed cannot be combined");
  }
  const mode = v.failed ? "failed" : v["retry-failed"] ? "retry" : "stats";
  if (v.watch && mode !== "stats") throw new UsageError("--watch only refreshes the stats");

  const projectId = v.project ?? null;
  if (projectId !== null && !UUID.test(projectId)) {
    throw new UsageError(`--project must be a project id (a uuid), got ${projectId}`);
  }
  let since: string | null = null;
  if (v.since !== undefined) {
    const t = new Date(v.since);
    if (Number.isNaN(t.getTime())) {
      throw new UsageError(
        `--since must be a date and time such as 2026-12-03T12:00Z, ` +
          `got ${v.since}`,
      );
    }
    since = t.toISOString();
  }
  return {
    mode,
    projectId,
    usageDays: wholeNumber("--days", v.days, 7, 1, 366),
    watch: v.watch ?? false,
    intervalSeconds: wholeNumber("--interval", v.interval, 5, 1, 3600),
    since,
    limit: wholeNumber("--limit", v.limit, 20, 1, 10000),
    extraAttempts: wholeNumber("--extra-attempts", v["extra-attempts"], 3, 1, 25),
    json: v.json ?? false,
  };
}

/** ANSI: cursor home, clear screen; each refresh redraws in place. */
export const CLEAR = "\x1b[H\x1b[2J";

async function watch(source: StatusSource, o: Options, write: (s: string) => void) {
  let stop!: () => void;
  const stopped = new Promise<void>((resolve) => (stop = resolve));
  const onSignal = () => stop();
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  try {
    for (;;) {
      let screen: string;
      try {
        const stats = await source.stats(o.projectId, o.usageDays);
        screen = o.json ? JSON.stringify(stats) : renderStats(stats, source.where);
      } catch (error) {
        // A dropped connection is worth showing, not dying for: the next round retries.
        screen = `status: ${(error as Error).message}`;
      }
      write(`${CLEAR}${screen}\n\nrefreshing every ${o.intervalSeconds}s · Ctrl-C stops\n`);
      let timer: ReturnType<typeof setTimeout> | undefined;
      const tick = new Promise<"tick">((
        r,
      ) => (timer = setTimeout(() => r("tick"), o.intervalSeconds * 1000)));
      const why = await Promise.race([tick, stopped.then(() => "stop" as const)]);
      clearTimeout(timer);
      if (why === "stop") return;
    }
  } finally {
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
  }
}

export async function run(
  args: string[],
  env: Record<string, string | undefined>,
  write: (s: string) => void,
): Promise<number> {
  let options: Options;
  try {
    options = parseOptions(args);
  } catch (error) {
    const message = (error as Error).message;
    console.error(message ? `status: ${message}\n${USAGE}` : USAGE);
    return message ? 2 : 0;
  }
  let config: Config;
  try {
    config = loadConfig(env);
  } catch (error) {
    if (error instanceof ConfigError) {
      console.error(`status: ${error.message}`);
      return 2;
    }
    throw error;
  }

  const source = createStatusSource(config);
  try {
    const o = options;
    if (o.mode === "stats" && o.watch) {
      await watch(source, o, write);
    } else if (o.mode === "stats") {
      const stats = await source.stats(o.projectId, o.usageDays);
      write((o.json ? JSON.stringify(stats, null, 2) : renderStats(stats, source.where)) + "\n");
    } else if (o.mode === "failed") {
      const tasks = await source.failed({ projectId: o.projectId, since: o.since, limit: o.limit });
      write((o.json ? JSON.stringify(tasks, null, 2) : renderFailed(tasks, o.projectId)) + "\n");
    } else {
      const retried = await source.retryFailed({
        projectId: o.projectId,
        since: o.since,
        extraAttempts: o.extraAttempts,
      });
      const scope = o.projectId ? `project ${o.projectId}` : "all projects";
      write(
        o.json ? `${JSON.stringify({ retried })}\n` : `Queued ${retried} failed ` +
          `task${retried === 1 ? "" : "s"} again (${scope}` +
          `${o.since ? `, failed since ${utc(o.since)} UTC` : ""}; ` +
          `${o.extraAttempts} more attempts each)\n`,
      );
    }
    return 0;
  } catch (error) {
    console.error(`status: ${(error as Error).message}`);
    return 1;
  } finally {
    await source.close();
  }
}

if (import.meta.main) {
  const encoder = new TextEncoder();
  // writeSync may take only part of a large screen; write until all is out.
  const write = (s: string) => {
    const bytes = encoder.encode(s);
    for (let done = 0; done < bytes.length;) done += Deno.stdout.writeSync(bytes.subarray(done));
  };
  const code = await run(Deno.args, Deno.env.toObject(), write);
  Deno.exit(code);
}
