// The long-lived worker: keeps up to RUNNER_CONCURRENCY tasks in flight,
// claims in batches while the queue is deep, wakes at once on NOTIFY and polls
// with backoff otherwise, and on a stop signal finishes or releases what it
// holds. `--drain` runs until nothing is due, then exits.

import type { Config } from "./config.ts";
import { type ClaimedTask, type QueueDb, QueueDbError } from "./db.ts";
import { errorText, type Logger } from "./log.ts";
import type { ProjectFilesContext } from "./handlers.ts";
import type { ChatModel } from "./model.ts";
import { newStats, processTask, type RunStats } from "./task.ts";

export interface WorkerOptions {
  db: QueueDb;
  model: ChatModel;
  config: Config;
  log: Logger;
  /** Exit once nothing is due and nothing is in flight. */
  drain?: boolean;
  /** Claim only this project's tasks. */
  projectId?: string | null;
  /** Passed to handlers: the Storage location the HTTP caller named. */
  projectFilesContext?: ProjectFilesContext | null;
  /** Subscribe to NOTIFY (default true); a short HTTP run only polls. */
  listen?: boolean;
  /** Stop at the first failed claim instead of retrying with backoff (HTTP). */
  failFast?: boolean;
}

export interface WorkerSummary extends RunStats {
  /** The most tasks this worker held at once. */
  peak_in_flight: number;
  duration_ms: number;
  tasks_per_second: number;
}

/** How long a worker with a few free slots waits for more before claiming. */
const GATHER_MS = 10;

/** A promise that any of several events can resolve early: NOTIFY, a free slot, stop. */
class Wakeup {
  #resolve: (() => void) | null = null;
  #pending = false;

  wake(): void {
    this.#pending = true;
    this.#resolve?.();
  }

  wait(ms: number): Promise<void> {
    if (this.#pending) {
      this.#pending = false;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.#resolve = null;
        this.#pending = false;
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.#resolve = done;
    });
  }
}

export class Worker {
  readonly stats: RunStats = newStats();
  readonly #inFlight = new Map<string, Promise<unknown>>();
  readonly #stop = new AbortController();
  readonly #wakeup = new Wakeup();
  #stopping = false;
  #started = performance.now();
  #loop: Promise<void> | null = null;
  #graceMs: number;
  #peak = 0;
  /** The claim error that ended a failFast run. */
  claimError: unknown = null;

  constructor(private options: WorkerOptions) {
    this.#graceMs = options.config.shutdownGraceMs;
  }

  get inFlight(): number {
    return this.#inFlight.size;
  }

  /** Starts the loop; resolves when it ends (drained, or stopped and settled). */
  run(): Promise<void> {
    this.#started = performance.now();
    this.#loop ??= this.#run();
    return this.#loop;
  }

  async #run(): Promise<void> {
    const { db, config, log, drain = false } = this.options;
    const unlisten = this.options.listen === false ? null : await this.#listen();
    // Below this many free slots the worker waits a moment for more to free
    // up rather than send a claim for one or two tasks, while tasks are
    // plentiful; after GATHER_MS it claims whatever is free. (Waiting for the
    // low-water mark alone left slots idle for a whole model call whenever
    // tasks finished together: 100 in flight ran at 72% of the ideal rate.)
    const lowWater = Math.max(1, Math.floor(Math.min(config.batchSize, config.concurrency) / 2));
    let idleMs = config.pollMs;
    let lastClaimFull = false;
    let gatherUntil: number | null = null;
    let dbDown = false;

    while (!this.#stopping) {
      const free = config.concurrency - this.#inFlight.size;
      if (free <= 0) {
        await this.#wakeup.wait(config.pollMaxMs);
        continue;
      }
      if (lastClaimFull && free < lowWater && this.#inFlight.size > 0) {
        gatherUntil ??= performance.now() + GATHER_MS;
        const left = gatherUntil - performance.now();
        if (left > 0) {
          await this.#wakeup.wait(left);
          continue;
        }
      }
      gatherUntil = null;

      let tasks: ClaimedTask[];
      const want = Math.min(config.batchSize, free);
      try {
        tasks = await db.claim({
          workerId: config.workerId,
          projectId: this.options.projectId,
          batchSize: want,
          leaseSeconds: config.leaseSeconds,
        });
        if (dbDown) {
          dbDown = false;
          log.info("db_reconnected", {});
        }
      } catch (error) {
        if (this.options.failFast) {
          this.claimError = error;
          break;
        }
        if (error instanceof QueueDbError && !error.transient) {
          // Not an outage (a permission or a missing function, say): repeat
          // it at every try, slowed by the backoff, so it cannot be missed.
          log.error("claim_failed", { error: errorText(error, 300), code: error.code });
        } else {
          if (!dbDown) log.error("db_unavailable", { error: errorText(error, 300) });
          dbDown = true;
        }
        idleMs = Math.min(config.pollMaxMs, idleMs * 2);
        await this.#wakeup.wait(idleMs);
        continue;
      }

      for (const task of tasks) this.#start(task);
      lastClaimFull = tasks.length === want;
      if (lastClaimFull) {
        idleMs = config.pollMs;
        continue;
      }
      if (tasks.length > 0) idleMs = config.pollMs;
      if (drain && tasks.length === 0 && this.#inFlight.size === 0) break;
      // Drain mode with tasks in flight: their outcome may queue a retry, so
      // look again as soon as one ends.
      await this.#wakeup.wait(idleMs);
      if (tasks.length === 0) idleMs = Math.min(config.pollMaxMs, idleMs * 2);
    }

    await this.#settle();
    await unlisten?.();
  }

