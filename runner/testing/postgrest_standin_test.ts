// The PostgREST stand-in, driven with the real supabase-js client against a
// migrated database (DATABASE_URL). Each run makes its own users and
// projects, so runs do not disturb each other or other data.
import { createClient, type SupabaseClient } from "@supabase/supabase-js";
import postgres from "postgres";
import { signJwt, startPostgrestStandin } from "./postgrest_standin.ts";
import { assert, assertEquals } from "./assert.ts";

const DATABASE_URL = Deno.env.get("DATABASE_URL");
if (!DATABASE_URL) {
  console.warn(
    "postgrest_standin_test: SKIPPED, DATABASE_URL is not set " +
      "(e.g. postgres://postgres@127.0.0.1:54329/dev_fixtures after scripts/migrate.sh)",
  );
}

const SECRET = "standin-test-secret-that-is-long-enough-0123456789";
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

interface Fixture {
  url: string;
  db: postgres.Sql;
  service: SupabaseClient;
  anon: SupabaseClient;
  alice: SupabaseClient;
  aliceId: string;
  aliceProject: string;
  bobProject: string;
  key: (claims: Record<string, unknown>) => Promise<string>;
  client: (key: string, bearer?: string) => SupabaseClient;
}

function makeClient(url: string, key: string, bearer?: string): SupabaseClient {
  return createClient(url, key, {
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
    global: bearer ? { headers: { Authorization: `Bearer ${bearer}` } } : {},
  });
}

async function withStandin(fn: (f: Fixture) => Promise<void>) {
  const db = postgres(DATABASE_URL!, { max: 2, onnotice: () => {} });
  const standin = await startPostgrestStandin({ databaseUrl: DATABASE_URL!, jwtSecret: SECRET });
  const tag = crypto.randomUUID().slice(0, 8);
  const [alice] = await db`
    insert into auth.users (email) values (${`alice-${tag}@standin.test`}) returning id`;
  const [bob] = await db`
    insert into auth.users (email) values (${`bob-${tag}@standin.test`}) returning id`;
  const [ap] = await db`
    insert into public.projects (owner_id, name) values (${alice.id}, 'alice') returning id`;
  const [bp] = await db`
    insert into public.projects (owner_id, name) values (${bob.id}, 'bob') returning id`;

  const exp = Math.floor(Date.now() / 1000) + 3600;
  const key = (claims: Record<string, unknown>) => signJwt({ exp, ...claims }, SECRET);
  const anonKey = await key({ role: "anon" });
  const serviceKey = await key({ role: "service_role" });
  const aliceJwt = await key({ role: "authenticated", sub: alice.id, aud: "authenticated" });

  try {
    await fn({
      url: standin.url,
      db,
      service: makeClient(standin.url, serviceKey),
      anon: makeClient(standin.url, anonKey),
      alice: makeClient(standin.url, anonKey, aliceJwt),
      aliceId: alice.id,
      aliceProject: ap.id,
      bobProject: bp.id,
      key,
      client: (k, bearer) => makeClient(standin.url, k, bearer),
    });
  } finally {
    // Projects cascade to tasks, messages and logs.
    await db`delete from auth.users where id in (${alice.id}, ${bob.id})`;
    await standin.close();
    await db.end();
  }
}

function dbTest(name: string, fn: (f: Fixture) => Promise<void>) {
  Deno.test({
    name,
    ignore: !DATABASE_URL,
    // supabase-js keeps a realtime client around that the sanitizers flag.
    sanitizeResources: false,
    sanitizeOps: false,
    fn: () => withStandin(fn),
  });
}

async function queueTask(f: Fixture, project: string): Promise<string> {
  const [t] = await f.db`
    insert into public.ai_tasks (project_id, type, payload)
    values (${project}, 'chat_reply', '{}') returning id`;
  return t.id;
}

