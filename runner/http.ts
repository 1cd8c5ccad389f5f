// The Edge Function: one POST processes queued tasks within a time budget and
// answers what it did. Three callers, three body shapes:
//   the browser or backend   { "projectId": uuid, "projectFilesContext"?: {...} }
//   a Database Webhook       { "type": "INSERT", "table": "ai_tasks", "record": {...} }
//   pg_cron (via pg_net)     {} or { "source": "cron" }   (any project)
//   the queue's own wake-up  { "trigger": "insert" | "schedule", "due": n }  (any project)

import { type Config, loadConfig } from "./config.ts";
import { createQueueDb, type QueueDb } from "./db.ts";
import type { ProjectFilesContext } from "./handlers.ts";
import { createLogger, errorText, type Logger } from "./log.ts";
import { type ChatModel, createModel, OFFLINE_MODEL } from "./model.ts";
import { Worker } from "./worker.ts";

export interface HttpDeps {
  config: Config;
  db: QueueDb;
  model: ChatModel;
  log: Logger;
}

export interface Job {
  source: "request" | "webhook" | "cron" | "insert" | "schedule";
  projectId: string | null;
  projectFilesContext: ProjectFilesContext | null;
}

export class HttpError extends Error {
  override name = "HttpError";
  constructor(readonly status: number, message: string, readonly field?: string) {
    super(message);
  }
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const MAX_BODY_BYTES = 64 * 1024;

function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json; charset=utf-8", ...headers },
  });
}

function describe(value: unknown): string {
  if (value === null) return "null";
  if (value === undefined) return "nothing";
  if (Array.isArray(value)) return "an array";
  if (typeof value === "string") return JSON.stringify(value.slice(0, 80));
  return typeof value === "object" ? "an object" : `${typeof value} ${String(value)}`;
}

function projectIdFrom(value: unknown, field: string): string {
  if (value === undefined) throw new HttpError(400, `${field} is required`, field);
  if (typeof value !== "string" || !UUID.test(value)) {
    throw new HttpError(400, `${field} must be a UUID, got ${describe(value)}`, field);
  }
  return value.toLowerCase();
}

function filesContextFrom(value: unknown): ProjectFilesContext | null {
  const field = "projectFilesContext";
  if (value === undefined || value === null) return null;
  if (typeof value !== "object" || Array.isArray(value)) {
    throw new HttpError(400, `${field} must be an object, got ${describe(value)}`, field);
  }
  const v = value as Record<string, unknown>;
  for (const key of ["bucket", "path"]) {
    if (typeof v[key] !== "string" || (v[key] as string).length === 0) {
      throw new HttpError(
        400,
        `${field}.${key} must be a non-empty string, got ${describe(v[key])}`,
        `${field}.${key}`,
      );
    }
  }
  if (v.versionId !== undefined && typeof v.versionId !== "string") {
    throw new HttpError(
      400,
      `${field}.versionId must be a string, got ${describe(v.versionId)}`,
      `${field}.versionId`,
    );
  }
  if (
    v.versionNumber !== undefined &&
    !(Number.isInteger(v.versionNumber) && (v.versionNumber as number) >= 0)
  ) {
    throw new HttpError(
      400,
      `${field}.versionNumber must be a whole number of 0 or more, got ${
        describe(v.versionNumber)
      }`,
      `${field}.versionNumber`,
    );
  }
  return {
    bucket: v.bucket as string,
    path: v.path as string,
    versionId: v.versionId as string | undefined,
    versionNumber: v.versionNumber as number | undefined,
  };
}

