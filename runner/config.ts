// The runner's configuration: every knob comes from the environment, has a
// default that works on a laptop, and a bad value stops the runner at start
// with an error naming the variable, the rule and the value it got.

export type DbClient = "postgres" | "supabase";
export type LogFormat = "json" | "text";

export interface Config {
  /** OpenRouter API key; without one the built-in offline model answers. */
  openrouterKey: string | null;
  openrouterBaseUrl: string;
  /** Model for tasks that name none. */
  defaultModel: string;
  /** Sent as HTTP-Referer and X-Title, which OpenRouter shows in its rankings. */
  appUrl: string | null;
  appTitle: string | null;
  systemPrompt: string;

  dbClient: DbClient;
  databaseUrl: string;
  dbPoolSize: number;
  supabaseUrl: string | null;
  serviceRoleKey: string | null;

  workerId: string;
  concurrency: number;
  batchSize: number;
  /** Most completions sent in one complete_ai_tasks call; 1 sends each alone. */
  completeBatchMax: number;
  /** How long a completion may wait for others while a batch is on its way. */
  completeBatchWaitMs: number;
  leaseSeconds: number;
  heartbeatMs: number;
  modelTimeoutMs: number;
  pollMs: number;
  pollMaxMs: number;
  shutdownGraceMs: number;
  streamIntervalMs: number;
  timeBudgetMs: number;
  httpSecret: string | null;
  offlineDelayMs: number;
  logFormat: LogFormat;
  logLevel: "debug" | "info" | "warn" | "error";
  logPrompts: boolean;
}

export class ConfigError extends Error {
  override name = "ConfigError";
  constructor(readonly variable: string, rule: string, got: string) {
    super(`${variable} ${rule}, got ${JSON.stringify(got)}`);
  }
}

/** The local cluster of scripts/db.sh; `make run` migrates its `postgres` database. */
const localDatabaseUrl = (port = "54329") => `postgres://postgres@127.0.0.1:${port}/postgres`;

const DEFAULT_SYSTEM_PROMPT =
  "You are the assistant of a website builder. Answer the user's latest message " +
  "helpfully and concisely, using the conversation so far.";

type Env = Record<string, string | undefined>;

function text(env: Env, name: string): string | null {
  const value = env[name]?.trim();
  return value ? value : null;
}

function int(env: Env, name: string, fallback: number, min: number, max: number): number {
  const raw = text(env, name);
  if (raw === null) return fallback;
  const value = Number(raw);
  if (!/^-?\d+$/.test(raw) || value < min || value > max) {
    throw new ConfigError(name, `must be a whole number from ${min} to ${max}`, raw);
  }
  return value;
}

function url(env: Env, name: string, fallback: string | null): string | null {
  const raw = text(env, name);
  if (raw === null) return fallback;
  try {
    const parsed = new URL(raw);
    if (!/^(https?|postgres(ql)?):$/.test(parsed.protocol)) throw new Error("scheme");
  } catch {
    // The value may hold a password, so only its scheme is echoed.
    throw new ConfigError(name, "must be an http(s):// or postgres:// URL", raw.split(":")[0]);
  }
  return raw.replace(/\/+$/, "");
}

function oneOf<T extends string>(env: Env, name: string, allowed: T[], fallback: T): T {
  const raw = text(env, name);
  if (raw === null) return fallback;
  if (!allowed.includes(raw as T)) {
    throw new ConfigError(name, `must be one of ${allowed.join(", ")}`, raw);
  }
  return raw as T;
}

function flag(env: Env, name: string): boolean {
  const raw = text(env, name);
  if (raw === null) return false;
  if (/^(1|true|yes|on)$/i.test(raw)) return true;
  if (/^(0|false|no|off)$/i.test(raw)) return false;
  throw new ConfigError(name, "must be true or false", raw);
}

function defaultWorkerId(): string {
  try {
    return `${Deno.hostname()}:${Deno.pid}`;
  } catch {
    // An Edge Function may not see its host or pid; a random suffix still
    // tells instances apart in locked_by and the logs.
    return `edge:${crypto.randomUUID().slice(0, 8)}`;
  }
}

function isTerminal(): boolean {
  try {
    return Deno.stdout.isTerminal();
  } catch {
    return false;
  }
}

