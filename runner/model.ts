// The model: OpenRouter through the openai SDK, streamed, or a built-in
// offline model when no key is configured. Every call ends within its timeout
// or when its signal aborts, and every failure becomes a ModelError that says
// whether trying again can help and how long the provider asked us to wait.

import OpenAI from "openai";
import type { Config } from "./config.ts";

export interface ChatMessage {
  role: "system" | "user" | "assistant";
  content: string;
}

export interface ModelRequest {
  model: string;
  messages: ChatMessage[];
  /** Aborts the call: the task was cancelled, lost its lease, or the runner stops. */
  signal: AbortSignal;
  timeoutMs: number;
  /** Called with the whole text so far each time a piece arrives. */
  onText?: (textSoFar: string) => void;
}

export interface ModelReply {
  text: string;
  /** The model that actually answered (a router may pick another than asked). */
  model: string;
  promptTokens: number | null;
  completionTokens: number | null;
  /** USD, when the provider reports it (OpenRouter does in `usage.cost`). */
  cost: number | null;
  finishReason: string | null;
  latencyMs: number;
  chunks: number;
  offline: boolean;
}

export interface ChatModel {
  /** "openrouter" or "offline", for logs. */
  readonly name: string;
  complete(request: ModelRequest): Promise<ModelReply>;
}

export type ModelErrorKind =
  | "rate_limited"
  | "timeout"
  | "server"
  | "network"
  | "malformed"
  | "empty"
  | "out_of_credits"
  | "unauthorized"
  | "forbidden"
  | "bad_request"
  | "not_found"
  | "rejected"
  | "aborted";

