// The runner's entry point.
//   deno run ... runner/main.ts                 serve HTTP, as the Edge Function does
//   deno run ... runner/main.ts worker [--drain] process tasks until stopped (or drained)

import { ConfigError, describeDatabase, loadConfig } from "./config.ts";
import { createQueueDb } from "./db.ts";
import { createHandler } from "./http.ts";
import { batchedSink, createLogger } from "./log.ts";
import { createModel, OFFLINE_MODEL } from "./model.ts";
import { summaryLine, Worker } from "./worker.ts";

/** The Edge Function's request handler; supabase/functions/process-ai-tasks serves it. */
export const handler = createHandler();

async function runWorker(args: string[]): Promise<number> {
  const unknown = args.filter((a) => a !== "--drain");
  if (unknown.length > 0) {
    console.error(`worker: unknown argument ${unknown[0]}; usage: worker [--drain]`);
    return 2;
  }
  const config = loadConfig();
  const sink = batchedSink();
  const log = createLogger(config.logFormat, "runner", sink, config.logLevel);
  const db = createQueueDb(config);
  const model = createModel(config);
  const drain = args.includes("--drain");

  log.info("worker_started", {
    worker_id: config.workerId,
    database: describeDatabase(config),
    mode: drain ? "drain" : "run",
    model: model.name === "offline" ? OFFLINE_MODEL : config.defaultModel,
    concurrency: config.concurrency,
    batch_size: config.batchSize,
  });
  if (model.name === "offline") {
    log.warn("offline_model", {
      note: `OPENROUTER_KEY is not set: replies come from ${OFFLINE_MODEL}, not from an AI`,
    });
  }

  const worker = new Worker({ db, model, config, log, drain });
  // The first Ctrl-C lets running tasks finish; a second one gives them back
  // now. `deno task` forwards the terminal's SIGINT, so one Ctrl-C can arrive
  // twice: signals within a second of the first count as that one.
  let firstSignalAt = 0;
  const onSignal = (signal: Deno.Signal) => () => {
    const now = Date.now();
    if (firstSignalAt === 0) {
      firstSignalAt = now;
      log.info("signal", { signal, action: "finishing in-flight tasks" });
      void worker.shutdown();
    } else if (now - firstSignalAt > 1000) {
      log.info("signal", { signal, action: "releasing in-flight tasks now" });
      worker.abortNow();
    }
  };
  const listeners: [Deno.Signal, () => void][] = [["SIGINT", onSignal("SIGINT")], [
    "SIGTERM",
    onSignal("SIGTERM"),
  ]];
  for (const [signal, listener] of listeners) Deno.addSignalListener(signal, listener);

  await worker.run();
  for (const [signal, listener] of listeners) Deno.removeSignalListener(signal, listener);
  await db.close();
  const summary = worker.summary();
  log.say(summaryLine(summary), { ...summary });
  sink.flush();
  return summary.unrecorded > 0 ? 1 : 0;
}

if (import.meta.main) {
  const [mode = "serve", ...args] = Deno.args;
  try {
    if (mode === "serve") {
      Deno.serve(handler);
    } else if (mode === "worker") {
      Deno.exit(await runWorker(args));
    } else {
      console.error(`unknown mode ${mode}; usage: main.ts [serve | worker [--drain]]`);
      Deno.exit(2);
    }
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    console.error(`configuration error: ${error.message}`);
    Deno.exit(2);
  }
}