dbTest("service_role claim_ai_task returns an array of claimed tasks", async (f) => {
  const taskId = await queueTask(f, f.aliceProject);

  const { data, error, status } = await f.service.rpc("claim_ai_task", {
    worker_id: "standin-test",
    project_id: f.aliceProject,
    lease_seconds: 60,
  });

  assertEquals(error, null, "no error");
  assertEquals(status, 200, "status");
  assert(Array.isArray(data), "an array");
  assertEquals(data.length, 1, "one task");
  assertEquals(data[0].id, taskId, "the queued task");
  assertEquals(data[0].attempt, 1, "first attempt");
  assert(Array.isArray(data[0].history), "history is a JSON array, not a string");
  const [row] = await f.db`select status, locked_by from public.ai_tasks where id = ${taskId}`;
  assertEquals([row.status, row.locked_by], ["running", "standin-test"], "claimed in the db");
});

dbTest("claim_ai_task with nothing due returns an empty array", async (f) => {
  const { data, error } = await f.service.rpc("claim_ai_task", {
    worker_id: "standin-test",
    project_id: f.bobProject,
  });
  assertEquals(error, null, "no error");
  assertEquals(data, [], "empty array");
});

dbTest("single() on a set-returning function gives one object, or 406 PGRST116", async (f) => {
  const taskId = await queueTask(f, f.aliceProject);
  const one = await f.service.rpc("claim_ai_task", {
    worker_id: "standin-test",
    project_id: f.aliceProject,
  }).single();
  assertEquals(one.error, null, "no error");
  assertEquals((one.data as { id: string }).id, taskId, "the object itself, not an array");

  const none = await f.service.rpc("claim_ai_task", {
    worker_id: "standin-test",
    project_id: f.aliceProject,
  }).single();
  assertEquals([none.status, none.error?.code], [406, "PGRST116"], "no rows left");
});

dbTest("single() refusing two rows rolls the claim back", async (f) => {
  const ids = [await queueTask(f, f.aliceProject), await queueTask(f, f.aliceProject)];
  const two = await f.service.rpc("claim_ai_task", {
    worker_id: "standin-test",
    project_id: f.aliceProject,
    batch_size: 2,
  }).single();
  assertEquals([two.status, two.error?.code], [406, "PGRST116"], "two rows refused");
  assertEquals(two.error?.details, "The result contains 2 rows", "details");
  const rows = await f.db`select status from public.ai_tasks where id = any(${ids}::uuid[])`;
  assertEquals(rows.map((r) => r.status), ["queued", "queued"], "both still queued");
});

dbTest("complete_ai_task returns a bare scalar: the assistant message id", async (f) => {
  const taskId = await queueTask(f, f.aliceProject);
  const claim = await f.service.rpc("claim_ai_task", {
    worker_id: "standin-test",
    project_id: f.aliceProject,
  });
  assertEquals(claim.error, null, "claim");

  const { data, error } = await f.service.rpc("complete_ai_task", {
    task_id: taskId,
    attempt: claim.data[0].attempt,
    content: "the answer",
    result: { tokens: 3 },
  });

  assertEquals(error, null, "no error");
  assert(typeof data === "string" && UUID.test(data), `a uuid string, got ${data}`);
  const [msg] = await f.db`
    select content, role from public.chat_messages where id = ${data}`;
  assertEquals([msg.content, msg.role], ["the answer", "assistant"], "message written");
});

dbTest("an AQ001 error arrives with its code, message and hint and status 400", async (f) => {
  const taskId = await queueTask(f, f.aliceProject);

  const { data, error, status } = await f.service.rpc("complete_ai_task", {
    task_id: taskId,
    attempt: 1,
    content: "too late",
  });

  assertEquals(data, null, "no data");
  assertEquals(error?.code, "AQ001", "code");
  assertEquals(status, 400, "custom SQLSTATEs are 400");
  assert(error!.message.includes("is not held by attempt 1"), `message: ${error!.message}`);
  assert(/discard this result/.test(error!.hint ?? ""), `hint: ${error!.hint}`);
});

dbTest("a bad argument arrives as 22023 with status 400", async (f) => {
  const { error, status } = await f.service.rpc("claim_ai_task", {
    worker_id: "standin-test",
    batch_size: 0,
  });
  assertEquals(error?.code, "22023", "code");
  assertEquals(status, 400, "status");
  assert(error!.message.startsWith("batch_size"), `message names the field: ${error!.message}`);
});

