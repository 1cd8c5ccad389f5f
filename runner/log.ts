// One line per event on stdout: JSON for log collectors (the Edge Function
// log, a container's stdout), or a short aligned line for a person at a
// terminal. Callers pass ids, counts and durations; never a key, and a prompt
// only when RUNNER_LOG_PROMPTS asks for it.

import type { LogFormat } from "./config.ts";

export type LogLevel = "debug" | "info" | "warn" | "error";
export type LogFields = Record<string, unknown>;

export interface Logger {
  debug(event: string, fields?: LogFields): void;
  info(event: string, fields?: LogFields): void;
  warn(event: string, fields?: LogFields): void;
  error(event: string, fields?: LogFields): void;
  /** A line for people (the summary), printed as is in text format. */
  say(message: string, fields?: LogFields): void;
}

export type Sink = (line: string) => void;

// Fields that lead a text line, in this order; the rest follow as key=value.
const LEADING = ["task_id", "project_id", "attempt"];

function short(value: unknown): string {
  if (typeof value === "string") {
    // A uuid shortens to its first block: enough to tell tasks apart on screen.
    if (/^[0-9a-f]{8}-[0-9a-f-]{27}$/.test(value)) return value.slice(0, 8);
    return /[\s="]/.test(value) ? JSON.stringify(value) : value;
  }
  return JSON.stringify(value);
}

function textLine(level: LogLevel, event: string, fields: LogFields): string {
  const time = new Date().toISOString().slice(11, 23);
  const parts = [time, level === "info" ? "" : level.toUpperCase(), event.padEnd(12)];
  const keys = [
    ...LEADING.filter((k) => k in fields),
    ...Object.keys(fields).filter((k) => !LEADING.includes(k)),
  ];
  for (const key of keys) {
    const value = fields[key];
    if (value === undefined || value === null) continue;
    const name = key === "task_id" ? "task" : key === "project_id" ? "project" : key;
    parts.push(`${name}=${short(value)}`);
  }
  return parts.filter((p) => p !== "").join(" ");
}

export function createLogger(
  format: LogFormat,
  component = "runner",
  sink: Sink = (line) => console.log(line),
  minLevel: LogLevel = "info",
): Logger {
  const order: LogLevel[] = ["debug", "info", "warn", "error"];
  const emit = (level: LogLevel, event: string, fields: LogFields = {}) => {
    if (order.indexOf(level) < order.indexOf(minLevel)) return;
    if (format === "text") {
      sink(textLine(level, event, fields));
      return;
    }
    sink(JSON.stringify({ ts: new Date().toISOString(), level, component, event, ...fields }));
  };
  return {
    debug: (event, fields) => emit("debug", event, fields),
    info: (event, fields) => emit("info", event, fields),
    warn: (event, fields) => emit("warn", event, fields),
    error: (event, fields) => emit("error", event, fields),
    say(message, fields = {}) {
      if (format === "text") sink(message);
      else emit("info", "summary", { ...fields, message });
    },
  };
}

/**
 * A sink for a long-lived worker: the lines logged while one piece of work
 * runs (a claim starting fifty tasks, a batch of completions resolving) go
 * out in one write when it ends, not in one write each. At info level, three
 * lines per task written one by one cost the worker a sixth of its drain
 * rate. Lines wait only for the current job's microtasks; a process killed
 * outright loses those. Call flush() before exiting.
 *
 * The Edge Function keeps console.log: its log collector takes one call as
 * one event.
 */
export function batchedSink(
  write: (bytes: Uint8Array) => void = (bytes) => writeAll(Deno.stdout, bytes),
): Sink & { flush(): void } {
  const encoder = new TextEncoder();
  let pending: string[] = [];
  const flush = () => {
    if (pending.length === 0) return;
    const text = pending.join("\n") + "\n";
    pending = [];
    write(encoder.encode(text));
  };
  const sink = (line: string) => {
    if (pending.length === 0) queueMicrotask(flush);
    pending.push(line);
  };
  return Object.assign(sink, { flush });
}

function writeAll(file: { writeSync(p: Uint8Array): number }, bytes: Uint8Array): void {
  let written = 0;
  while (written < bytes.length) written += file.writeSync(bytes.subarray(written));
}

/** A logger that keeps lines in memory, for tests. */
export function memoryLogger(): Logger & { lines: LogFields[] } {
  const lines: LogFields[] = [];
  const logger = createLogger("json", "runner", (line) => lines.push(JSON.parse(line)), "debug");
  return Object.assign(logger, { lines });
}

/** An error's message without its stack, clipped so one bad answer cannot flood a log. */
export function errorText(error: unknown, max = 500): string {
  const message = error instanceof Error ? error.message : String(error);
  return message.length > max ? `${message.slice(0, max)}...` : message;
}
