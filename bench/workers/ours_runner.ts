// Our queue through the real runner: runner/worker.ts's Worker with the
// runner's own configuration, database layer (postgres.js over the SQL
// functions), chat_reply handler and JSON logging. Only the model is the
// benchmark's: the runner's offline model (instant, or modelDelayMs per
// reply), wrapped to note when each task reached it.
//
// Settings (BENCH_WORKER): url, concurrency, batchSize, poolSize, modelDelayMs,
// recordLatency, logLevel (the runner's default is info: three lines per task),
// runnerEnv.

import { loadConfig } from "../../runner/config.ts";
import { createQueueDb } from "../../runner/db.ts";
import { batchedSink, createLogger, type LogLevel } from "../../runner/log.ts";
import { type ChatModel, createOfflineModel } from "../../runner/model.ts";
import { Worker } from "../../runner/worker.ts";

const settings = JSON.parse(Deno.env.get("BENCH_WORKER") ?? "{}");
const emit = (bench: string, fields: Record<string, unknown> = {}) =>
  console.log(JSON.stringify({ bench, ...fields }));
const wallMs = () => performance.timeOrigin + performance.now();

// Only what the benchmark sets: no model key can leak in from the environment,
// so the offline model is the one in use.
const env: Record<string, string> = {
  DATABASE_URL: settings.url,
  RUNNER_WORKER_ID: `bench-runner:${Deno.pid}`,
  RUNNER_LOG_FORMAT: "json",
  RUNNER_CONCURRENCY: String(settings.concurrency ?? 100),
};
if (settings.batchSize) env.RUNNER_BATCH_SIZE = String(settings.batchSize);
if (settings.poolSize) env.RUNNER_DB_POOL = String(settings.poolSize);
// Extra RUNNER_* settings to try a change of configuration (BENCH_RUNNER_ENV).
for (const [name, value] of Object.entries(settings.runnerEnv ?? {})) {
  if (name.startsWith("RUNNER_")) env[name] = String(value);
}
const config = loadConfig(env);
// The sink runner/main.ts gives a worker.
const log = createLogger(
  "json",
  "runner",
  batchedSink(),
  (settings.logLevel ?? "info") as LogLevel,
);
const db = createQueueDb(config);

const offline = createOfflineModel(settings.modelDelayMs ?? 0);
const received = new Map<number, number>();
const model: ChatModel = {
  name: offline.name,
  complete(request) {
    if (settings.recordLatency) {
      const last = request.messages.findLast((m) => m.role === "user")?.content ?? "";
      const seq = /^Bench question (\d+)$/.exec(last)?.[1];
      if (seq !== undefined) received.set(Number(seq), wallMs());
    }
    return offline.complete(request);
  },
};

const worker = new Worker({ db, model, config, log });
const running = worker.run();
// The loop subscribes to NOTIFY before its first claim; give it that moment.
await new Promise((resolve) => setTimeout(resolve, 500));
emit("ready", { pid: Deno.pid });

let stopping = false;
async function stop() {
  if (stopping) return;
  stopping = true;
  await worker.shutdown();
  await running;
  await db.close();
  emit("stopped");
  Deno.exit(0);
}
Deno.addSignalListener("SIGTERM", stop);
Deno.addSignalListener("SIGINT", stop);

const decoder = new TextDecoderStream();
Deno.stdin.readable.pipeTo(decoder.writable);
let buffered = "";
for await (const chunk of decoder.readable) {
  buffered += chunk;
  let newline;
  while ((newline = buffered.indexOf("\n")) >= 0) {
    const { cmd } = JSON.parse(buffered.slice(0, newline));
    buffered = buffered.slice(newline + 1);
    if (cmd === "report") emit("report", { received: [...received.entries()] });
    if (cmd === "stop") await stop();
  }
}
