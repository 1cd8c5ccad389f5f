// Shared pieces of the runner's tests: assertions, a migrated database
// (DATABASE_URL), rows each test makes for itself, and the two ways the runner
// reaches the queue (postgres.js directly, supabase-js through the PostgREST
// stand-in), so every suite runs once per way.

import postgres from "postgres";
import { type Config, loadConfig } from "./config.ts";
import { createPostgresQueueDb, createSupabaseQueueDb, type QueueDb } from "./db.ts";
import { memoryLogger } from "./log.ts";
import { sleep } from "./testing/assert.ts";
import { signJwt, startPostgrestStandin } from "./testing/postgrest_standin.ts";

export const DATABASE_URL = Deno.env.get("DATABASE_URL") ??
  "postgres://postgres@127.0.0.1:54329/dev_runner";

/** Obviously not real: the fake model and the handler only compare them. */
export const FAKE_OPENROUTER_KEY = "sk-or-test-fake-key-not-real";
export const FAKE_SERVICE_KEY_SECRET = "test-jwt-secret-not-real-0123456789abcdef";
export const FAKE_HTTP_SECRET = "test-runner-secret-not-real";

export { assert, assertEquals, assertMatch, sleep } from "./testing/assert.ts";

/** Polls until `check` returns a truthy value, or fails after `ms`. */
export async function eventually<T>(check: () => Promise<T>, message: string, ms = 5000) {
  const until = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > until) throw new Error(`timed out waiting: ${message}`);
    await sleep(25);
  }
}

/** A configuration as the environment would give it, for a test. */
export function testConfig(env: Record<string, string> = {}): Config {
  return loadConfig({
    DATABASE_URL,
    RUNNER_LOG_FORMAT: "json",
    RUNNER_WORKER_ID: `test-${crypto.randomUUID().slice(0, 8)}`,
    RUNNER_MODEL_TIMEOUT_MS: "3000",
    RUNNER_HEARTBEAT_MS: "150",
    RUNNER_STREAM_INTERVAL_MS: "50",
    RUNNER_POLL_MS: "50",
    RUNNER_POLL_MAX_MS: "200",
    ...env,
  });
}

export const testLogger = memoryLogger;

export interface TaskRow {
  id: string;
  status: string;
  attempts: number;
  max_attempts: number;
  model: string | null;
  error: string | null;
  result: Record<string, unknown> | null;
  errors: { attempt: number; error: string; retryable: boolean }[];
  run_at: Date;
  finished_at: Date | null;
  snoozes: number;
  run_at_in_s: number;
}

export interface MessageRow {
  role: string;
  content: string;
  streaming: boolean;
  metadata: Record<string, unknown>;
}

/** A direct connection for arranging rows and reading what the runner left. */
export class TestDb {
  readonly sql: postgres.Sql;
  #users: string[] = [];

  constructor(url = DATABASE_URL) {
    this.sql = postgres(url, { max: 3, onnotice: () => {} });
  }

  /** A user and a project of their own; removed (with everything in it) by close(). */
  async project(): Promise<string> {
    const tag = crypto.randomUUID();
    const [user] = await this.sql`
      insert into auth.users (email) values (${`runner-test-${tag}@example.test`}) returning id`;
    this.#users.push(user.id);
    const [project] = await this.sql`
      insert into public.projects (owner_id, name) values (${user.id}, 'runner test')
      returning id`;
    return project.id;
  }

  async enqueue(projectId: string, options: {
    message?: string | null;
    type?: string;
    model?: string | null;
    payload?: Record<string, unknown>;
    maxAttempts?: number;
  } = {}): Promise<string> {
    const message = options.message === undefined ? "Hello from a test" : options.message;
    const [row] = await this.sql`
      select public.enqueue_ai_task(${projectId}::uuid, ${options.type ?? "chat_reply"},
        ${this.sql.json((options.payload ?? {}) as postgres.JSONValue)}, ${message},
        ${options.model ?? null}, 0, ${options.maxAttempts ?? 3}) as id`;
    return row.id;
  }

  async task(id: string): Promise<TaskRow> {
    const [row] = await this.sql`
      select t.*, extract(epoch from t.run_at - now())::float8 as run_at_in_s
      from public.ai_tasks t where t.id = ${id}::uuid`;
    return row as unknown as TaskRow;
  }

  async assistantMessages(taskId: string): Promise<MessageRow[]> {
    return await this.sql`
      select role, content, streaming, metadata from public.chat_messages
      where task_id = ${taskId}::uuid and role = 'assistant'` as unknown as MessageRow[];
  }

  /** The `event` of each build log of the task, oldest first. */
  async logEvents(taskId: string): Promise<string[]> {
    const rows = await this.sql`
      select metadata ->> 'event' as event from public.build_logs
      where task_id = ${taskId}::uuid order by id`;
    return rows.map((r) => r.event);
  }

  async cancel(taskId: string): Promise<string> {
    const [row] = await this.sql`select public.cancel_ai_task(${taskId}::uuid) as status`;
    return row.status;
  }

  async close(): Promise<void> {
    if (this.#users.length > 0) {
      await this.sql`delete from auth.users where id = any(${this.#users}::uuid[])`;
    }
    await this.sql.end({ timeout: 5 });
  }
}

/** One way of reaching the queue, opened for a suite and closed after it. */
export interface DbPath {
  name: string;
  open(): Promise<{ db: QueueDb; config: Record<string, string>; close(): Promise<void> }>;
}

export const DB_PATHS: DbPath[] = [
  {
    name: "postgres.js",
    open() {
      const db = createPostgresQueueDb(DATABASE_URL, 4);
      return Promise.resolve({ db, config: {}, close: () => db.close() });
    },
  },
  {
    name: "supabase-js via the PostgREST stand-in",
    async open() {
      const standin = await startPostgrestStandin({
        databaseUrl: DATABASE_URL,
        jwtSecret: FAKE_SERVICE_KEY_SECRET,
      });
      const serviceKey = await signJwt({
        role: "service_role",
        iss: "supabase-test",
        exp: Math.floor(Date.now() / 1000) + 3600,
      }, FAKE_SERVICE_KEY_SECRET);
      const db = createSupabaseQueueDb(standin.url, serviceKey);
      return {
        db,
        config: { SUPABASE_URL: standin.url, SUPABASE_SERVICE_ROLE_KEY: serviceKey },
        async close() {
          await db.close();
          await standin.close();
        },
      };
    },
  },
];
