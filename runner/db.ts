// The queue as the runner sees it: the SQL functions of db/functions and
// nothing else. Two ways to reach them behind one interface: postgres.js over
// a database connection (the worker's default; it can LISTEN), and
// supabase-js `.rpc()` over PostgREST (an Edge Function's natural client).

import postgres from "postgres";
import { createClient, type SupabaseClient } from "@supabase/supabase-js";
import type { Config } from "./config.ts";

export interface HistoryMessage {
  role: "user" | "assistant" | "system";
  content: string;
}

/** A task handed to this worker by claim_ai_task. */
export interface ClaimedTask {
  id: string;
  projectId: string;
  userId: string | null;
  type: string;
  payload: Record<string, unknown>;
  model: string | null;
  priority: number;
  /** The fencing token: every later call for this task passes it back. */
  attempt: number;
  maxAttempts: number;
  createdAt: string;
  leaseExpiresAt: string;
  history: HistoryMessage[];
}

export type TaskRef = Pick<ClaimedTask, "id" | "attempt">;

export interface ClaimOptions {
  workerId: string;
  projectId?: string | null;
  batchSize: number;
  leaseSeconds: number;
}

export type ListenState = "listening" | "relistened" | "lost";

export interface QueueDb {
  readonly kind: "postgres" | "supabase";
  claim(options: ClaimOptions): Promise<ClaimedTask[]>;
  /**
   * Writes the answer; returns the assistant message id. Raises AQ001 when not
   * held. Completions arriving together share one call (CompletionBatcher).
   */
  complete(
    task: TaskRef,
    content: string,
    result: Record<string, unknown>,
    model: string | null,
  ): Promise<string>;
  /** Returns the new status: queued (a retry is scheduled) or failed. */
  fail(
    task: TaskRef,
    error: string,
    retryable: boolean,
    retryAfterSeconds?: number | null,
  ): Promise<string>;
  /**
   * A rate-limit answer: back to the queue without spending the attempt where
   * snooze_ai_task exists, else a retryable failure. Returns the new status.
   */
  snooze(task: TaskRef, retryAfterSeconds: number | null, reason: string): Promise<string>;
  /** False once the attempt no longer holds the task (cancelled, taken over). */
  extend(task: TaskRef, leaseSeconds: number): Promise<boolean>;
  release(task: TaskRef): Promise<boolean>;
  streamReply(task: TaskRef, content: string): Promise<boolean>;
  /** Whether a project exists; asked only when a project-scoped claim finds nothing. */
  projectExists(projectId: string): Promise<boolean>;
  /**
   * Calls onWake on every NOTIFY on channel ai_tasks, and onState when the
   * subscription is (re)established. Returns null where the client cannot listen.
   */
  listen(
    onWake: () => void,
    onState?: (state: ListenState) => void,
  ): Promise<(() => Promise<void>) | null>;
  close(): Promise<void>;
}

/** A failed queue call, with the SQLSTATE (or PostgREST code) when the server sent one. */
export class QueueDbError extends Error {
  override name = "QueueDbError";
  constructor(
    readonly step: string,
    readonly code: string | null,
    message: string,
    /** The call never reached the database or the connection dropped: worth retrying. */
    readonly transient: boolean,
    options?: ErrorOptions,
  ) {
    super(`${step}: ${message}`, options);
  }

  /** The attempt no longer holds the task: cancelled, or its lease was taken over. */
  get leaseLost(): boolean {
    return this.code === "AQ001";
  }

  get missingFunction(): boolean {
    return this.code === "42883" || this.code === "PGRST202";
  }
}

const SQLSTATE = /^[0-9A-Z]{5}$/;

// Connection trouble, a server shutting down or refusing connections, and
// lock conflicts: the statement did not take effect and may be sent again.
function transientSqlState(code: string): boolean {
  return code.startsWith("08") || code.startsWith("57P") || code === "53300" ||
    code === "40001" || code === "40P01";
}

function rowToTask(row: Record<string, unknown>): ClaimedTask {
  const time = (v: unknown) => v instanceof Date ? v.toISOString() : String(v);
  return {
    id: String(row.id),
    projectId: String(row.project_id),
    userId: row.user_id == null ? null : String(row.user_id),
    type: String(row.type),
    payload: (row.payload ?? {}) as Record<string, unknown>,
    model: row.model == null ? null : String(row.model),
    priority: Number(row.priority),
    attempt: Number(row.attempt),
    maxAttempts: Number(row.max_attempts),
    createdAt: time(row.created_at),
    leaseExpiresAt: time(row.lease_expires_at),
    history: (row.history ?? []) as HistoryMessage[],
  };
}