export class ModelError extends Error {
  override name = "ModelError";
  constructor(
    readonly kind: ModelErrorKind,
    message: string,
    readonly retryable: boolean,
    readonly status: number | null = null,
    /** Seconds the provider asked us to wait (Retry-After), when it said. */
    readonly retryAfterSeconds: number | null = null,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

// ------------------------------------------------------------ classification

const MAX_RETRY_AFTER_SECONDS = 86_400; // the most fail_ai_task accepts

/** Retry-After in seconds (delta or HTTP date), or OpenRouter's retry-after-ms. */
export function parseRetryAfter(headers: Headers | undefined | null): number | null {
  if (!headers) return null;
  const ms = headers.get("retry-after-ms");
  if (ms && /^\d+(\.\d+)?$/.test(ms.trim())) {
    return Math.min(MAX_RETRY_AFTER_SECONDS, Math.ceil(Number(ms) / 1000));
  }
  const raw = headers.get("retry-after")?.trim();
  if (!raw) return null;
  if (/^\d+(\.\d+)?$/.test(raw)) return Math.min(MAX_RETRY_AFTER_SECONDS, Math.ceil(Number(raw)));
  const date = Date.parse(raw);
  if (Number.isNaN(date)) return null;
  return Math.min(MAX_RETRY_AFTER_SECONDS, Math.max(0, Math.ceil((date - Date.now()) / 1000)));
}

function clip(text: string, max = 300): string {
  const flat = text.replace(/\s+/g, " ").trim();
  return flat.length > max ? `${flat.slice(0, max)}...` : flat;
}

/** What an HTTP status (or the same code inside a stream) means for the task. */
export function classifyStatus(
  status: number,
  detail: string,
  retryAfterSeconds: number | null = null,
  options?: ErrorOptions,
): ModelError {
  const said = detail ? `: ${clip(detail)}` : "";
  const make = (kind: ModelErrorKind, text: string, retryable: boolean) =>
    new ModelError(
      kind,
      `${text} (HTTP ${status})${said}`,
      retryable,
      status,
      retryable ? retryAfterSeconds : null,
      options,
    );
  if (status === 429) return make("rate_limited", "model provider rate limit", true);
  if (status === 408) return make("timeout", "model provider timed out", true);
  if (status >= 500) return make("server", "model provider server error", true);
  if (status === 402) {
    return make(
      "out_of_credits",
      "model provider account is out of credits; add credits, then retry the task",
      false,
    );
  }
  if (status === 401) {
    return make("unauthorized", "model provider rejected the API key (OPENROUTER_KEY)", false);
  }
  if (status === 403) return make("forbidden", "model provider refused the request", false);
  if (status === 404) return make("not_found", "model or endpoint not found", false);
  if (status === 400) return make("bad_request", "model provider rejected the request", false);
  return make("rejected", "model provider rejected the request", false);
}

function errorDetail(error: unknown): string {
  const body = (error as { error?: unknown })?.error;
  if (
    body && typeof body === "object" && typeof (body as { message?: unknown }).message === "string"
  ) {
    return (body as { message: string }).message;
  }
  return error instanceof Error ? error.message : String(error);
}

/** Turns whatever the SDK or fetch threw into a ModelError. */
export function classifyError(error: unknown, timedOut: boolean, signal: AbortSignal): ModelError {
  if (error instanceof ModelError) return error;
  const cause = { cause: error };

  // Our own deadline or abort comes first: the SDK reports both as an abort.
  if (signal.aborted) {
    return new ModelError(
      "aborted",
      `model call aborted: ${String(signal.reason ?? "aborted")}`,
      false,
      null,
      null,
      cause,
    );
  }
  if (timedOut || error instanceof OpenAI.APIConnectionTimeoutError) {
    return new ModelError("timeout", "model call timed out", true, null, null, cause);
  }

  if (error instanceof OpenAI.APIError && typeof error.status === "number") {
    return classifyStatus(error.status, errorDetail(error), parseRetryAfter(error.headers), cause);
  }
  if (error instanceof OpenAI.APIConnectionError) {
    return new ModelError(
      "network",
      `cannot reach the model provider: ${clip(errorDetail(error))}`,
      true,
      null,
      null,
      cause,
    );
  }
  if (error instanceof OpenAI.APIError) {
    // An error event inside a stream has no HTTP status; OpenRouter puts the
    // status it stands for in error.code, so it is handled like its HTTP twin.
    const code = (error.error as { code?: unknown } | undefined)?.code ?? error.code;
    const status = typeof code === "number" ? code : Number.parseInt(String(code), 10);
    if (Number.isInteger(status) && status >= 400 && status < 600) {
      return classifyStatus(status, `in stream: ${errorDetail(error)}`, null, cause);
    }
    return new ModelError(
      "server",
      `model provider error in stream: ${clip(errorDetail(error))}`,
      true,
      null,
      null,
      cause,
    );
  }
  if (error instanceof SyntaxError) {
    return new ModelError(
      "malformed",
      `model provider sent malformed data: ${clip(error.message)}`,
      true,
      null,
      null,
      cause,
    );
  }
  if (error instanceof TypeError) {
    // fetch reports refused connections and resets as a TypeError.
    return new ModelError(
      "network",
      `cannot reach the model provider: ${clip(error.message)}`,
      true,
      null,
      null,
      cause,
    );
  }
  return new ModelError(
    "server",
    `model call failed: ${clip(errorDetail(error))}`,
    true,
    null,
    null,
    cause,
  );
}

// ------------------------------------------------------------ OpenRouter

interface StreamUsage {
  prompt_tokens?: number;
  completion_tokens?: number;
  cost?: number;
}

export function createOpenRouterModel(config: Config): ChatModel {
  const headers: Record<string, string> = {};
  if (config.appUrl) headers["HTTP-Referer"] = config.appUrl;
  if (config.appTitle) headers["X-Title"] = config.appTitle;
  const client = new OpenAI({
    apiKey: config.openrouterKey!,
    baseURL: config.openrouterBaseUrl,
    defaultHeaders: headers,
    // The queue retries, with backoff that survives a restart; SDK retries
    // would only hide the attempts from it.
    maxRetries: 0,
    timeout: config.modelTimeoutMs,
    // The SDK would print bad stream chunks to stderr; the task's error says it.
    logLevel: "off",
  });

  return {
    name: "openrouter",
    async complete({ model, messages, signal, timeoutMs, onText }) {
      const started = performance.now();
      // One controller for the whole call, headers and body: the SDK's own
      // timeout stops at the headers, and a stream can stall after them.
      const controller = new AbortController();
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        controller.abort(new Error(`timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      const onAbort = () => controller.abort(signal.reason);
      signal.addEventListener("abort", onAbort, { once: true });
      if (signal.aborted) onAbort();

      let text = "";
      let chunks = 0;
      let answeredBy = model;
      let finishReason: string | null = null;
      let usage: StreamUsage | null = null;
      try {
        const stream = await client.chat.completions.create({
          model,
          messages,
          stream: true,
          stream_options: { include_usage: true },
        }, { signal: controller.signal, timeout: timeoutMs });
        for await (const chunk of stream) {
          chunks++;
          if (chunk.model) answeredBy = chunk.model;
          if (chunk.usage) usage = chunk.usage as StreamUsage;
          const choice = chunk.choices?.[0];
          if (choice?.finish_reason) finishReason = choice.finish_reason;
          const piece = choice?.delta?.content;
          if (piece) {
            text += piece;
            onText?.(text);
          }
        }
        // The SDK ends a stream quietly when its transport is aborted.
        if (controller.signal.aborted) throw controller.signal.reason;
      } catch (error) {
        throw classifyError(error, timedOut, signal);
      } finally {
        clearTimeout(timer);
        signal.removeEventListener("abort", onAbort);
      }

      if (text.trim() === "") {
        throw new ModelError(
          "empty",
          `model returned an empty reply (finish_reason ${finishReason ?? "none"})`,
          true,
        );
      }
      return {
        text,
        model: answeredBy,
        promptTokens: usage?.prompt_tokens ?? null,
        completionTokens: usage?.completion_tokens ?? null,
        cost: typeof usage?.cost === "number" ? usage.cost : null,
        finishReason,
        latencyMs: Math.round(performance.now() - started),
        chunks,
        offline: false,
      };
    },
  };
}

// ------------------------------------------------------------ offline

export const OFFLINE_MODEL = "offline/echo";

function countWords(text: string): number {
  return text.split(/\s+/).filter(Boolean).length;
}

/**
 * Answers without any network: a fixed, clearly labelled echo of the latest
 * user message, so the queue runs end to end on a machine with no key.
 */
export function createOfflineModel(delayMs = 0): ChatModel {
  return {
    name: "offline",
    async complete({ messages, signal }) {
      const started = performance.now();
      if (delayMs > 0) {
        await new Promise<void>((resolve, reject) => {
          const timer = setTimeout(resolve, delayMs);
          signal.addEventListener("abort", () => {
            clearTimeout(timer);
            reject(signal.reason);
          }, { once: true });
        }).catch(() => {});
      }
      if (signal.aborted) {
        throw new ModelError("aborted", `model call aborted: ${String(signal.reason)}`, false);
      }
      const lastUser = [...messages].reverse().find((m) => m.role === "user");
      const quoted = lastUser ? clip(lastUser.content, 200) : "(no user message)";
      // One piece, so there is nothing to stream: onText is not called.
      const text = `[offline model: no OPENROUTER_KEY is set, so this is not an AI answer] ` +
        `You said: "${quoted}". The conversation so far has ${messages.length} message(s).`;
      return {
        text,
        model: OFFLINE_MODEL,
        promptTokens: messages.reduce((n, m) => n + countWords(m.content), 0),
        completionTokens: countWords(text),
        cost: 0,
        finishReason: "stop",
        latencyMs: Math.round(performance.now() - started),
        chunks: 1,
        offline: true,
      };
    },
  };
}

export function createModel(config: Config): ChatModel {
  return config.openrouterKey
    ? createOpenRouterModel(config)
    : createOfflineModel(config.offlineDelayMs);
}
