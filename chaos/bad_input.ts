// Bad input: a table of malformed requests thrown at the runner's HTTP
// handler (served on a local port, as the Edge Function serves it) and at the
// SQL API (as the service, as a signed-in user, as anon). Each must get a
// clear error, a 4xx with a JSON body naming the field or a SQLSTATE whose
// message or COLUMN names the argument, and change nothing: the tables'
// checksum is the same after every case as before it.

import postgres from "postgres";
import { loadConfig } from "../runner/config.ts";
import { createPostgresQueueDb } from "../runner/db.ts";
import { createHandler } from "../runner/http.ts";
import { createLogger } from "../runner/log.ts";
import { createOfflineModel } from "../runner/model.ts";
import {
  asCaller,
  capture,
  check,
  checkEqual,
  DATABASE_URL,
  insertTasks,
  makeProjects,
  resetQueue,
  say,
  type Scenario,
  SECRETS,
  sqlError,
  tablesChecksum,
} from "./lib.ts";

interface HttpCase {
  name: string;
  method?: string;
  headers?: Record<string, string>;
  body?: string | (() => BodyInit);
  status: number;
  /** The JSON body's `field`, when the error is about one. */
  field?: string;
  /** Sent over a bare socket, for what fetch will not send (a false content-length). */
  raw?: string;
}

interface SqlCase {
  name: string;
  as: "service" | "owner" | "other" | "anon" | "nosub";
  run: (tx: postgres.Sql) => Promise<unknown>;
  code: string;
  /** The argument the error must name (in COLUMN or at the start of the message). */
  argument?: string;
  /** Otherwise, text the message must contain. */
  says?: RegExp;
}

function rawRequest(headers: Record<string, string>, length: string, body: string): string {
  const lines = Object.entries(headers).map(([k, v]) => `${k}: ${v}`);
  return [
    "POST / HTTP/1.1",
    "host: 127.0.0.1",
    "connection: close",
    "content-type: application/json",
    `content-length: ${length}`,
    ...lines,
    "",
    body,
  ].join("\r\n");
}

/** A chunked request whose body sends `bytes` and then stops without its last chunk. */
function chunkedRequest(headers: Record<string, string>, bytes: number): string {
  const lines = Object.entries(headers).map(([k, v]) => `${k}: ${v}`);
  const piece = `{"projectId": "` + "x".repeat(8000);
  const chunk = `${piece.length.toString(16)}\r\n${piece}\r\n`;
  return [
    "POST / HTTP/1.1",
    "host: 127.0.0.1",
    "connection: close",
    "content-type: application/json",
    "transfer-encoding: chunked",
    ...lines,
    "",
    "",
  ]
    .join("\r\n") + chunk.repeat(Math.ceil(bytes / piece.length));
}

/** Sends a request as written and reads the answer until the server closes. */
async function sendRaw(
  port: number,
  request: string,
): Promise<{ status: number; text: string; contentType: string }> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(new TextEncoder().encode(request));
  const timer = setTimeout(() => conn.close(), 5000);
  let answer = "";
  try {
    for await (const chunk of conn.readable) answer += new TextDecoder().decode(chunk);
  } catch { /* closed by the timer */ }
  clearTimeout(timer);
  const [head, ...rest] = answer.split("\r\n\r\n");
  const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? 0);
  const contentType = /^content-type: *(.*)$/im.exec(head)?.[1] ?? "";
  return { status, text: rest.join("\r\n\r\n"), contentType };
}

const big = (bytes: number) => "x".repeat(bytes);
const nested = (depth: number) => "[".repeat(depth) + "]".repeat(depth);

