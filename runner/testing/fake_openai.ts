// A fake OpenAI-compatible chat completions server for tests, chaos runs and
// benchmarks. It speaks the wire format the `openai` SDK parses (JSON replies,
// SSE streams, error bodies shaped like OpenAI's and OpenRouter's) and serves
// scripted scenarios: replies, HTTP errors, hangs, malformed bodies and
// errors in the middle of a stream.
//
// As a library: `const fake = await startFakeOpenAI(); fake.push(...)`.
// As a process (load tests):
//   deno run --allow-net runner/testing/fake_openai.ts --port 0 \
//     --fault-rate 0.2 --latency-ms 1000 --seed 42
// prints {"url": ...} on stdout, serves until SIGTERM/SIGINT, then prints the
// counts of what it served per kind on stderr as one JSON line.

import { serveOnLoopback } from "./serve.ts";

export type Usage = {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens?: number;
  cost?: number;
};

export type Scenario =
  | {
    kind: "reply";
    content?: string;
    delayMs?: number;
    chunkDelayMs?: number;
    usage?: Usage;
    model?: string;
  }
  | { kind: "status"; status: number; retryAfter?: string; message?: string; code?: string }
  | { kind: "hang"; ms: number }
  | { kind: "malformed" }
  | { kind: "stream_error"; afterChunks: number; status?: number; message?: string };

export interface RecordedRequest {
  // deno-lint-ignore no-explicit-any
  body: any;
  headers: Record<string, string>;
  at: number;
}

export type ScenarioSource = Scenario | ((req: RecordedRequest, n: number) => Scenario);

export interface FakeOpenAI {
  /** Base URL for the SDK's `baseURL`, ending in /v1. */
  url: string;
  /** Every chat completion request, in arrival order, Authorization redacted. */
  requests: RecordedRequest[];
  /** One-shot scenarios, served in order before the default. */
  push(...s: Scenario[]): void;
  setDefault(s: ScenarioSource): void;
  close(): Promise<void>;
}

export interface FakeOpenAIOptions {
  port?: number;
  defaultScenario?: ScenarioSource;
  /** Keep request bodies in `requests` (default true; the CLI turns it off). */
  record?: boolean;
  /** Called with each scenario as it is chosen (the CLI counts them). */
  onServe?: (s: Scenario, req: RecordedRequest) => void;
}

const DEFAULT_MODEL = "openai/gpt-4o-mini";
const REDACTED = "[redacted]";
const encoder = new TextEncoder();

// The text of the last user message; content may be a string or an array of
// parts ({type: "text", text}).
// deno-lint-ignore no-explicit-any
function lastUserText(body: any): string {
  const messages = Array.isArray(body?.messages) ? body.messages : [];
  for (let i = messages.length - 1; i >= 0; i--) {
    if (messages[i]?.role !== "user") continue;
    const c = messages[i].content;
    if (typeof c === "string") return c;
    if (Array.isArray(c)) {
      return c.map((p) => (typeof p?.text === "string" ? p.text : "")).join("");
    }
    return "";
  }
  return "";
}

// A deterministic stand-in for tokenization: one token per word.
function countWords(text: string): number {
  const trimmed = text.trim();
  return trimmed === "" ? 0 : trimmed.split(/\s+/).length;
}

// deno-lint-ignore no-explicit-any
function promptTokens(body: any): number {
  const messages = Array.isArray(body?.messages) ? body.messages : [];
  let n = 0;
  for (const m of messages) {
    n += 4 + countWords(typeof m?.content === "string" ? m.content : JSON.stringify(m?.content));
  }
  return n;
}

// gpt-4o-mini's list price, $0.15 in / $0.60 out per million tokens, as the
// `cost` OpenRouter adds to usage.
function usageFor(promptTok: number, content: string): Usage {
  const completion = countWords(content);
  return {
    prompt_tokens: promptTok,
    completion_tokens: completion,
    total_tokens: promptTok + completion,
    cost: (promptTok * 0.15 + completion * 0.6) / 1e6,
  };
}