// ------------------------------------------------------- batched completions

/** One task's answer, as complete_ai_task and complete_ai_tasks take it. */
export interface Completion {
  task: TaskRef;
  content: string;
  result: Record<string, unknown>;
  model: string | null;
}

/** A row of complete_ai_tasks (public.ai_task_completion). */
export interface CompletionRow {
  task_id: string;
  message_id: string | null;
  outcome: string;
  status: string | null;
  attempt: number | null;
}

export interface CompletionBatchOptions {
  /** Most completions in one call; 1 sends each task's alone (no batching). */
  max: number;
  /** How long a completion may wait for others while a batch is on its way. */
  waitMs: number;
}

export const DEFAULT_COMPLETION_BATCH: CompletionBatchOptions = { max: 100, waitMs: 2 };

// Batches on their way at once. One keeps the commits in a row (each batch
// takes what gathered while the last was on its way); a second overlaps one
// batch's commit with the next batch's work on the other core. More would
// only take connections that claims need.
const MAX_BATCHES_IN_FLIGHT = 2;

interface Waiting {
  entry: Completion;
  resolve: (messageId: string) => void;
  reject: (error: unknown) => void;
}

/**
 * Sends the completions that arrive close together as one complete_ai_tasks
 * call: one commit (one WAL flush) and one round trip for the lot, instead of
 * one per task. Each caller still gets its own answer: the message id, or
 * the error complete_ai_task would have raised for its task alone (AQ001 when
 * its attempt no longer holds the task, AQ002 when it is gone).
 *
 * When to send: a completion that finds nothing on its way goes as soon as
 * the code running now is done (with whatever completed alongside it), so a
 * lone task waits for no timer. While a batch is on its way the
 * others gather, and go when it returns, when `max` are waiting, or after
 * `waitMs`. A call refused as a whole (an entry the database will not take)
 * is sent again entry by entry, so one bad entry fails only its own task;
 * a call that never got an answer fails every entry as transient, and
 * persist() in task.ts repeats each one (completing is idempotent per attempt).
 * Where complete_ai_tasks does not exist yet, each completion goes alone;
 * that fallback can go once every database has migration 20261203400001.
 */
export class CompletionBatcher {
  #pending: Waiting[] = [];
  #inFlight = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  /** A send is scheduled (a microtask or the timer). */
  #armed = false;
  #batchMissing = false;
  #idle: (() => void)[] = [];

  constructor(
    private readonly sendBatch: (entries: Completion[]) => Promise<CompletionRow[]>,
    private readonly sendOne: (entry: Completion) => Promise<string>,
    private readonly options: CompletionBatchOptions = DEFAULT_COMPLETION_BATCH,
  ) {}

