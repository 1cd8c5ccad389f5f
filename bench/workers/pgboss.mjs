// pg-boss working queue `bench` with a handler that does nothing (or waits
// handlerDelayMs). pg-boss polls (it has no LISTEN), fetching batchSize jobs
// per poll and completing them together when the handler returns; `loops`
// work() registrations run side by side, which is how pg-boss 10 runs jobs
// concurrently in one process.
//
// Settings (BENCH_WORKER): url, batchSize, loops, pollingIntervalSeconds
// (0.5 is pg-boss's minimum), handlerDelayMs, recordLatency.

import PgBoss from "pg-boss";
import { emit, gotTask, serve, settings, sleep } from "./common.mjs";

const {
  url,
  batchSize = 100,
  loops = 10,
  pollingIntervalSeconds = 0.5,
  handlerDelayMs = 0,
} = settings;

const boss = new PgBoss({ connectionString: url });
boss.on("error", (error) => emit("error", { message: String(error?.message ?? error) }));
await boss.start();
await boss.createQueue("bench");

for (let i = 0; i < loops; i++) {
  await boss.work("bench", { batchSize, pollingIntervalSeconds }, async (jobs) => {
    for (const job of jobs) gotTask(job.data?.seq);
    if (handlerDelayMs > 0) await sleep(handlerDelayMs);
  });
}

emit("ready", { pid: process.pid });
serve(async () => {
  await boss.stop({ graceful: true, wait: true, timeout: 10_000 });
});
