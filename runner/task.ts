// One claimed task from start to recorded outcome, shared by the worker loop
// and the HTTP handler: run its handler while keeping the lease, then
// complete, fail, snooze or release it. Whatever happens, exactly one of
// those calls is made (or none, when the task is no longer ours).

import type { Config } from "./config.ts";
import { type ClaimedTask, type QueueDb, QueueDbError, type TaskRef } from "./db.ts";
import { handlerFor, type ProjectFilesContext, TaskFailure } from "./handlers.ts";
import { errorText, type Logger } from "./log.ts";
import { type ChatModel, ModelError } from "./model.ts";

export type Outcome = "completed" | "retried" | "failed" | "released" | "cancelled" | "unrecorded";

export interface RunStats {
  claimed: number;
  completed: number;
  retried: number;
  /** Of the retried: rate-limit answers put back without spending an attempt. */
  snoozed: number;
  failed: number;
  released: number;
  /** Cancelled by their owner, or taken over by another worker, while running here. */
  cancelled: number;
  /** The outcome could not be written (database unreachable); the lease will expire. */
  unrecorded: number;
  prompt_tokens: number;
  completion_tokens: number;
}

export function newStats(): RunStats {
  return {
    claimed: 0,
    completed: 0,
    retried: 0,
    snoozed: 0,
    failed: 0,
    released: 0,
    cancelled: 0,
    unrecorded: 0,
    prompt_tokens: 0,
    completion_tokens: 0,
  };
}

export interface TaskDeps {
  db: QueueDb;
  model: ChatModel;
  config: Config;
  log: Logger;
  stats: RunStats;
  projectFilesContext?: ProjectFilesContext | null;
}

/** Why a task's work was stopped from outside: it is given back, not failed. */
export class StopRequested extends Error {
  override name = "StopRequested";
}