/** Reads a request body into the work it asks for; a bad body is a 400 naming the field. */
export function parseJob(text: string): Job {
  // pg_net and a bare `curl -X POST` may send no body at all: same as {}.
  if (text.trim() === "") return { source: "cron", projectId: null, projectFilesContext: null };
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch (error) {
    throw new HttpError(400, `body must be JSON: ${errorText(error, 120)}`);
  }
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw new HttpError(400, `body must be a JSON object, got ${describe(body)}`);
  }
  const b = body as Record<string, unknown>;

  if ("record" in b || "table" in b || "type" in b) {
    if (b.type !== "INSERT" || b.table !== "ai_tasks") {
      throw new HttpError(
        400,
        `webhook must be an INSERT on ai_tasks, got ${describe(b.type)} ` +
          `on ${describe(b.table)}`,
        "type",
      );
    }
    if (typeof b.record !== "object" || b.record === null || Array.isArray(b.record)) {
      throw new HttpError(
        400,
        `record must be the inserted row, got ${describe(b.record)}`,
        "record",
      );
    }
    const record = b.record as Record<string, unknown>;
    return {
      source: "webhook",
      projectId: projectIdFrom(record.project_id, "record.project_id"),
      projectFilesContext: null,
    };
  }

  const known = ["projectId", "projectFilesContext", "source", "trigger", "due"];
  const unknown = Object.keys(b).filter((k) => !known.includes(k));
  if (unknown.length > 0) {
    throw new HttpError(
      400,
      `unknown field ${unknown[0]}; expected ${known.join(", ")}`,
      unknown[0],
    );
  }
  if (b.source !== undefined && b.source !== "cron") {
    throw new HttpError(
      400,
      `source must be "cron" when given, got ${describe(b.source)}`,
      "source",
    );
  }
  if (b.trigger !== undefined && b.trigger !== "insert" && b.trigger !== "schedule") {
    throw new HttpError(
      400,
      `trigger must be "insert" or "schedule" when given, got ` +
        describe(b.trigger),
      "trigger",
    );
  }
  if (b.due !== undefined && !(Number.isInteger(b.due) && (b.due as number) >= 0)) {
    throw new HttpError(
      400,
      `due must be a whole number of 0 or more, got ${describe(b.due)}`,
      "due",
    );
  }
  if (b.projectId === undefined && b.projectFilesContext === undefined) {
    const source = b.trigger === undefined ? "cron" : b.trigger as "insert" | "schedule";
    return { source, projectId: null, projectFilesContext: null };
  }
  return {
    source: "request",
    projectId: projectIdFrom(b.projectId, "projectId"),
    projectFilesContext: filesContextFrom(b.projectFilesContext),
  };
}

async function digest(text: string): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text)));
}

/** Compares the digests, so the time taken says nothing about where the strings differ. */
async function sameSecret(given: string, expected: string): Promise<boolean> {
  const [a, b] = await Promise.all([digest(given), digest(expected)]);
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

/**
 * Accepts `Authorization: Bearer <service role key or RUNNER_HTTP_SECRET>`, or
 * the secret in `x-runner-secret`. Behind the Functions gateway, which wants
 * a JWT in Authorization, the secret travels in its own header.
 */
async function authorize(request: Request, config: Config): Promise<void> {
  const secrets = [config.serviceRoleKey, config.httpSecret].filter((s): s is string => !!s);
  if (secrets.length === 0) {
    throw new HttpError(
      500,
      "the runner has neither SUPABASE_SERVICE_ROLE_KEY nor " +
        "RUNNER_HTTP_SECRET set, so it cannot authorize any request",
    );
  }
  const given: string[] = [];
  const secretHeader = request.headers.get("x-runner-secret");
  if (secretHeader) given.push(secretHeader.trim());
  const header = request.headers.get("authorization");
  if (header) {
    const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
    if (match) given.push(match[1]);
    else if (given.length === 0) {
      throw new HttpError(401, "Authorization header must be Bearer <key>");
    }
  }
  if (given.length === 0) {
    throw new HttpError(
      401,
      "Authorization header is required: Bearer <service role key or RUNNER_HTTP_SECRET>",
    );
  }
  let ok = false;
  for (const token of given) {
    for (const secret of secrets) ok = (await sameSecret(token, secret)) || ok;
  }
  if (!ok) {
    throw new HttpError(
      401,
      "Authorization key is wrong: use the service role key or RUNNER_HTTP_SECRET",
    );
  }
}

async function readBody(request: Request): Promise<string> {
  const declared = Number(request.headers.get("content-length") ?? "0");
  if (declared > MAX_BODY_BYTES) {
    throw new HttpError(413, `body must be at most ${MAX_BODY_BYTES} bytes, got ${declared}`);
  }
  // Read only up to the limit: a chunked body has no length to check first,
  // and one that never ends would otherwise hold the request (and memory) open.
  const reader = request.body?.getReader();
  if (!reader) return "";
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > MAX_BODY_BYTES) {
      await reader.cancel().catch(() => {});
      throw new HttpError(413, `body must be at most ${MAX_BODY_BYTES} bytes, got more`);
    }
    chunks.push(value);
  }
  const body = new Uint8Array(size);
  let at = 0;
  for (const chunk of chunks) {
    body.set(chunk, at);
    at += chunk.byteLength;
  }
  return new TextDecoder().decode(body);
}