/** Reads the configuration from `env` (the process environment by default). */
export function loadConfig(env: Env = Deno.env.toObject()): Config {
  const supabaseUrl = url(env, "SUPABASE_URL", null);
  const serviceRoleKey = text(env, "SUPABASE_SERVICE_ROLE_KEY");
  const databaseUrl = url(env, "DATABASE_URL", null) ?? url(env, "SUPABASE_DB_URL", null);
  const viaSupabase = supabaseUrl !== null && serviceRoleKey !== null;
  const dbClient = oneOf<DbClient | "auto">(env, "RUNNER_DB_CLIENT", [
    "auto",
    "postgres",
    "supabase",
  ], "auto");
  if (dbClient === "supabase" && !viaSupabase) {
    throw new ConfigError(
      "RUNNER_DB_CLIENT",
      "is supabase, which needs SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY",
      dbClient,
    );
  }

  const concurrency = int(env, "RUNNER_CONCURRENCY", 10, 1, 5000);
  const leaseSeconds = int(env, "RUNNER_LEASE_SECONDS", 300, 5, 3600);
  const config: Config = {
    openrouterKey: text(env, "OPENROUTER_KEY") ?? text(env, "OPENROUTER_API_KEY"),
    openrouterBaseUrl: url(env, "OPENROUTER_BASE_URL", "https://openrouter.ai/api/v1")!,
    defaultModel: text(env, "OPENROUTER_MODEL") ?? "openai/gpt-4o-mini",
    appUrl: text(env, "OPENROUTER_APP_URL"),
    appTitle: text(env, "OPENROUTER_APP_TITLE"),
    systemPrompt: text(env, "RUNNER_SYSTEM_PROMPT") ?? DEFAULT_SYSTEM_PROMPT,

    dbClient: dbClient === "auto" ? (viaSupabase ? "supabase" : "postgres") : dbClient,
    databaseUrl: databaseUrl ?? localDatabaseUrl(text(env, "PGPORT") ?? undefined),
    dbPoolSize: int(env, "RUNNER_DB_POOL", Math.min(10, concurrency + 1), 1, 100),
    supabaseUrl,
    serviceRoleKey,

    workerId: text(env, "RUNNER_WORKER_ID") ?? defaultWorkerId(),
    concurrency,
    batchSize: int(env, "RUNNER_BATCH_SIZE", Math.min(concurrency, 50), 1, 1000),
    // 100 answers of a few KB make a statement of well under a megabyte; a
    // lone task never waits for the timer (see CompletionBatcher).
    completeBatchMax: int(env, "RUNNER_COMPLETE_BATCH_MAX", 100, 1, 1000),
    completeBatchWaitMs: int(env, "RUNNER_COMPLETE_BATCH_WAIT_MS", 2, 0, 1000),
    leaseSeconds,
    // A lease is renewed only while a call outlives this, so quick calls cost no
    // extra query; a third of the lease leaves two renewals' slack.
    heartbeatMs: int(
      env,
      "RUNNER_HEARTBEAT_MS",
      Math.min(15_000, leaseSeconds * 1000 / 3),
      100,
      leaseSeconds * 1000 / 2,
    ),
    modelTimeoutMs: int(env, "RUNNER_MODEL_TIMEOUT_MS", 120_000, 100, 3_600_000),
    pollMs: int(env, "RUNNER_POLL_MS", 500, 10, 600_000),
    pollMaxMs: int(env, "RUNNER_POLL_MAX_MS", 10_000, 10, 3_600_000),
    shutdownGraceMs: int(env, "RUNNER_SHUTDOWN_GRACE_MS", 10_000, 0, 600_000),
    streamIntervalMs: int(env, "RUNNER_STREAM_INTERVAL_MS", 300, 50, 60_000),
    // Supabase stops an Edge Function after 150 s of wall clock; 120 s leaves
    // room to release what is still running and to answer.
    timeBudgetMs: int(env, "RUNNER_TIME_BUDGET_MS", 120_000, 1_000, 3_600_000),
    httpSecret: text(env, "RUNNER_HTTP_SECRET"),
    offlineDelayMs: int(env, "RUNNER_OFFLINE_DELAY_MS", 0, 0, 600_000),
    logFormat: oneOf<LogFormat>(
      env,
      "RUNNER_LOG_FORMAT",
      ["json", "text"],
      isTerminal() ? "text" : "json",
    ),
    logLevel: oneOf(env, "RUNNER_LOG_LEVEL", ["debug", "info", "warn", "error"], "info"),
    logPrompts: flag(env, "RUNNER_LOG_PROMPTS"),
  };
  if (config.pollMaxMs < config.pollMs) {
    throw new ConfigError(
      "RUNNER_POLL_MAX_MS",
      `must be at least RUNNER_POLL_MS (${config.pollMs})`,
      String(config.pollMaxMs),
    );
  }
  if (config.httpSecret !== null && config.httpSecret.length < 16) {
    throw new ConfigError(
      "RUNNER_HTTP_SECRET",
      "must be at least 16 characters",
      `${config.httpSecret.length} characters`,
    );
  }
  return config;
}

/** Where the database is, for logs: host and database name, never a password. */
export function describeDatabase(config: Config): string {
  if (config.dbClient === "supabase") return `supabase-js ${config.supabaseUrl}`;
  try {
    const parsed = new URL(config.databaseUrl);
    return `postgres ${parsed.hostname}:${parsed.port || 5432}${parsed.pathname}`;
  } catch {
    return "postgres (unparsable URL)";
  }
}