dbTest("anon calling claim_ai_task is refused with 42501 and status 401", async (f) => {
  const taskId = await queueTask(f, f.aliceProject);

  const { data, error, status } = await f.anon.rpc("claim_ai_task", {
    worker_id: "intruder",
    project_id: f.aliceProject,
  });

  assertEquals(data, null, "no data");
  assertEquals(error?.code, "42501", "permission error");
  assertEquals(status, 401, "401 for anon");
  const [row] = await f.db`select status from public.ai_tasks where id = ${taskId}`;
  assertEquals(row.status, "queued", "the task was not claimed");
});

dbTest("an authenticated user calling claim_ai_task gets 42501 and status 403", async (f) => {
  const { error, status } = await f.alice.rpc("claim_ai_task", { worker_id: "alice" });
  assertEquals(error?.code, "42501", "permission error");
  assertEquals(status, 403, "403 for a signed-in role");
});

dbTest("an authenticated user's enqueue_ai_task works for their own project", async (f) => {
  const { data, error } = await f.alice.rpc("enqueue_ai_task", {
    project_id: f.aliceProject,
    message: "hello from alice",
    payload: { source: "standin-test" },
  });

  assertEquals(error, null, "no error");
  assert(typeof data === "string" && UUID.test(data), `a task id, got ${data}`);
  const [row] = await f.db`
    select user_id, payload ->> 'source' as source from public.ai_tasks where id = ${data}`;
  assertEquals(row.user_id, f.aliceId, "auth.uid() saw the JWT's sub");
  assertEquals(row.source, "standin-test", "a JSON object argument arrived as jsonb");
});

dbTest("an authenticated user's enqueue_ai_task on another's project gets AQ002", async (f) => {
  const { data, error, status } = await f.alice.rpc("enqueue_ai_task", {
    project_id: f.bobProject,
    message: "let me in",
  });

  assertEquals(data, null, "no data");
  assertEquals(error?.code, "AQ002", "not found");
  assertEquals(status, 400, "status");
  const [n] = await f.db`
    select count(*)::int as n from public.ai_tasks where project_id = ${f.bobProject}`;
  assertEquals(n.n, 0, "nothing queued on bob's project");
});

dbTest("a token signed with another secret gets 401", async (f) => {
  const forged = await signJwt({ role: "service_role" }, "x".repeat(40));
  const { error, status } = await f.client(forged).rpc("claim_ai_task", { worker_id: "w" });
  assertEquals(status, 401, "status");
  assertEquals(error?.code, "PGRST301", "code");
});

dbTest("an expired token gets 401 'JWT expired'", async (f) => {
  const expired = await f.key({ role: "service_role", exp: Math.floor(Date.now() / 1000) - 120 });
  const { error, status } = await f.client(expired).rpc("claim_ai_task", { worker_id: "w" });
  assertEquals(status, 401, "status");
  assertEquals(error?.message, "JWT expired", "message");
});

dbTest("an unsigned (alg none) token gets 401", async (f) => {
  const b64 = (o: unknown) => btoa(JSON.stringify(o)).replace(/=+$/, "");
  const none = `${b64({ alg: "none", typ: "JWT" })}.${b64({ role: "service_role" })}.`;
  const { status } = await f.client(none).rpc("claim_ai_task", { worker_id: "w" });
  assertEquals(status, 401, "status");
});

dbTest("a validly signed token naming another database role gets 401", async (f) => {
  const taskId = await queueTask(f, f.aliceProject);
  const sneaky = await f.key({ role: "postgres" });
  const { error, status } = await f.client(sneaky).rpc("claim_ai_task", {
    worker_id: "w",
    project_id: f.aliceProject,
  });
  assertEquals(status, 401, "status");
  assert(/not one of anon, authenticated, service_role/.test(error!.message), error!.message);
  const [row] = await f.db`select status from public.ai_tasks where id = ${taskId}`;
  assertEquals(row.status, "queued", "nothing ran as postgres");
});

dbTest("a request without any key gets 401", async (f) => {
  const res = await fetch(`${f.url}/rest/v1/rpc/claim_ai_task`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ worker_id: "w" }),
  });
  const body = await res.json();
  assertEquals(res.status, 401, "status");
  assertEquals(body.code, "PGRST302", "code");
});

dbTest("an unknown function gets 404 PGRST202", async (f) => {
  const { error, status } = await f.service.rpc("no_such_function_here", { a: 1 });
  assertEquals(status, 404, "status");
  assertEquals(error?.code, "PGRST202", "code");
  assert(error!.message.includes("public.no_such_function_here(a)"), error!.message);
});