/** The default scenario: a reply echoing the last user message. */
export function echoReply(req: RecordedRequest): Scenario {
  return { kind: "reply", content: `echo: ${lastUserText(req.body)}` };
}

// Sleeps that end early when the request or the whole server is aborted.
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  if (ms <= 0 || signal.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}

const STATUS_DEFAULTS: Record<number, { type: string; code: string; message: string }> = {
  400: { type: "invalid_request_error", code: "bad_request", message: "Bad request" },
  401: { type: "authentication_error", code: "invalid_api_key", message: "Invalid API key" },
  402: {
    type: "insufficient_quota",
    code: "insufficient_credits",
    message: "Insufficient credits: add more to your account",
  },
  403: { type: "permission_error", code: "forbidden", message: "Request was moderated" },
  408: { type: "timeout_error", code: "request_timeout", message: "Request timed out upstream" },
  429: { type: "rate_limit_error", code: "rate_limit_exceeded", message: "Rate limit exceeded" },
  500: { type: "server_error", code: "internal_error", message: "Internal server error" },
  502: { type: "server_error", code: "bad_gateway", message: "Provider returned error" },
  503: { type: "server_error", code: "service_unavailable", message: "No provider available" },
};

function errorResponse(
  status: number,
  opts: { message?: string; code?: string; retryAfter?: string } = {},
): Response {
  const d = STATUS_DEFAULTS[status] ??
    { type: "api_error", code: String(status), message: `Error ${status}` };
  const body = JSON.stringify({
    error: {
      message: opts.message ?? d.message,
      type: d.type,
      code: opts.code ?? d.code,
      param: null,
      metadata: {},
    },
  });
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (opts.retryAfter !== undefined) headers["retry-after"] = opts.retryAfter;
  return new Response(body, { status, headers });
}

let idCounter = 0;
function completionId(): string {
  idCounter += 1;
  return `chatcmpl-fake-${idCounter.toString(36)}`;
}

// Splits content into stream pieces of one word each (with its trailing
// space), so a reply of n words arrives as n content chunks.
function pieces(content: string): string[] {
  const out = content.match(/\S+\s*|\s+/g) ?? [];
  return out.length > 0 ? out : [""];
}

interface StreamPlan {
  id: string;
  model: string;
  created: number;
  contentPieces: string[];
  chunkDelayMs: number;
  // After how many content pieces to send the error event; null for none.
  errorAfter: number | null;
  error?: { code: number; message: string };
  usage: Usage | null;
  malformed?: boolean;
}

function chunk(plan: StreamPlan, delta: Record<string, unknown>, finish: string | null) {
  return {
    id: plan.id,
    object: "chat.completion.chunk",
    created: plan.created,
    model: plan.model,
    choices: [{ index: 0, delta, finish_reason: finish, logprobs: null }],
  };
}

function sse(data: unknown): string {
  return `data: ${typeof data === "string" ? data : JSON.stringify(data)}\n\n`;
}

// The SSE events of one streamed reply, in order. Content chunks differ only
// in their text, so they are spliced into one serialized template instead of
// serializing an object per word: this is most of the fake's CPU per stream.
function streamEvents(plan: StreamPlan): string[] {
  const events = [sse(chunk(plan, { role: "assistant", content: "" }, null))];
  if (plan.malformed) {
    events.push(`data: {"id": "${plan.id}", "choices": [\n\n`);
    return events;
  }
  const [head, tail] = sse(chunk(plan, { content: "\u0000" }, null)).split('"\\u0000"');
  const stop = Math.min(plan.errorAfter ?? Infinity, plan.contentPieces.length);
  for (let i = 0; i < stop; i++) {
    events.push(head + JSON.stringify(plan.contentPieces[i]) + tail);
  }
  if (plan.errorAfter !== null) {
    // OpenRouter reports a failure after the first byte as one more chunk
    // carrying a top-level error and finish_reason "error", then ends.
    events.push(sse({ ...chunk(plan, { content: "" }, "error"), error: plan.error }));
    events.push(sse("[DONE]"));
    return events;
  }
  events.push(sse(chunk(plan, {}, "stop")));
  if (plan.usage) {
    events.push(sse({
      id: plan.id,
      object: "chat.completion.chunk",
      created: plan.created,
      model: plan.model,
      choices: [],
      usage: plan.usage,
    }));
  }
  events.push(sse("[DONE]"));
  return events;
}