class LeaseLost extends Error {
  override name = "LeaseLost";
  constructor() {
    super("task is no longer held by this attempt (cancelled or taken over)");
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Sends a queue write until it lands. complete, fail, snooze and release are
 * idempotent for one attempt, so repeating one whose answer was lost is safe;
 * only connection trouble is retried, for about a minute.
 */
export async function persist<T>(run: () => Promise<T>, log: Logger, task: TaskRef): Promise<T> {
  const delays = [250, 500, 1000, 2000, 4000, 8000, 15000, 30000];
  for (let i = 0;; i++) {
    try {
      return await run();
    } catch (error) {
      if (!(error instanceof QueueDbError && error.transient) || i >= delays.length) throw error;
      log.warn("db_retry", {
        task_id: task.id,
        step: error.step,
        in_ms: delays[i],
        error: errorText(error, 200),
      });
      await sleep(delays[i]);
    }
  }
}

function leaseKeeper(task: ClaimedTask, deps: TaskDeps, onLost: () => void) {
  const { db, config, log } = deps;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let stopped = false;
  const beat = async () => {
    try {
      const held = await db.extend(task, config.leaseSeconds);
      if (!held) return onLost();
      log.debug("lease_extended", { task_id: task.id, attempt: task.attempt });
    } catch (error) {
      // The next beat tries again; the lease has two beats of slack.
      log.warn("lease_extend_failed", { task_id: task.id, error: errorText(error, 200) });
    }
    if (!stopped) timer = setTimeout(beat, config.heartbeatMs);
  };
  timer = setTimeout(beat, config.heartbeatMs);
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

/** Runs one claimed task to its recorded outcome. Never throws. */
export async function processTask(
  task: ClaimedTask,
  deps: TaskDeps,
  stop: AbortSignal,
): Promise<Outcome> {
  const { db, log, stats } = deps;
  const started = performance.now();
  const ids = { task_id: task.id, project_id: task.projectId, attempt: task.attempt };
  const elapsed = () => Math.round(performance.now() - started);
  stats.claimed++;
  log.info("claimed", {
    ...ids,
    type: task.type,
    of: task.maxAttempts,
    waited_ms: Math.max(0, Date.now() - Date.parse(task.createdAt)),
  });

  const controller = new AbortController();
  let lost = false;
  const markLost = () => {
    lost = true;
    controller.abort(new LeaseLost());
  };
  const onStop = () => controller.abort(new StopRequested(String(stop.reason ?? "stopping")));
  if (stop.aborted) onStop();
  stop.addEventListener("abort", onStop, { once: true });
  const stopKeeping = leaseKeeper(task, deps, markLost);

  const record = async (): Promise<Outcome> => {
    try {
      const handler = handlerFor(task.type);
      const reply = await handler({
        task,
        db,
        model: deps.model,
        config: deps.config,
        log,
        signal: controller.signal,
        projectFilesContext: deps.projectFilesContext,
        onLost: markLost,
      });
      stopKeeping();
      if (lost) throw new LeaseLost();
      const messageId = await persist(
        () => db.complete(task, reply.content, reply.result, reply.model),
        log,
        task,
      );
      stats.completed++;
      stats.prompt_tokens += Number(reply.result.prompt_tokens ?? 0);
      stats.completion_tokens += Number(reply.result.completion_tokens ?? 0);
      log.info("completed", {
        ...ids,
        duration_ms: elapsed(),
        model: reply.model,
        prompt_tokens: reply.result.prompt_tokens,
        completion_tokens: reply.result.completion_tokens,
        chars: reply.content.length,
        message_id: messageId,
      });
      return "completed";
    } catch (error) {
      stopKeeping();
      return await settleFailure(error);
    }
  };

  const settleFailure = async (error: unknown): Promise<Outcome> => {
    if (lost || (error instanceof QueueDbError && error.leaseLost)) {
      // Cancelled or taken over: the queue already moved on and removed any
      // partial reply; writing anything now would be refused.
      stats.cancelled++;
      // Which check noticed: the queue refusing a write (fencing, AQ001) or a
      // lease renewal or stream write that found the task gone.
      const refused = error instanceof QueueDbError && error.leaseLost
        ? { refused_by: error.step, code: error.code }
        : {};
      log.info("cancelled", {
        ...ids,
        duration_ms: elapsed(),
        reason: "no longer held by this attempt (cancelled or taken over)",
        ...refused,
      });
      return "cancelled";
    }
    if (controller.signal.reason instanceof StopRequested) {
      const released = await persist(() => db.release(task), log, task);
      stats.released++;
      log.info("released", {
        ...ids,
        duration_ms: elapsed(),
        released,
        reason: controller.signal.reason.message,
      });
      return "released";
    }

    const failure = error instanceof ModelError || error instanceof TaskFailure
      ? error
      : new TaskFailure(`runner error: ${errorText(error, 300)}`, true);
    const retryAfter = failure instanceof ModelError ? failure.retryAfterSeconds : null;
    const rateLimited = failure instanceof ModelError && failure.kind === "rate_limited";
    const status = rateLimited
      ? await persist(() => db.snooze(task, retryAfter, failure.message), log, task)
      : await persist(
        () => db.fail(task, failure.message, failure.retryable, retryAfter),
        log,
        task,
      );

    const fields = {
      ...ids,
      duration_ms: elapsed(),
      error: failure.message,
      retryable: failure.retryable,
      retry_after_s: retryAfter ?? undefined,
    };
    if (status === "queued") {
      stats.retried++;
      if (rateLimited) stats.snoozed++;
      log.warn("retried", { ...fields, snoozed: rateLimited || undefined });
      return "retried";
    }
    stats.failed++;
    log.error("failed", { ...fields, status });
    return "failed";
  };

  try {
    return await record();
  } catch (error) {
    // Only a write that kept failing gets here; the lease hands the task back.
    stats.unrecorded++;
    log.error("unrecorded", {
      ...ids,
      duration_ms: elapsed(),
      error: errorText(error, 300),
      note: "the task returns to the queue when its lease expires",
    });
    return "unrecorded";
  } finally {
    stop.removeEventListener("abort", onStop);
  }
}
