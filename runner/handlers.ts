// What each task type does with a claimed task. A handler turns a task into
// the reply to store; the caller (task.ts) records the outcome in the queue.

import type { Config } from "./config.ts";
import type { ClaimedTask, QueueDb } from "./db.ts";
import type { Logger } from "./log.ts";
import type { ChatMessage, ChatModel } from "./model.ts";

/** Where the project's files live in Storage, as the browser sends it. */
export interface ProjectFilesContext {
  bucket: string;
  path: string;
  versionId?: string;
  versionNumber?: number;
}

export interface HandlerContext {
  task: ClaimedTask;
  db: QueueDb;
  model: ChatModel;
  config: Config;
  log: Logger;
  /** Aborts the work: cancelled, lease lost, shutdown or time budget spent. */
  signal: AbortSignal;
  /** The files context of the HTTP request that claimed the task, if any. */
  projectFilesContext?: ProjectFilesContext | null;
  /** A write found the task no longer held by this attempt. */
  onLost(): void;
}

export interface HandlerResult {
  content: string;
  /** The model that answered, stored on the task. */
  model: string;
  /** Stored as the task's result and merged into the message's metadata. */
  result: Record<string, unknown>;
}

export type TaskHandler = (ctx: HandlerContext) => Promise<HandlerResult>;

/** A failure that is the task's own, not the model's: stored as its error. */
export class TaskFailure extends Error {
  override name = "TaskFailure";
  constructor(message: string, readonly retryable: boolean) {
    super(message);
  }
}

// ------------------------------------------------------------ chat_reply

function filesContextLine(context: ProjectFilesContext): string {
  const version = context.versionNumber !== undefined
    ? ` (version ${context.versionNumber}${context.versionId ? `, id ${context.versionId}` : ""})`
    : context.versionId
    ? ` (version id ${context.versionId})`
    : "";
  return `The project's current files are in storage bucket "${context.bucket}" ` +
    `at "${context.path}"${version}.`;
}

function taskFilesContext(task: ClaimedTask): ProjectFilesContext | null {
  const value = task.payload.projectFilesContext ?? task.payload.project_files_context;
  if (
    value && typeof value === "object" && typeof (value as ProjectFilesContext).bucket ===
      "string" &&
    typeof (value as ProjectFilesContext).path === "string"
  ) {
    return value as ProjectFilesContext;
  }
  return null;
}

/** The conversation sent to the model: a system message, then the history oldest first. */
export function chatMessages(
  task: ClaimedTask,
  systemPrompt: string,
  requestContext: ProjectFilesContext | null = null,
): ChatMessage[] {
  const context = taskFilesContext(task) ?? requestContext;
  const system = context ? `${systemPrompt}\n\n${filesContextLine(context)}` : systemPrompt;
  return [
    { role: "system", content: system },
    ...task.history.map((m) => ({ role: m.role, content: m.content })),
  ];
}

/**
 * Shows a reply as it grows by writing it through stream_ai_task_reply, at
 * most once per interval and one write at a time. The clock starts with the
 * call and the first piece is never written, so a reply that arrives within
 * the first interval, or in one piece however late, costs no write: the
 * only write it needs is complete_ai_task's.
 */
class ThrottledReplyWriter {
  #pieces = 0;
  #lastWrite = performance.now();
  #inFlight: Promise<void> | null = null;
  writes = 0;

  constructor(private ctx: HandlerContext, private intervalMs: number) {}

  offer(text: string): void {
    this.#pieces++;
    if (this.#pieces < 2 || this.#inFlight) return;
    if (performance.now() - this.#lastWrite < this.intervalMs) return;
    const content = text;
    this.#lastWrite = performance.now();
    this.writes++;
    this.#inFlight = this.ctx.db.streamReply(this.ctx.task, content)
      .then((held) => {
        if (!held) this.ctx.onLost();
      })
      .catch((error) => {
        // A missed partial write only delays what the user sees; the final
        // write is complete_ai_task's.
        this.ctx.log.warn("stream_write_failed", {
          task_id: this.ctx.task.id,
          error: String(error?.message ?? error).slice(0, 200),
        });
      })
      .finally(() => {
        this.#inFlight = null;
      });
  }

  /** Waits for the write in flight, so it cannot land after the final answer. */
  async settle(): Promise<void> {
    await this.#inFlight;
  }
}

export const chatReply: TaskHandler = async (ctx) => {
  const { task, config } = ctx;
  if (task.history.length === 0) {
    throw new TaskFailure(
      "chat_reply needs a chat message to answer, and the project has none",
      false,
    );
  }
  const messages = chatMessages(task, config.systemPrompt, ctx.projectFilesContext ?? null);
  const requested = task.model ?? config.defaultModel;
  const writer = new ThrottledReplyWriter(ctx, config.streamIntervalMs);

  // The prompt is the user's text: logged only when RUNNER_LOG_PROMPTS asks.
  if (config.logPrompts) {
    ctx.log.info("model_call", { task_id: task.id, model: requested, prompt: messages });
  } else {
    ctx.log.debug("model_call", { task_id: task.id, model: requested, messages: messages.length });
  }
  let reply;
  try {
    reply = await ctx.model.complete({
      model: requested,
      messages,
      signal: ctx.signal,
      timeoutMs: config.modelTimeoutMs,
      onText: (text) => writer.offer(text),
    });
  } finally {
    await writer.settle();
  }

  ctx.log.info("model_called", {
    task_id: task.id,
    project_id: task.projectId,
    attempt: task.attempt,
    model: reply.model,
    offline: reply.offline || undefined,
    latency_ms: reply.latencyMs,
    prompt_tokens: reply.promptTokens,
    completion_tokens: reply.completionTokens,
    cost: reply.cost ?? undefined,
    stream_writes: writer.writes,
  });
  const result: Record<string, unknown> = {
    model: reply.model,
    requested_model: requested,
    prompt_tokens: reply.promptTokens,
    completion_tokens: reply.completionTokens,
    cost: reply.cost,
    latency_ms: reply.latencyMs,
    finish_reason: reply.finishReason,
    stream_writes: writer.writes,
  };
  if (reply.offline) result.offline = true;
  return { content: reply.text, model: reply.model, result };
};

// ------------------------------------------------------------ dispatch

/** Task types this runner can do. The others fail at once, not retryable. */
export const handlers: Record<string, TaskHandler | undefined> = {
  chat_reply: chatReply,
};

export function handlerFor(type: string): TaskHandler {
  const handler = handlers[type];
  if (!handler) {
    const known = Object.keys(handlers).join(", ");
    throw new TaskFailure(
      `task type ${type} is not supported yet by this runner (it handles: ${known})`,
      false,
    );
  }
  return handler;
}