function streamResponse(plan: StreamPlan, signal: AbortSignal): Response {
  const events = streamEvents(plan);
  const headers = {
    "content-type": "text/event-stream",
    "cache-control": "no-cache",
  };

  // Without a chunk delay the whole stream is one write: the cheapest path
  // for load tests with many concurrent streams.
  if (plan.chunkDelayMs <= 0) return new Response(events.join(""), { headers });

  let i = 0;
  let cancelled = false;
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (i > 0) await sleep(plan.chunkDelayMs, signal);
      if (cancelled) return;
      if (signal.aborted || i >= events.length) {
        controller.close();
        return;
      }
      controller.enqueue(encoder.encode(events[i++]));
    },
    // The client went away: stop scheduling chunks.
    cancel() {
      cancelled = true;
    },
  });
  return new Response(body, { headers });
}

function jsonResponse(data: unknown, status = 200): Response {
  return new Response(JSON.stringify(data), {
    status,
    headers: { "content-type": "application/json" },
  });
}

// deno-lint-ignore no-explicit-any
function wantsUsage(body: any): boolean {
  return body?.stream_options?.include_usage === true;
}

async function serveScenario(
  s: Scenario,
  req: RecordedRequest,
  signal: AbortSignal,
): Promise<Response> {
  const streaming = req.body?.stream === true;
  const model = (s.kind === "reply" && s.model) ||
    (typeof req.body?.model === "string" ? req.body.model : DEFAULT_MODEL);
  const created = Math.floor(req.at / 1000);

  switch (s.kind) {
    case "reply": {
      await sleep(s.delayMs ?? 0, signal);
      const content = s.content ?? `echo: ${lastUserText(req.body)}`;
      const usage = { ...(s.usage ?? usageFor(promptTokens(req.body), content)) };
      usage.total_tokens ??= usage.prompt_tokens + usage.completion_tokens;
      if (streaming) {
        return streamResponse({
          id: completionId(),
          model,
          created,
          contentPieces: pieces(content),
          chunkDelayMs: s.chunkDelayMs ?? 0,
          errorAfter: null,
          usage: wantsUsage(req.body) ? usage : null,
        }, signal);
      }
      return jsonResponse({
        id: completionId(),
        object: "chat.completion",
        created,
        model,
        choices: [{
          index: 0,
          message: { role: "assistant", content, refusal: null },
          finish_reason: "stop",
          logprobs: null,
        }],
        usage,
      });
    }

    case "status":
      return errorResponse(s.status, s);

    case "hang":
      // The client should give up first; if it does not, it gets a 504.
      await sleep(s.ms, signal);
      return errorResponse(504, { message: `fake model hung for ${s.ms} ms` });

    case "malformed":
      if (streaming) {
        return streamResponse({
          id: completionId(),
          model,
          created,
          contentPieces: [],
          chunkDelayMs: 0,
          errorAfter: null,
          usage: null,
          malformed: true,
        }, signal);
      }
      return new Response(`{"id": "chatcmpl-broken", "choices": [{"message": `, {
        status: 200,
        headers: { "content-type": "application/json" },
      });

    case "stream_error": {
      const status = s.status ?? 502;
      const message = s.message ?? "Provider disconnected mid-stream";
      // A request that did not ask for a stream has no stream to break, so it
      // gets the error as an HTTP status instead.
      if (!streaming) return errorResponse(status, { message });
      const content = `echo: ${lastUserText(req.body)} and more words to cut short`;
      return streamResponse({
        id: completionId(),
        model,
        created,
        contentPieces: pieces(content),
        chunkDelayMs: 0,
        errorAfter: Math.max(0, s.afterChunks),
        error: { code: status, message },
        usage: null,
      }, signal);
    }
  }
}

