// Our queue driven straight through its SQL functions, without the runner:
// one claim loop taking batches with claim_ai_task (woken by NOTIFY on
// ai_tasks), a model that answers at once (or after modelDelayMs), and one
// complete_ai_task per task with its real writes (assistant message, build
// log, status). The runner batches completions into complete_ai_tasks; this
// driver does not, so it shows the cost of the unbatched path beside it.
//
// Settings (BENCH_WORKER): url, concurrency (tasks held at once), batchSize,
// poolSize, modelDelayMs, pollMs, recordLatency.

import postgres from "postgres";
import { emit, gotTask, serve, settings, sleep } from "./common.mjs";

const {
  url,
  concurrency = 100,
  batchSize = 50,
  poolSize = 10,
  modelDelayMs = 0,
  pollMs = 1000,
} = settings;
const workerId = `bench-sql:${process.pid}`;
const sql = postgres(url, { max: poolSize, onnotice: () => {} });

let held = 0;
let stopping = false;
let wake = null;
let woken = false;
function nudge() {
  woken = true;
  if (wake) wake();
}

async function handle(task) {
  gotTask(task.payload?.seq);
  if (modelDelayMs > 0) await sleep(modelDelayMs);
  const last = task.history.at(-1)?.content ?? "";
  const reply = `An answer to "${last.slice(0, 60)}".`;
  await sql`select public.complete_ai_task(${task.id}::uuid, ${task.attempt}::int, ${reply},
    ${sql.json({ model: "bench/instant", usage: { prompt_tokens: 12, completion_tokens: 8 } })},
    ${"bench/instant"})`;
}

async function loop() {
  while (!stopping) {
    const room = Math.min(concurrency - held, batchSize);
    if (room <= 0) {
      await new Promise((resolve) => (wake = resolve));
      wake = null;
      continue;
    }
    woken = false;
    const tasks = await sql`
      select * from public.claim_ai_task(${workerId}, null, ${room}::int, 300)`;
    for (const task of tasks) {
      held++;
      handle(task)
        .catch((error) => emit("error", { message: String(error?.message ?? error) }))
        .finally(() => {
          held--;
          nudge();
        });
    }
    if (tasks.length === 0 && !woken) {
      await Promise.race([new Promise((resolve) => (wake = resolve)), sleep(pollMs)]);
      wake = null;
    }
  }
}

await sql.listen("ai_tasks", nudge);
emit("ready", { pid: process.pid });
const running = loop();

serve(async () => {
  stopping = true;
  nudge();
  await running;
  while (held > 0) await sleep(10);
  await sql.end({ timeout: 5 });
});