  async #listen(): Promise<(() => Promise<void>) | null> {
    const { db, log } = this.options;
    try {
      const unlisten = await db.listen(() => this.#wakeup.wake(), (state) => {
        if (state === "relistened") log.info("listen_restored", { channel: "ai_tasks" });
        if (state === "lost") log.warn("listen_lost", { channel: "ai_tasks", action: "retrying" });
        if (state === "listening") log.debug("listening", { channel: "ai_tasks" });
      });
      if (unlisten === null) log.info("polling", { reason: `${db.kind} client cannot LISTEN` });
      return unlisten;
    } catch (error) {
      log.warn("listen_failed", { error: errorText(error, 300), fallback: "polling" });
      return null;
    }
  }

  #start(task: ClaimedTask): void {
    const { db, model, config, log } = this.options;
    const key = `${task.id}:${task.attempt}`;
    const deps = {
      db,
      model,
      config,
      log,
      stats: this.stats,
      projectFilesContext: this.options.projectFilesContext,
    };
    const done = processTask(task, deps, this.#stop.signal).finally(() => {
      this.#inFlight.delete(key);
      this.#wakeup.wake();
    });
    this.#inFlight.set(key, done);
    this.#peak = Math.max(this.#peak, this.#inFlight.size);
  }

  /** After the loop: let what runs finish within the grace period, then release it. */
  async #settle(): Promise<void> {
    if (this.#inFlight.size === 0) return;
    const { log } = this.options;
    if (this.#stopping) {
      log.info("stopping", { in_flight: this.#inFlight.size, grace_ms: this.#graceMs });
    }
    const all = () => Promise.allSettled([...this.#inFlight.values()]);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const graceOver = new Promise<"timeout">((resolve) => {
      if (this.#stopping) timer = setTimeout(() => resolve("timeout"), this.#graceMs);
    });
    const first = await Promise.race([all(), graceOver]);
    clearTimeout(timer);
    if (first === "timeout") {
      // Each task's handler sees the abort and gives its task back.
      this.#stop.abort("shutdown: grace period over");
      await all();
    }
  }

  /**
   * Stops claiming, lets tasks in flight finish within `graceMs` (the config's
   * grace period by default), releases the rest, and resolves when all are settled.
   */
  async shutdown(graceMs?: number): Promise<void> {
    if (graceMs !== undefined) this.#graceMs = graceMs;
    this.#stopping = true;
    this.#wakeup.wake();
    if (this.#loop) await this.#loop;
    else await this.#settle();
  }

  /** Gives every held task back at once, without waiting for any grace period. */
  abortNow(): void {
    this.#stopping = true;
    this.#stop.abort("shutdown: stopped at once");
    this.#wakeup.wake();
  }

  summary(): WorkerSummary {
    const duration = performance.now() - this.#started;
    const done = this.stats.completed + this.stats.failed + this.stats.retried;
    return {
      ...this.stats,
      peak_in_flight: this.#peak,
      duration_ms: Math.round(duration),
      tasks_per_second: duration > 0 ? Math.round(done / duration * 1000 * 10) / 10 : 0,
    };
  }
}

/** The summary as one sentence for the terminal. */
export function summaryLine(s: WorkerSummary): string {
  const parts = [
    `${s.claimed} claimed`,
    `${s.completed} completed`,
    `${s.retried} retried`,
    `${s.failed} failed`,
  ];
  if (s.released) parts.push(`${s.released} released`);
  if (s.cancelled) parts.push(`${s.cancelled} cancelled`);
  if (s.unrecorded) parts.push(`${s.unrecorded} unrecorded`);
  return `worker done: ${parts.join(", ")} in ${(s.duration_ms / 1000).toFixed(1)} s ` +
    `(${s.tasks_per_second} tasks/s, ${s.prompt_tokens}+${s.completion_tokens} tokens)`;
}
