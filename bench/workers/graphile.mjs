// graphile-worker running one task, `bench`, whose handler does nothing (or
// waits handlerDelayMs, standing in for a model call).
//
// Settings (BENCH_WORKER): url, concurrency, fast (the batching options of
// graphile-worker's performance guide: a local queue of 500 jobs and
// completions and failures batched with no delay), handlerDelayMs,
// recordLatency. Everything not named here is graphile-worker's default.

import { run } from "graphile-worker";
import { emit, gotTask, serve, settings, sleep } from "./common.mjs";

const { url, concurrency = 24, fast = false, handlerDelayMs = 0 } = settings;

const preset = fast
  ? { worker: { localQueue: { size: 500 }, completeJobBatchDelay: 0, failJobBatchDelay: 0 } }
  : { worker: {} };

const runner = await run({
  connectionString: url,
  concurrency,
  noHandleSignals: true,
  preset,
  logger: undefined,
  taskList: {
    bench: async (payload) => {
      gotTask(payload?.seq);
      if (handlerDelayMs > 0) await sleep(handlerDelayMs);
    },
  },
});

emit("ready", { pid: process.pid });
serve(async () => {
  await runner.stop();
});
