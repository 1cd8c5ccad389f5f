// Model faults: the shared fake model (runner/testing/fake_openai.ts, CLI mode)
// answers 20% of calls with a seeded mix of 429 with Retry-After, 500, 502,
// a hang past the runner's timeout, an error in the middle of a stream, and
// 402. Every task must end as its errors warrant: 402 fails at once (not
// retryable), the rest are retried (429 snoozed without spending an attempt)
// until they succeed or run out of attempts; nothing is left queued or running.

import {
  check,
  checkEqual,
  insertTasks,
  makeProjects,
  type Proc,
  queueFigures,
  resetQueue,
  say,
  type Scenario,
  startFakeModel,
  startWorker,
  waitFor,
} from "./lib.ts";

const WORKERS = 4;
const TASKS = 1000;
const FAULT_RATE = 0.2;

export const scenario: Scenario = {
  name: "model_faults",
  async run(sql) {
    await resetQueue(sql);
    const fake = await startFakeModel("faults-fake", "runner/testing/fake_openai.ts", [
      "--fault-rate",
      String(FAULT_RATE),
      "--latency-ms",
      "100",
      "--hang-ms",
      "30000",
      "--seed",
      "42",
    ]);
    const projects = await makeProjects(sql, 50);
    const workers: Proc[] = [];
    let counts: Record<string, number> = {};
    try {
      for (let i = 0; i < WORKERS; i++) {
        workers.push(startWorker({
          name: `faults-w${i + 1}`,
          modelUrl: fake.url,
          env: {
            RUNNER_MODEL_TIMEOUT_MS: "3000",
            RUNNER_CONCURRENCY: "20",
            RUNNER_BATCH_SIZE: "20",
          },
        }));
      }
      await Promise.all(
        workers.map((w) =>
          w.waitForEvent(`${w.name} started`, 60_000, (e) => e.event === "worker_started")
        ),
      );
      const started = performance.now();
      const ids = await insertTasks(sql, projects, TASKS, { text: "faults", maxAttempts: 3 });
      // The slowest path: two failures with 5 s and 10 s backoff (+25% jitter).
      await waitFor(
        "every faulted task finished",
        180_000,
        async () => (await queueFigures(sql, ids)).unfinished === 0,
        500,
      );
      const seconds = (performance.now() - started) / 1000;
      await Promise.all(workers.map((w) => w.stop()));
      counts = await fake.stop();

      const f = await queueFigures(sql, ids);
      const [t] = await sql`
        select
          sum(attempts)::int as attempts,
          sum(snoozes)::int as snoozes,
          count(*) filter (where status = 'failed' and error ~ 'HTTP 402')::int as failed_402,
          count(*) filter (where status = 'failed' and error !~ 'HTTP 402'
                           and attempts < max_attempts)::int as failed_early,
          count(*) filter (where status = 'failed' and error ~ 'HTTP 402'
                           and (errors -> -1 ->> 'retryable')::boolean)::int as bad_402,
          count(*) filter (where attempts > max_attempts)::int as over_max,
          count(*) filter (where exists (
            select 1 from jsonb_array_elements(errors) e
            where e ->> 'error' !~ 'HTTP 402' and not (e ->> 'retryable')::boolean))::int
            as wrongly_final,
          max(attempts)::int as max_attempts_used
        from public.ai_tasks where id = any (${ids}::uuid[])`;
      const served = Object.values(counts).reduce((a, b) => a + b, 0);
      const faults = Object.entries(counts).filter(([k]) => k !== "reply")
        .map(([k, v]) => `${k}=${v}`).join(" ");
      const summaries = workers.map((w) => w.events().find((e) => e.event === "summary"));
      const retried = summaries.reduce((n, s) => n + Number(s?.retried ?? 0), 0);
      const line = `tasks=${TASKS} workers=${WORKERS} fault_rate=${FAULT_RATE} ` +
        `seconds=${seconds.toFixed(1)} model_calls=${served} replies=${counts.reply ?? 0} ` +
        `faults: ${faults} | completed=${f.byStatus.completed ?? 0} ` +
        `failed=${f.byStatus.failed ?? 0} (402: ${t.failed_402}, out of attempts: ` +
        `${(f.byStatus.failed ?? 0) - t.failed_402}) retried=${retried} snoozed=${t.snoozes} ` +
        `unfinished=${f.unfinished} duplicates=${f.duplicates} ` +
        `max_attempts_used=${t.max_attempts_used}`;
      say(line);

      checkEqual(f.unfinished, 0, "tasks left queued or running");
      checkEqual(f.total, TASKS, "tasks");
      checkEqual(
        (f.byStatus.completed ?? 0) + (f.byStatus.failed ?? 0),
        TASKS,
        "tasks completed or failed",
      );
      checkEqual(f.duplicates + f.missingAnswers, 0, "completed tasks without exactly one answer");
      checkEqual(
        t.failed_402,
        counts.payment_required_402 ?? 0,
        "tasks failed by 402 (each 402 ends its task at once)",
      );
      checkEqual(t.bad_402, 0, "402 failures recorded as retryable");
      checkEqual(t.failed_early, 0, "tasks failed by a retryable fault before their last attempt");
      checkEqual(t.wrongly_final, 0, "retryable faults recorded as not retryable");
      checkEqual(t.over_max, 0, "tasks over max_attempts");
      checkEqual(served, t.attempts, "model calls = attempts (one call per claim)");
      for (
        const kind of [
          "rate_limited_429",
          "server_error_500",
          "bad_gateway_502",
          "hang",
          "stream_error",
          "payment_required_402",
        ]
      ) {
        check((counts[kind] ?? 0) > 0, `the fake served at least one ${kind}`);
      }
      check(t.snoozes > 0, "some 429s were snoozed");
      return { figures: line };
    } finally {
      await Promise.all(workers.map((w) => w.stop()));
      await fake.stop();
    }
  },
};