function httpCases(projectId: string, missingProject: string): HttpCase[] {
  const auth = { authorization: `Bearer ${SECRETS.httpSecret}` };
  const post = (body: unknown, status: number, field?: string): HttpCase => ({
    name: `body ${JSON.stringify(body).slice(0, 60)}`,
    headers: auth,
    body: JSON.stringify(body),
    status,
    field,
  });
  const files = (ctx: unknown, field: string) =>
    post({ projectId, projectFilesContext: ctx }, 400, field);
  return [
    { name: "GET", method: "GET", headers: auth, status: 405 },
    { name: "PUT", method: "PUT", headers: auth, body: "{}", status: 405 },
    { name: "no Authorization", body: "{}", status: 401 },
    {
      name: "Basic auth",
      headers: { authorization: "Basic dXNlcjpwYXNz" },
      body: "{}",
      status: 401,
    },
    {
      name: "wrong bearer",
      headers: { authorization: "Bearer not-the-secret" },
      body: "{}",
      status: 401,
    },
    {
      name: "wrong x-runner-secret",
      headers: { "x-runner-secret": "nope" },
      body: "{}",
      status: 401,
    },
    {
      name: "SQL in the bearer",
      headers: { authorization: "Bearer ' or 1=1 --" },
      body: "{}",
      status: 401,
    },
    { name: "empty bearer", headers: { authorization: "Bearer " }, body: "{}", status: 401 },
    { name: "not JSON", headers: auth, body: "{projectId: nope", status: 400 },
    { name: "JSON array", headers: auth, body: "[]", status: 400 },
    { name: "JSON null", headers: auth, body: "null", status: 400 },
    { name: "JSON string", headers: auth, body: '"hello"', status: 400 },
    { name: "JSON number", headers: auth, body: "42", status: 400 },
    post({ projectId: 42 }, 400, "projectId"),
    post({ projectId: "not-a-uuid" }, 400, "projectId"),
    post({ projectId: null }, 400, "projectId"),
    post({ projectId: "'; drop table public.ai_tasks; --" }, 400, "projectId"),
    post({ projectId: "00000000-0000-0000-0000-00000000000g" }, 400, "projectId"),
    post({ projectId: `${projectId}\u0000` }, 400, "projectId"),
    post({ projectId: { $ne: null } }, 400, "projectId"),
    post({ projectId: [projectId] }, 400, "projectId"),
    post({ projectId: missingProject }, 404, "projectId"),
    files("bucket/path", "projectFilesContext"),
    files([], "projectFilesContext"),
    files({ bucket: "", path: "a" }, "projectFilesContext.bucket"),
    files({ bucket: "b" }, "projectFilesContext.path"),
    files({ bucket: "b", path: "p", versionNumber: -1 }, "projectFilesContext.versionNumber"),
    files({ bucket: "b", path: "p", versionNumber: 1.5 }, "projectFilesContext.versionNumber"),
    files({ bucket: "b", path: "p", versionId: 5 }, "projectFilesContext.versionId"),
    post({ evil: 1 }, 400, "evil"),
    post({ projectId, "__proto__": { admin: true }, extra: 1 }, 400, "extra"),
    post({ source: "manual" }, 400, "source"),
    post({ trigger: "delete" }, 400, "trigger"),
    post({ due: -1 }, 400, "due"),
    post({ due: "3" }, 400, "due"),
    post({ due: 1.5 }, 400, "due"),
    post({ type: "UPDATE", table: "ai_tasks", record: {} }, 400, "type"),
    post({ type: "INSERT", table: "projects", record: {} }, 400, "type"),
    post({ type: "INSERT", table: "ai_tasks", record: null }, 400, "record"),
    post(
      { type: "INSERT", table: "ai_tasks", record: { project_id: "x" } },
      400,
      "record.project_id",
    ),
    {
      name: "10 MB body",
      headers: auth,
      body: JSON.stringify({ projectId, pad: big(10 << 20) }),
      status: 413,
    },
    {
      name: "10 MB body without content-length",
      headers: auth,
      status: 413,
      body: () => new Blob([JSON.stringify({ projectId, pad: big(10 << 20) })]).stream(),
    },
    {
      name: "content-length that claims 95 MB",
      raw: rawRequest(auth, "99999999", "{}"),
      status: 413,
    },
    // A chunked body with no end in sight: the handler must stop reading at its limit
    // instead of waiting for (and holding) all of it.
    { name: "chunked body that never ends", raw: chunkedRequest(auth, 1 << 20), status: 413 },
    {
      name: "JSON nested 30000 deep",
      headers: auth,
      body: `{"projectId": ${nested(30_000)}}`,
      status: 400,
    },
    { name: "JSON nested 1 million deep", headers: auth, body: nested(1_000_000), status: 413 },
  ];
}

