// The wake-up call the database makes (db/functions/ops_dispatch.sql) is one
// the runner's HTTP handler (runner/http.ts) accepts. pg_net cannot be
// installed here, so a stand-in net.http_post, inside a transaction that is
// rolled back, captures the URL, headers and body that wake_runner builds
// from ai_queue.ops_settings; the test then replays them against the real
// handler, whose queue is a fake that has nothing due, so no task is touched.
import postgres from "postgres";
import { loadConfig } from "./config.ts";
import type { QueueDb } from "./db.ts";
import { createHandler } from "./http.ts";
import { memoryLogger } from "./log.ts";
import { createModel } from "./model.ts";
import { assertEquals } from "./testing/assert.ts";

const DATABASE_URL = Deno.env.get("DATABASE_URL");
if (!DATABASE_URL) {
  console.warn(
    "dispatch_contract_test: SKIPPED, DATABASE_URL is not set " +
      "(e.g. postgres://postgres@127.0.0.1:54329/dev_ops after scripts/migrate.sh)",
  );
}

const SERVICE_KEY = "service-role-key-for-the-contract-test";
const RUNNER_SECRET = "runner-secret-0123456789abcdef";

interface Captured {
  url: string;
  headers: Record<string, string>;
  body: Record<string, unknown>;
}

/** What wake_runner(reason, due) sends, with the given key and secret configured. */
async function capture(
  reason: string,
  due: number,
  key: string | null,
  secret: string | null,
): Promise<Captured> {
  const sql = postgres(DATABASE_URL!, { max: 1, onnotice: () => {} });
  let captured: Captured | null = null;
  try {
    await sql.begin(async (tx) => {
      await tx`create schema net`;
      await tx`create table net.calls (url text, headers jsonb, body jsonb)`;
      await tx.unsafe(`
        create function net.http_post(url text, body jsonb default '{}',
          params jsonb default '{}', headers jsonb default '{}',
          timeout_milliseconds integer default 5000) returns bigint
        language sql as $$ insert into net.calls values (url, headers, body); select 1::bigint $$`);
      await tx`
        update ai_queue.ops_settings set
          runner_url = 'https://ref.supabase.co/functions/v1/process-ai-tasks',
          runner_key = ${key}, runner_secret = ${secret}, dispatch_enabled = true`;
      await tx`select ai_queue.wake_runner(${reason}, ${due})`;
      const [call] = await tx`select url, headers, body from net.calls`;
      captured = call as unknown as Captured;
      throw new Rollback();
    });
  } catch (error) {
    if (!(error instanceof Rollback)) throw error;
  } finally {
    await sql.end();
  }
  if (!captured) throw new Error("wake_runner made no call");
  return captured;
}

class Rollback extends Error {}

/** The runner's handler over a queue with nothing due. */
function runnerWith(env: Record<string, string>) {
  const config = loadConfig({ RUNNER_LOG_FORMAT: "json", ...env });
  const claims: unknown[] = [];
  const db = {
    kind: "postgres",
    claim: (options: unknown) => {
      claims.push(options);
      return Promise.resolve([]);
    },
    listen: () => Promise.resolve(null),
    projectExists: () => Promise.resolve(true),
    close: () => Promise.resolve(),
  } as unknown as QueueDb;
  const handler = createHandler({ config, db, model: createModel(config), log: memoryLogger() });
  return { handler, claims };
}

function replay(call: Captured): Request {
  return new Request(call.url, {
    method: "POST",
    headers: call.headers,
    body: JSON.stringify(call.body),
  });
}

function dbTest(name: string, fn: () => Promise<void>) {
  Deno.test({ name, ignore: !DATABASE_URL, sanitizeResources: false, sanitizeOps: false, fn });
}

dbTest("the insert wake-up with the service role key is accepted and claims", async () => {
  const call = await capture("insert", 3, SERVICE_KEY, null);
  const { handler, claims } = runnerWith({ SUPABASE_SERVICE_ROLE_KEY: SERVICE_KEY });
  const response = await handler(replay(call));
  const body = await response.json();
  assertEquals(response.status, 200, `status (body ${JSON.stringify(body)})`);
  assertEquals(body.source, "insert", "the runner sees an insert wake-up");
  assertEquals(claims.length >= 1, true, "and goes looking for tasks");
});

dbTest("the schedule wake-up with the runner secret passes behind the gateway", async () => {
  // The gateway wants a JWT in Authorization; the runner checks the secret.
  const call = await capture("schedule", 12, "a-gateway-jwt", RUNNER_SECRET);
  const { handler } = runnerWith({ RUNNER_HTTP_SECRET: RUNNER_SECRET });
  const response = await handler(replay(call));
  const body = await response.json();
  assertEquals(response.status, 200, `status (body ${JSON.stringify(body)})`);
  assertEquals(body.source, "schedule", "the runner sees the schedule");
});

dbTest("a wake-up with a wrong key is refused with 401", async () => {
  const call = await capture("insert", 1, "not-the-key", null);
  const { handler, claims } = runnerWith({ SUPABASE_SERVICE_ROLE_KEY: SERVICE_KEY });
  const response = await handler(replay(call));
  await response.body?.cancel();
  assertEquals(response.status, 401, "status");
  assertEquals(claims.length, 0, "nothing is claimed");
});