function recordHeaders(h: Headers): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of h) {
    // The API key never leaves the request: not into tests' records, not into logs.
    out[k] = k === "authorization" || k === "api-key" ? REDACTED : v;
  }
  return out;
}

export async function startFakeOpenAI(opts: FakeOpenAIOptions = {}): Promise<FakeOpenAI> {
  const requests: RecordedRequest[] = [];
  const queue: Scenario[] = [];
  let fallback: ScenarioSource = opts.defaultScenario ?? echoReply;
  let served = 0;
  const record = opts.record ?? true;
  const shutdown = new AbortController();

  const handler = async (request: Request): Promise<Response> => {
    const url = new URL(request.url);

    if (request.method === "GET" && url.pathname === "/v1/models") {
      return jsonResponse({
        object: "list",
        data: [{ id: DEFAULT_MODEL, object: "model", created: 0, owned_by: "fake" }],
      });
    }
    if (url.pathname !== "/v1/chat/completions") {
      return errorResponse(404, { message: `no route ${request.method} ${url.pathname}` });
    }
    if (request.method !== "POST") {
      return errorResponse(405, { message: "chat completions take POST" });
    }

    let body: unknown;
    try {
      body = await request.json();
    } catch {
      return errorResponse(400, { message: "request body is not valid JSON" });
    }
    const rec: RecordedRequest = { body, headers: recordHeaders(request.headers), at: Date.now() };
    const n = served++;
    if (record) requests.push(rec);

    const next = queue.shift() ?? (typeof fallback === "function" ? fallback(rec, n) : fallback);
    opts.onServe?.(next, rec);
    // Only the server's own shutdown cuts waits short: Deno's request.signal
    // also fires after every normal response, which would end streams early.
    return await serveScenario(next, rec, shutdown.signal);
  };

  const { server, port } = await serveOnLoopback(handler, opts.port);

  return {
    url: `http://127.0.0.1:${port}/v1`,
    requests,
    push: (...s) => void queue.push(...s),
    setDefault: (s) => void (fallback = s),
    close: async () => {
      // Hangs and slow streams end at once instead of holding shutdown open.
      shutdown.abort();
      await server.shutdown();
    },
  };
}

// ---------------------------------------------------------------------------
// CLI: a seeded fault mix at a fixed latency, for load and chaos tests.

// mulberry32: a tiny seeded PRNG, so a run's fault sequence can be replayed.
function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface FaultMixOptions {
  faultRate: number;
  latencyMs: number;
  seed: number;
  hangMs?: number;
  chunkDelayMs?: number;
}

/** The kinds the fault mix serves, as named in the CLI's exit counts. */
export const FAULT_KINDS = [
  "rate_limited_429",
  "server_error_500",
  "bad_gateway_502",
  "hang",
  "stream_error",
  "payment_required_402",
] as const;