function sqlCases(
  p: { own: string; others: string; queued: string; othersTask: string },
): SqlCase[] {
  const missing = crypto.randomUUID();
  // Every argument goes as text and is cast by the server, as PostgREST does.
  const enqueue = (args: Record<string, string | number | null>) => (tx: postgres.Sql) => {
    const arg = (name: string, fallback: string | number | null) =>
      name in args ? args[name] : fallback;
    return tx`select public.enqueue_ai_task(
         project_id => ${arg("project_id", p.own)}::text::uuid,
         type => ${arg("type", "chat_reply")}::text,
         payload => ${arg("payload", "{}")}::text::jsonb,
         message => ${arg("message", null)}::text,
         model => ${arg("model", null)}::text,
         priority => ${arg("priority", 0)}::text::int,
         max_attempts => ${arg("max_attempts", 3)}::text::int)`;
  };
  const svc = (
    name: string,
    run: SqlCase["run"],
    code: string,
    argument?: string,
    says?: RegExp,
  ): SqlCase => ({ name, as: "service", run, code, argument, says });
  const enqueueNull = (tx: postgres.Sql) => tx`select public.enqueue_ai_task(null::uuid)`;
  return [
    svc("enqueue: project_id null", enqueueNull, "22004", "project_id"),
    svc(
      "enqueue: project_id not a uuid",
      (tx) => tx`select public.enqueue_ai_task(${"not-a-uuid"}::uuid)`,
      "22P02",
      undefined,
      /uuid/,
    ),
    svc(
      "enqueue: project_id with SQL",
      (tx) => tx`select public.enqueue_ai_task(${"'); delete from public.ai_tasks; --"}::uuid)`,
      "22P02",
      undefined,
      /uuid/,
    ),
    svc(
      "enqueue: unknown project",
      enqueue({ project_id: missing }),
      "AQ002",
      undefined,
      /not found/,
    ),
    svc("enqueue: unknown task type", enqueue({ type: "mine_bitcoin" }), "22023", "type"),
    svc(
      "enqueue: type with SQL",
      enqueue({ type: "chat_reply'; drop table public.ai_tasks;--" }),
      "22023",
      "type",
    ),
    svc("enqueue: type null", enqueue({ type: null }), "22004", "type"),
    svc("enqueue: payload an array", enqueue({ payload: "[1,2]" }), "22023", "payload"),
    svc("enqueue: payload a string", enqueue({ payload: '"x"' }), "22023", "payload"),
    svc(
      "enqueue: payload over 1 MiB",
      enqueue({ payload: JSON.stringify({ pad: big(2 << 20) }) }),
      "22023",
      "payload",
    ),
    svc("enqueue: payload not JSON", enqueue({ payload: "{nope" }), "22P02", undefined, /json/),
    svc(
      "enqueue: payload nested 200000 deep",
      enqueue({ payload: `{"a": ${nested(200_000)}}` }),
      "54001",
      undefined,
      /stack depth/,
    ),
    svc("enqueue: 10 MB message", enqueue({ message: big(10 << 20) }), "22023", "message"),
    svc("enqueue: blank message", enqueue({ message: "   " }), "22023", "message"),
    svc("enqueue: model with a space", enqueue({ model: "gpt 4" }), "22023", "model"),
    svc("enqueue: model empty", enqueue({ model: "" }), "22023", "model"),
    svc("enqueue: priority 1000", enqueue({ priority: 1000 }), "22023", "priority"),
    svc("enqueue: max_attempts 0", enqueue({ max_attempts: 0 }), "22023", "max_attempts"),
    svc(
      "claim: worker_id empty",
      (tx) => tx`select * from public.claim_ai_task('')`,
      "22023",
      "worker_id",
    ),
    svc(
      "claim: worker_id null",
      (tx) => tx`select * from public.claim_ai_task(null)`,
      "22004",
      "worker_id",
    ),
    svc(
      "claim: batch_size 0",
      (tx) => tx`select * from public.claim_ai_task('w', null, 0)`,
      "22023",
      "batch_size",
    ),
    svc(
      "claim: lease_seconds 1",
      (tx) => tx`select * from public.claim_ai_task('w', null, 1, 1)`,
      "22023",
      "lease_seconds",
    ),
    svc(
      "claim: worker_id of 10 kB",
      (tx) => tx`select * from public.claim_ai_task(${big(10_000)})`,
      "22023",
      "worker_id",
    ),
    svc(
      "complete: task_id null",
      (tx) => tx`select public.complete_ai_task(null, 1, 'x')`,
      "22004",
      "task_id",
    ),
    svc(
      "complete: attempt 0",
      (tx) => tx`select public.complete_ai_task(${p.queued}::uuid, 0, 'x')`,
      "22023",
      "attempt",
    ),
    svc(
      "complete: content null",
      (tx) => tx`select public.complete_ai_task(${p.queued}::uuid, 1, null)`,
      "22004",
      "content",
    ),
    svc(
      "complete: content over 200000 characters",
      (tx) => tx`select public.complete_ai_task(${p.queued}::uuid, 1, ${big(200_001)})`,
      "22023",
      "content",
    ),
    svc(
      "complete: result an array",
      (tx) => tx`select public.complete_ai_task(${p.queued}::uuid, 1, 'x', '[]')`,
      "22023",
      "result",
    ),
    svc(
      "complete: a task not held",
      (tx) => tx`select public.complete_ai_task(${p.queued}::uuid, 1, 'x')`,
      "AQ001",
      undefined,
      /not held/,
    ),
    svc(
      "complete: unknown task",
      (tx) => tx`select public.complete_ai_task(${missing}::uuid, 1, 'x')`,
      "AQ002",
      undefined,
      /not found/,
    ),
    svc(
      "fail: retryable null",
      (tx) => tx`select public.fail_ai_task(${p.queued}::uuid, 1, 'e', null)`,
      "22004",
      "retryable",
    ),
    svc(
      "fail: retry_after_seconds -5",
      (tx) => tx`select public.fail_ai_task(${p.queued}::uuid, 1, 'e', true, -5)`,
      "22023",
      "retry_after_seconds",
    ),
    svc(
      "fail: a task not held",
      (tx) => tx`select public.fail_ai_task(${p.queued}::uuid, 1, 'e')`,
      "AQ001",
      undefined,
      /not held/,
    ),
    svc(
      "extend: lease_seconds 0",
      (tx) => tx`select public.extend_ai_task_lease(${p.queued}::uuid, 1, 0)`,
      "22023",
      "lease_seconds",
    ),
    svc(
      "snooze: retry_after_seconds 100000",
      (tx) => tx`select public.snooze_ai_task(${p.queued}::uuid, 1, 100000)`,
      "22023",
      "retry_after_seconds",
    ),
    svc("cancel: task_id null", (tx) => tx`select public.cancel_ai_task(null)`, "22004", "task_id"),
    svc(
      "cancel: unknown task",
      (tx) => tx`select public.cancel_ai_task(${missing}::uuid)`,
      "AQ002",
      undefined,
      /not found/,
    ),
    svc(
      "retry: a queued task",
      (tx) => tx`select public.retry_ai_task(${p.queued}::uuid)`,
      "AQ003",
      undefined,
      /queued/,
    ),
    svc(
      "retry: extra_attempts -1",
      (tx) => tx`select public.retry_ai_task(${p.queued}::uuid, -1)`,
      "22023",
      "extra_attempts",
    ),
    {
      name: "user: enqueue into another user's project",
      as: "owner",
      code: "AQ002",
      run: enqueue({ project_id: p.others }),
      says: /not found/,
    },
    {
      name: "user: enqueue with an unknown type",
      as: "owner",
      code: "22023",
      run: enqueue({ type: "nope" }),
      argument: "type",
    },
    {
      name: "user: enqueue with a 10 MB message",
      as: "owner",
      code: "22023",
      run: enqueue({ message: big(10 << 20) }),
      argument: "message",
    },
    {
      name: "user: cancel another user's task",
      as: "owner",
      code: "AQ002",
      run: (tx) => tx`select public.cancel_ai_task(${p.othersTask}::uuid)`,
      says: /not found/,
    },
    {
      name: "user: retry another user's task",
      as: "owner",
      code: "AQ002",
      run: (tx) => tx`select public.retry_ai_task(${p.othersTask}::uuid)`,
      says: /not found/,
    },
    {
      name: "user: claim",
      as: "owner",
      code: "42501",
      run: (tx) => tx`select * from public.claim_ai_task('me')`,
      says: /permission denied/,
    },
    {
      name: "user: complete its own task",
      as: "owner",
      code: "42501",
      run: (tx) => tx`select public.complete_ai_task(${p.queued}::uuid, 1, 'x')`,
      says: /permission denied/,
    },
    {
      name: "user: a project id of the other user, as that user's owner",
      as: "other",
      code: "AQ002",
      run: enqueue({ project_id: p.own }),
      says: /not found/,
    },
    {
      name: "signed in without a user id: enqueue",
      as: "nosub",
      code: "42501",
      run: enqueue({}),
      says: /no user id/,
    },
    {
      name: "anon: enqueue",
      as: "anon",
      code: "42501",
      run: enqueue({}),
      says: /permission denied/,
    },
  ];
}