/** Processes the job's tasks until none is due or the time budget runs out. */
export async function runJob(job: Job, deps: HttpDeps, budgetMs = deps.config.timeBudgetMs) {
  const { config } = deps;
  const started = performance.now();
  const workerId = `${config.workerId}/http-${crypto.randomUUID().slice(0, 8)}`;
  const worker = new Worker({
    ...deps,
    config: { ...config, workerId },
    drain: true,
    listen: false,
    failFast: true,
    projectId: job.projectId,
    projectFilesContext: job.projectFilesContext,
  });

  // Claim nothing new once a model call could no longer finish in time, and
  // give back what still runs when the budget ends.
  const runway = Math.min(config.modelTimeoutMs, Math.floor(budgetMs / 3));
  let budgetSpent = false;
  const timer = setTimeout(() => {
    budgetSpent = true;
    void worker.shutdown(runway);
  }, budgetMs - runway);
  try {
    await worker.run();
  } finally {
    clearTimeout(timer);
  }
  const { duration_ms: _, tasks_per_second: __, ...stats } = worker.summary();
  return {
    worker: workerId,
    source: job.source,
    project_id: job.projectId,
    ...stats,
    // More may be due: the budget ran out, so the next call should carry on.
    budget_exhausted: budgetSpent,
    duration_ms: Math.round(performance.now() - started),
    claimError: worker.claimError,
  };
}

/** Supabase's Edge Runtime keeps a function alive for promises given to waitUntil. */
function inBackground(work: Promise<unknown>): void {
  const runtime = (globalThis as { EdgeRuntime?: { waitUntil(p: Promise<unknown>): void } })
    .EdgeRuntime;
  runtime?.waitUntil(work);
}

/**
 * `Prefer: respond-async` (RFC 7240): answer 202 at once and process in the
 * background, for callers that would time out waiting for model calls
 * (pg_net, Database Webhooks). The summary then goes to the log only.
 */
async function accept(job: Job, deps: HttpDeps): Promise<Response> {
  if (job.projectId && !(await deps.db.projectExists(job.projectId))) {
    throw new HttpError(404, `project ${job.projectId} not found`, "projectId");
  }
  const work = runJob(job, deps)
    .then(({ claimError, ...summary }) =>
      deps.log.info("http_done", {
        ...summary,
        async: true,
        error: claimError ? errorText(claimError, 300) : undefined,
      })
    )
    .catch((error) => deps.log.error("http_error", { error: errorText(error, 300) }));
  inBackground(work);
  return json(202, { accepted: true, source: job.source, project_id: job.projectId }, {
    "preference-applied": "respond-async",
  });
}

export type Handler = (request: Request) => Promise<Response>;

/**
 * Builds the handler. Without deps it reads the environment on first use, so
 * a bad setting answers 500 with the variable's name instead of crashing the
 * function at import.
 */
export function createHandler(deps?: HttpDeps): Handler {
  let shared: HttpDeps | null = deps ?? null;
  const ready = (): HttpDeps => {
    if (shared) return shared;
    const config = loadConfig();
    const log = createLogger(config.logFormat, "runner", undefined, config.logLevel);
    shared = { config, db: createQueueDb(config), model: createModel(config), log };
    if (shared.model.name === "offline") {
      log.warn("offline_model", { model: OFFLINE_MODEL, reason: "OPENROUTER_KEY is not set" });
    }
    return shared;
  };

  return async (request) => {
    let log: Logger | null = null;
    try {
      if (request.method !== "POST") {
        throw new HttpError(405, `method must be POST, got ${request.method}`);
      }
      const d = ready();
      log = d.log;
      await authorize(request, d.config);
      const job = parseJob(await readBody(request));

      if (/\brespond-async\b/i.test(request.headers.get("prefer") ?? "")) {
        return await accept(job, d);
      }
      const { claimError, ...summary } = await runJob(job, d);
      if (claimError && summary.claimed === 0) {
        throw new HttpError(503, `database unavailable: ${errorText(claimError, 300)}`);
      }
      if (summary.claimed === 0 && job.projectId && !(await d.db.projectExists(job.projectId))) {
        throw new HttpError(404, `project ${job.projectId} not found`, "projectId");
      }
      d.log.info("http_done", summary);
      return json(200, claimError ? { ...summary, error: errorText(claimError, 300) } : summary);
    } catch (error) {
      if (error instanceof HttpError) {
        const headers: Record<string, string> = error.status === 405
          ? { allow: "POST" }
          : error.status === 401
          ? { "www-authenticate": "Bearer" }
          : {};
        log?.warn("http_rejected", { status: error.status, error: error.message });
        return json(error.status, { error: error.message, field: error.field }, headers);
      }
      const message = error instanceof Error && error.name === "ConfigError"
        ? `runner misconfigured: ${error.message}`
        : `runner error: ${errorText(error, 300)}`;
      (log ?? console).error?.("http_error", { error: message });
      return json(500, { error: message });
    }
  };
}