/** A scenario source serving faults at `faultRate`, picked with a seeded PRNG. */
export function faultMix(o: FaultMixOptions): (req: RecordedRequest, n: number) => Scenario {
  const random = seededRandom(o.seed);
  const hangMs = o.hangMs ?? 120_000;
  return (req) => {
    // Both draws happen for every request so the sequence depends only on
    // the seed and the request order.
    const isFault = random() < o.faultRate;
    const which = Math.floor(random() * FAULT_KINDS.length);
    if (!isFault) {
      return { kind: "reply", delayMs: o.latencyMs, chunkDelayMs: o.chunkDelayMs ?? 0 };
    }
    switch (FAULT_KINDS[which]) {
      case "rate_limited_429":
        return { kind: "status", status: 429, retryAfter: "1" };
      case "server_error_500":
        return { kind: "status", status: 500 };
      case "bad_gateway_502":
        return { kind: "status", status: 502 };
      case "hang":
        return { kind: "hang", ms: hangMs };
      case "stream_error":
        return req.body?.stream === true
          ? { kind: "stream_error", afterChunks: 2 }
          : { kind: "status", status: 502, message: "Provider disconnected mid-stream" };
      default:
        return { kind: "status", status: 402 };
    }
  };
}

/** The name a served scenario is counted under. */
export function kindName(s: Scenario): string {
  switch (s.kind) {
    case "status":
      return ({
        429: "rate_limited_429",
        500: "server_error_500",
        502: "bad_gateway_502",
        402: "payment_required_402",
      } as Record<number, string>)[s.status] ?? `status_${s.status}`;
    default:
      return s.kind;
  }
}

function parseArgs(args: string[]): FaultMixOptions & { port: number } {
  const o = { port: 0, faultRate: 0, latencyMs: 0, seed: 1, hangMs: 120_000, chunkDelayMs: 0 };
  const names: Record<string, keyof typeof o> = {
    "--port": "port",
    "--fault-rate": "faultRate",
    "--latency-ms": "latencyMs",
    "--seed": "seed",
    "--hang-ms": "hangMs",
    "--chunk-delay-ms": "chunkDelayMs",
  };
  for (let i = 0; i < args.length; i++) {
    let [flag, value] = args[i].split("=", 2);
    const key = names[flag];
    if (!key) {
      throw new RangeError(`unknown option ${flag}; known: ${Object.keys(names).join(", ")}`);
    }
    if (value === undefined) value = args[++i];
    const num = Number(value);
    if (value === undefined || !Number.isFinite(num) || num < 0) {
      throw new RangeError(`${flag} must be a number >= 0, got ${value}`);
    }
    o[key] = num;
  }
  if (o.faultRate > 1) {
    throw new RangeError(`--fault-rate must be between 0 and 1, got ${o.faultRate}`);
  }
  return o;
}

export interface CliIo {
  /** One line for stdout (the URL). */
  out(line: string): void;
  /** One line for stderr (the exit counts, or a usage error). */
  err(line: string): void;
  /** Resolves when the server should stop (SIGTERM/SIGINT in a process). */
  stop: Promise<unknown>;
}

/**
 * The CLI without the process around it: parses args, serves the fault mix
 * until `io.stop` resolves, prints the per-kind counts, and returns the exit
 * code (2 for bad arguments).
 */
export async function runCli(args: string[], io: CliIo): Promise<number> {
  let o;
  try {
    o = parseArgs(args);
  } catch (e) {
    io.err(JSON.stringify({ component: "fake_openai", error: (e as Error).message }));
    return 2;
  }

  const counts: Record<string, number> = {};
  const fake = await startFakeOpenAI({
    port: o.port,
    record: false,
    defaultScenario: faultMix(o),
    onServe: (s) => void (counts[kindName(s)] = (counts[kindName(s)] ?? 0) + 1),
  });
  io.out(JSON.stringify({ url: fake.url }));

  await io.stop;
  await fake.close();
  const served = Object.values(counts).reduce((a, b) => a + b, 0);
  io.err(JSON.stringify({ component: "fake_openai", served, counts }));
  return 0;
}

async function main() {
  const { promise: stop, resolve } = Promise.withResolvers<void>();
  Deno.addSignalListener("SIGTERM", resolve);
  Deno.addSignalListener("SIGINT", resolve);
  const code = await runCli(Deno.args, {
    out: (line) => console.log(line),
    err: (line) => console.error(line),
    stop,
  });
  Deno.exit(code);
}

if (import.meta.main) await main();