export const scenario: Scenario = {
  name: "bad_input",
  async run(sql) {
    await resetQueue(sql);
    const [own, others] = await makeProjects(sql, 2);
    const [queued] = await insertTasks(sql, [own], 1, { text: "bad input" });
    const [othersTask] = await insertTasks(sql, [others], 1, { text: "bad input" });
    const [{ owner, other }] = await sql`
      select (select owner_id from public.projects where id = ${own}::uuid) as owner,
             (select owner_id from public.projects where id = ${others}::uuid) as other`;

    // The handler as the Edge Function runs it, on a port of its own.
    const config = loadConfig({
      DATABASE_URL,
      RUNNER_DB_CLIENT: "postgres",
      RUNNER_HTTP_SECRET: SECRETS.httpSecret,
      RUNNER_LOG_FORMAT: "json",
      RUNNER_WORKER_ID: "chaos-http",
      RUNNER_TIME_BUDGET_MS: "5000",
    });
    const db = createPostgresQueueDb(DATABASE_URL, 2);
    const log = createLogger("json", "runner", (line) => capture("http-handler.log", line));
    const handler = createHandler({ config, db, model: createOfflineModel(), log });
    const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, handler);
    const url = `http://127.0.0.1:${server.addr.port}/`;

    const failures: string[] = [];
    let httpCount = 0, sqlCount = 0;
    try {
      for (const c of httpCases(own, crypto.randomUUID())) {
        httpCount++;
        const before = await tablesChecksum(sql);
        let status: number, text: string, contentType: string;
        if (c.raw) {
          ({ status, text, contentType } = await sendRaw(server.addr.port, c.raw));
        } else {
          const body = typeof c.body === "function" ? c.body() : c.body;
          const res = await fetch(url, { method: c.method ?? "POST", headers: c.headers, body });
          [status, text, contentType] = [
            res.status,
            await res.text(),
            res.headers.get("content-type") ?? "",
          ];
        }
        capture("http-bodies.log", `${c.name}: ${status} ${text}`);
        let json: { error?: unknown; field?: unknown } = {};
        try {
          json = JSON.parse(text);
        } catch { /* checked below */ }
        const after = await tablesChecksum(sql);
        const problems = [
          status !== c.status && `status ${status}, expected ${c.status}`,
          !/application\/json/.test(contentType) && "not JSON",
          (typeof json.error !== "string" || json.error.length < 10) && "no error message",
          c.field !== undefined && json.field !== c.field &&
          `field ${JSON.stringify(json.field)}, expected ${c.field}`,
          before !== after && "the tables changed",
        ].filter(Boolean);
        if (problems.length > 0) failures.push(`HTTP ${c.name}: ${problems.join("; ")}`);
      }

      // A transaction's handle runs the same queries as the pool's.
      const tx = (fn: SqlCase["run"]) => (t: postgres.TransactionSql) =>
        fn(t as unknown as postgres.Sql);
      const callers = {
        owner: (fn: SqlCase["run"]) => asCaller(sql, "authenticated", owner, tx(fn)),
        other: (fn: SqlCase["run"]) => asCaller(sql, "authenticated", other, tx(fn)),
        nosub: (fn: SqlCase["run"]) => asCaller(sql, "authenticated", null, tx(fn)),
        anon: (fn: SqlCase["run"]) => asCaller(sql, "anon", null, tx(fn)),
        service: (fn: SqlCase["run"]) => fn(sql),
      };
      for (const c of sqlCases({ own, others, queued, othersTask })) {
        sqlCount++;
        const before = await tablesChecksum(sql);
        const error = await sqlError(() => callers[c.as](c.run));
        const after = await tablesChecksum(sql);
        capture("sql-errors.log", `${c.name}: ${error?.code} ${error?.message.slice(0, 300)}`);
        const names = error && c.argument !== undefined &&
          (error.column === c.argument || error.message.startsWith(`${c.argument} `));
        const problems = [
          !error && "no error",
          error && error.code !== c.code &&
          `SQLSTATE ${error.code} (${error.message.slice(0, 120)}),` +
            ` expected ${c.code}`,
          error && c.argument !== undefined && !names && `does not name ${c.argument}: ` +
            error.message.slice(0, 120),
          error && c.says && !c.says.test(error.message) &&
          `message ${error.message.slice(0, 120)}`,
          before !== after && "the tables changed",
        ].filter(Boolean);
        if (problems.length > 0) failures.push(`SQL ${c.name}: ${problems.join("; ")}`);
      }
    } finally {
      await server.shutdown();
      await db.close();
    }

    const line = `inputs=${httpCount + sqlCount} (http ${httpCount}, sql ${sqlCount}) ` +
      `rejected_cleanly=${httpCount + sqlCount - failures.length} failures=${failures.length} ` +
      `tables_changed_by_bad_input=${failures.filter((f) => f.includes("tables changed")).length}`;
    say(line);
    for (const f of failures) say(`  ${f}`);
    check(httpCount + sqlCount >= 50, "at least 50 malformed inputs");
    checkEqual(failures.length, 0, "inputs without a clean rejection");
    return { figures: line };
  },
};