  complete(entry: Completion): Promise<string> {
    if (this.options.max <= 1 || this.#batchMissing) return this.sendOne(entry);
    return new Promise((resolve, reject) => {
      this.#pending.push({ entry, resolve, reject });
      this.#schedule();
    });
  }

  /** Resolves once every completion handed in has its answer. */
  settled(): Promise<void> {
    if (this.#pending.length === 0 && this.#inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idle.push(resolve));
  }

  #schedule(): void {
    if (this.#pending.length >= this.options.max) return this.#flush();
    if (this.#armed) return;
    this.#armed = true;
    if (this.#inFlight === 0) {
      // Nothing on its way: send as soon as the code running now is done, so
      // completions made together go together and a lone one waits for no
      // timer (a 0 ms timer still cost a lone task 1-2 ms).
      queueMicrotask(() => {
        if (this.#armed) this.#flush();
      });
    } else {
      this.#timer = setTimeout(() => this.#flush(), this.options.waitMs);
    }
  }

  #flush(): void {
    this.#armed = false;
    if (this.#timer !== undefined) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
    while (this.#pending.length > 0 && this.#inFlight < MAX_BATCHES_IN_FLIGHT) {
      const batch = this.#take();
      this.#inFlight++;
      void this.#send(batch).finally(() => {
        this.#inFlight--;
        if (this.#pending.length > 0) this.#flush();
        else if (this.#inFlight === 0) this.#idle.splice(0).forEach((resolve) => resolve());
      });
    }
  }

  /** Up to `max` waiting completions, each task once: a call has one outcome per task. */
  #take(): Waiting[] {
    const batch: Waiting[] = [];
    const rest: Waiting[] = [];
    const ids = new Set<string>();
    for (const waiting of this.#pending) {
      const id = waiting.entry.task.id;
      if (batch.length < this.options.max && !ids.has(id)) {
        ids.add(id);
        batch.push(waiting);
      } else {
        rest.push(waiting);
      }
    }
    this.#pending = rest;
    return batch;
  }

  async #send(batch: Waiting[]): Promise<void> {
    let rows: CompletionRow[];
    try {
      rows = await this.sendBatch(batch.map((w) => w.entry));
    } catch (error) {
      if (error instanceof QueueDbError && error.missingFunction) {
        this.#batchMissing = true;
        return await this.#oneByOne(batch);
      }
      if (!(error instanceof QueueDbError) || error.transient) {
        for (const waiting of batch) waiting.reject(error);
        return;
      }
      return await this.#oneByOne(batch);
    }

    const byTask = new Map((rows ?? []).map((row) => [String(row.task_id), row]));
    for (const { entry, resolve, reject } of batch) {
      const row = byTask.get(entry.task.id);
      if (row && (row.outcome === "completed" || row.outcome === "already_completed")) {
        resolve(String(row.message_id));
      } else {
        reject(refusal(entry.task, row));
      }
    }
  }

  async #oneByOne(batch: Waiting[]): Promise<void> {
    await Promise.all(
      batch.map(({ entry, resolve, reject }) => this.sendOne(entry).then(resolve, reject)),
    );
  }
}

/** The error complete_ai_task raises for one task, from its complete_ai_tasks row. */
function refusal(task: TaskRef, row: CompletionRow | undefined): QueueDbError {
  if (row?.outcome === "not_held") {
    return new QueueDbError(
      "complete_ai_task",
      "AQ001",
      `task ${task.id} is not held by attempt ${task.attempt}: it is ${row.status} at ` +
        `attempt ${row.attempt}`,
      false,
    );
  }
  if (row?.outcome === "not_found") {
    return new QueueDbError("complete_ai_task", "AQ002", `task ${task.id} not found`, false);
  }
  return new QueueDbError(
    "complete_ai_tasks",
    null,
    row ? `unknown outcome ${JSON.stringify(row.outcome)}` : `no outcome for task ${task.id}`,
    false,
  );
}

const completionJson = (entries: Completion[]) =>
  entries.map((e) => ({
    task_id: e.task.id,
    attempt: e.task.attempt,
    content: e.content,
    result: e.result,
    model: e.model,
  }));

// ---------------------------------------------------------------- postgres.js

function wrapPostgres(step: string, error: unknown): QueueDbError {
  const e = error as { code?: unknown; message?: unknown };
  const code = typeof e?.code === "string" ? e.code : null;
  const message = typeof e?.message === "string" ? e.message : String(error);
  // Only the server's errors carry a SQLSTATE. A socket error's code can look
  // like one: EPIPE is five capital letters, and read as a SQLSTATE it made a
  // write cut by a database restart final instead of retried.
  if (error instanceof postgres.PostgresError && code !== null && SQLSTATE.test(code)) {
    return new QueueDbError(step, code, message, transientSqlState(code), { cause: error });
  }
  // postgres.js and the socket layer name their own codes (CONNECTION_CLOSED,
  // ECONNREFUSED, CONNECT_TIMEOUT, EPIPE ...): the server never answered.
  return new QueueDbError(step, code, message, true, { cause: error });
}

export function createPostgresQueueDb(
  databaseUrl: string,
  poolSize: number,
  completionBatch: CompletionBatchOptions = DEFAULT_COMPLETION_BATCH,
): QueueDb {
  // Supabase's transaction pooler (port 6543) cannot keep prepared statements.
  const pooled = /:6543\//.test(databaseUrl);
  const sql = postgres(databaseUrl, {
    max: poolSize,
    prepare: !pooled,
    onnotice: () => {},
    connection: { application_name: "ai-tasks-runner" },
  });
  let snoozeMissing = false;

  async function call<T>(step: string, run: () => Promise<T>): Promise<T> {
    try {
      return await run();
    } catch (error) {
      throw wrapPostgres(step, error);
    }
  }

  const completions = new CompletionBatcher(
    (entries) =>
      call("complete_ai_tasks", async () =>
        await sql<CompletionRow[]>`
          select * from public.complete_ai_tasks(
            ${sql.json(completionJson(entries) as postgres.JSONValue)}::jsonb)`),
    ({ task, content, result, model }) =>
      call("complete_ai_task", async () => {
        const [row] = await sql`
          select public.complete_ai_task(${task.id}::uuid, ${task.attempt}::int, ${content},
                                         ${sql.json(result as postgres.JSONValue)}, ${model})
            as message_id`;
        return String(row.message_id);
      }),
    completionBatch,
  );

  const db: QueueDb = {
    kind: "postgres",

    claim: ({ workerId, projectId = null, batchSize, leaseSeconds }) =>
      call("claim_ai_task", async () => {
        const rows = await sql`
          select * from public.claim_ai_task(${workerId}, ${projectId}::uuid,
                                             ${batchSize}::int, ${leaseSeconds}::int)`;
        return rows.map(rowToTask);
      }),

    complete: (task, content, result, model) =>
      completions.complete({ task, content, result, model }),

    fail: (task, error, retryable, retryAfterSeconds = null) =>
      call("fail_ai_task", async () => {
        const [row] = await sql`
          select public.fail_ai_task(${task.id}::uuid, ${task.attempt}::int, ${error},
                                     ${retryable}, ${retryAfterSeconds}::int) as status`;
        return String(row.status);
      }),

    async snooze(task, retryAfterSeconds, reason) {
      if (!snoozeMissing) {
        try {
          return await call("snooze_ai_task", async () => {
            const [row] = await sql`
              select public.snooze_ai_task(${task.id}::uuid, ${task.attempt}::int,
                                           ${retryAfterSeconds}::int, ${reason}) as status`;
            return String(row.status);
          });
        } catch (error) {
          if (!(error instanceof QueueDbError && error.missingFunction)) throw error;
          snoozeMissing = true;
        }
      }
      return await db.fail(task, reason, true, retryAfterSeconds);
    },

    extend: (task, leaseSeconds) =>
      call("extend_ai_task_lease", async () => {
        const [row] = await sql`
          select public.extend_ai_task_lease(${task.id}::uuid, ${task.attempt}::int,
                                             ${leaseSeconds}::int) as held`;
        return row.held === true;
      }),

    release: (task) =>
      call("release_ai_task", async () => {
        const [row] = await sql`
          select public.release_ai_task(${task.id}::uuid, ${task.attempt}::int) as released`;
        return row.released === true;
      }),

    streamReply: (task, content) =>
      call("stream_ai_task_reply", async () => {
        const [row] = await sql`
          select public.stream_ai_task_reply(${task.id}::uuid, ${task.attempt}::int, ${content})
            as held`;
        return row.held === true;
      }),

    projectExists: (projectId) =>
      call("ai_project_exists", async () => {
        const [row] = await sql`select public.ai_project_exists(${projectId}::uuid) as found`;
        return row.found === true;
      }),

    listen: (onWake, onState) => Promise.resolve(listenForTasks(databaseUrl, onWake, onState)),

    close: async () => {
      await completions.settled();
      await sql.end({ timeout: 5 });
    },
  };
  return db;
}

/**
 * LISTEN ai_tasks on a connection of its own, kept for as long as the worker
 * runs. postgres.js's sql.listen subscribes again after a dropped connection
 * only if the database answers at that moment; after a restart it often does
 * not, and the subscription is silently gone. So this one retries with
 * backoff until LISTEN succeeds, whenever its connection closes.
 */
function listenForTasks(
  databaseUrl: string,
  onWake: () => void,
  onState?: (state: ListenState) => void,
): () => Promise<void> {
  let stopped = false;
  let subscribing = false;
  let subscribed = false;
  let subscribedOnce = false;
  const sql = postgres(databaseUrl, {
    max: 1,
    idle_timeout: 0,
    max_lifetime: null,
    prepare: false,
    onnotice: () => {},
    connection: { application_name: "ai-tasks-runner-listen" },
    onclose: () => {
      if (stopped) return;
      // Reported once per outage: failed reconnects close connections too.
      if (subscribed) onState?.("lost");
      subscribed = false;
      void subscribe();
    },
    // A documented postgres.js option the types leave out; sql.listen uses it too.
    ...{ onnotify: (channel: string) => channel === "ai_tasks" && onWake() },
  } as postgres.Options<Record<string, never>>);

  async function subscribe(): Promise<void> {
    if (subscribing) return;
    subscribing = true;
    for (let delay = 250; !stopped; delay = Math.min(delay * 2, 5000)) {
      try {
        await sql`listen ai_tasks`;
        subscribed = true;
        onState?.(subscribedOnce ? "relistened" : "listening");
        // NOTIFYs sent while nobody listened are lost: look for work now.
        if (subscribedOnce) onWake();
        subscribedOnce = true;
        break;
      } catch {
        await new Promise((resolve) => setTimeout(resolve, delay));
      }
    }
    subscribing = false;
  }

  void subscribe();
  return async () => {
    stopped = true;
    await sql.end({ timeout: 2 });
  };
}

// ---------------------------------------------------------------- supabase-js

interface RpcError {
  code?: string;
  message?: string;
  details?: string | null;
  hint?: string | null;
}

function wrapRpc(step: string, error: RpcError, status: number): QueueDbError {
  const code = error.code || null;
  const message = [error.message, error.details, error.hint].filter(Boolean).join(" ") ||
    `HTTP ${status}`;
  // No code and no HTTP status: the request never got an answer (fetch failed).
  // 502-504 are a gateway between us and PostgREST; 503 also a PostgREST
  // that lost its database connection (PGRST001/PGRST002).
  const transient = (code !== null && SQLSTATE.test(code) && transientSqlState(code)) ||
    code === "PGRST000" || code === "PGRST001" || code === "PGRST002" ||
    status === 0 || (status >= 502 && status <= 504) || (code === null && status >= 500);
  return new QueueDbError(step, code, message, transient);
}

export function createSupabaseQueueDb(
  supabaseUrl: string,
  serviceRoleKey: string,
  completionBatch: CompletionBatchOptions = DEFAULT_COMPLETION_BATCH,
): QueueDb {
  const client: SupabaseClient = createClient(supabaseUrl, serviceRoleKey, {
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
  });
  let snoozeMissing = false;

  async function rpc<T>(fn: string, args: Record<string, unknown>): Promise<T> {
    const { data, error, status } = await client.rpc(fn, args);
    if (error) throw wrapRpc(fn, error, status);
    return data as T;
  }

  const completions = new CompletionBatcher(
    async (entries) =>
      (await rpc<CompletionRow[] | null>("complete_ai_tasks", {
        completions: completionJson(entries),
      })) ?? [],
    async ({ task, content, result, model }) =>
      String(
        await rpc("complete_ai_task", {
          task_id: task.id,
          attempt: task.attempt,
          content,
          result,
          model,
        }),
      ),
    completionBatch,
  );

  const db: QueueDb = {
    kind: "supabase",

    claim: async ({ workerId, projectId = null, batchSize, leaseSeconds }) => {
      const rows = await rpc<Record<string, unknown>[]>("claim_ai_task", {
        worker_id: workerId,
        project_id: projectId,
        batch_size: batchSize,
        lease_seconds: leaseSeconds,
      });
      return (rows ?? []).map(rowToTask);
    },

    complete: (task, content, result, model) =>
      completions.complete({ task, content, result, model }),

    fail: async (task, error, retryable, retryAfterSeconds = null) =>
      String(
        await rpc("fail_ai_task", {
          task_id: task.id,
          attempt: task.attempt,
          error,
          retryable,
          retry_after_seconds: retryAfterSeconds,
        }),
      ),

    async snooze(task, retryAfterSeconds, reason) {
      if (!snoozeMissing) {
        try {
          return String(
            await rpc("snooze_ai_task", {
              task_id: task.id,
              attempt: task.attempt,
              retry_after_seconds: retryAfterSeconds,
              reason,
            }),
          );
        } catch (error) {
          if (!(error instanceof QueueDbError && error.missingFunction)) throw error;
          snoozeMissing = true;
        }
      }
      return await db.fail(task, reason, true, retryAfterSeconds);
    },

    extend: async (task, leaseSeconds) =>
      (await rpc("extend_ai_task_lease", {
        task_id: task.id,
        attempt: task.attempt,
        lease_seconds: leaseSeconds,
      })) === true,

    release: async (task) =>
      (await rpc("release_ai_task", { task_id: task.id, attempt: task.attempt })) === true,

    streamReply: async (task, content) =>
      (await rpc("stream_ai_task_reply", {
        task_id: task.id,
        attempt: task.attempt,
        content,
      })) === true,

    projectExists: async (projectId) =>
      (await rpc("ai_project_exists", { project_id: projectId })) === true,

    // Workers on supabase-js poll. Realtime could wake them, but it needs the
    // table in the supabase_realtime publication; a direct DATABASE_URL can LISTEN.
    listen: () => Promise.resolve(null),

    close: async () => {
      await completions.settled();
      await client.removeAllChannels();
    },
  };
  return db;
}

export function createQueueDb(config: Config): QueueDb {
  const completionBatch = {
    max: config.completeBatchMax,
    waitMs: config.completeBatchWaitMs,
  };
  if (config.dbClient === "supabase") {
    return createSupabaseQueueDb(config.supabaseUrl!, config.serviceRoleKey!, completionBatch);
  }
  return createPostgresQueueDb(config.databaseUrl, config.dbPoolSize, completionBatch);
}