dbTest("a path that is not an rpc call gets 404 PGRST125", async (f) => {
  const serviceKey = await f.key({ role: "service_role" });
  for (const path of ["/rest/v1/ai_tasks", "/rest/v1/rpc/%E0%A4%A"]) {
    const res = await fetch(`${f.url}${path}`, { headers: { apikey: serviceKey } });
    const body = await res.json();
    assertEquals([res.status, body.code], [404, "PGRST125"], path);
  }
});

dbTest("an unknown argument name gets 404 PGRST202 with the real signature as hint", async (f) => {
  const { error, status } = await f.service.rpc("claim_ai_task", { worker: "w" });
  assertEquals(status, 404, "status");
  assertEquals(error?.code, "PGRST202", "code");
  assert((error!.hint ?? "").includes("worker_id"), `hint: ${error!.hint}`);
});

dbTest("a missing required argument gets 404 PGRST202", async (f) => {
  const { error, status } = await f.service.rpc("complete_ai_task", {
    task_id: crypto.randomUUID(),
  });
  assertEquals(status, 404, "status");
  assertEquals(error?.code, "PGRST202", "code");
});

dbTest("a body that is not a JSON object gets 400 PGRST102", async (f) => {
  const serviceKey = await f.key({ role: "service_role" });
  const res = await fetch(`${f.url}/rest/v1/rpc/claim_ai_task`, {
    method: "POST",
    headers: { "content-type": "application/json", apikey: serviceKey },
    body: "[1, 2",
  });
  const body = await res.json();
  assertEquals([res.status, body.code], [400, "PGRST102"], "status and code");
});

dbTest("a boolean-returning function answers a bare JSON boolean", async (f) => {
  const { data, error } = await f.service.rpc("extend_ai_task_lease", {
    task_id: crypto.randomUUID(),
    attempt: 1,
  });
  assertEquals(error, null, "no error");
  assertEquals(data, false, "false, not [false] or 'false'");
});

dbTest("a GET call runs read-only: a writing function fails with 25006 and 405", async (f) => {
  const { error, status } = await f.service.rpc("reap_expired_ai_tasks", {}, { get: true });
  assertEquals(error?.code, "25006", "read-only transaction");
  assertEquals(status, 405, "status");
});

dbTest("a void function answers 204 and supabase-js gives null", async (f) => {
  const name = `standin_probe_${crypto.randomUUID().slice(0, 8)}`;
  await f.db.unsafe(
    `create function public.${name}(n integer) returns void language sql as 'select'`,
  );
  try {
    const { data, error, status } = await f.service.rpc(name, { n: 1 });
    assertEquals([data, error, status], [null, null, 204], "null data, 204");
  } finally {
    await f.db.unsafe(`drop function public.${name}(integer)`);
  }
});

dbTest("concurrent calls as anon, a user and the service each run as their own role", async (f) => {
  // 36 calls interleaved on 4 pooled connections: each must see its own role
  // and claims, which holds only if they are set in the transaction of the call.
  const calls = [];
  for (let i = 0; i < 12; i++) {
    calls.push(f.anon.rpc("enqueue_ai_task", { project_id: f.aliceProject }));
    calls.push(f.alice.rpc("enqueue_ai_task", { project_id: f.aliceProject }));
    calls.push(f.service.rpc("enqueue_ai_task", { project_id: f.aliceProject }));
  }
  const results = await Promise.all(calls);

  for (let i = 0; i < results.length; i += 3) {
    assertEquals(results[i].error?.code, "42501", `anon call ${i} refused`);
    assertEquals(results[i + 1].error, null, `alice call ${i + 1} succeeds`);
    assertEquals(results[i + 2].error, null, `service call ${i + 2} succeeds`);
  }
  const rows = await f.db`
    select user_id from public.ai_tasks where project_id = ${f.aliceProject}`;
  assertEquals(rows.length, 24, "24 tasks queued");
  assertEquals(rows.filter((r) => r.user_id === f.aliceId).length, 12, "12 carry alice's id");
  assertEquals(rows.filter((r) => r.user_id === null).length, 12, "12 are the service's");
});
