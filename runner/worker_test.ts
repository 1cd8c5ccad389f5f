// The worker loop against the real queue: many tasks at once, NOTIFY wake-ups,
// drain mode, and shutdown that finishes or releases what it holds, in
// process and as a real process receiving SIGTERM.

import { createSupabaseQueueDb } from "./db.ts";
import { createModel } from "./model.ts";
import { startFakeOpenAI } from "./testing/fake_openai.ts";
import { signJwt, startPostgrestStandin } from "./testing/postgrest_standin.ts";
import {
  assert,
  assertEquals,
  DATABASE_URL,
  DB_PATHS,
  eventually,
  FAKE_OPENROUTER_KEY,
  FAKE_SERVICE_KEY_SECRET,
  sleep,
  testConfig,
  TestDb,
  testLogger,
} from "./test_support.ts";
import { Worker } from "./worker.ts";

for (const path of DB_PATHS) {
  Deno.test(`worker via ${path.name}`, async (t) => {
    const fake = await startFakeOpenAI();
    const conn = await path.open();
    const rows = new TestDb();
    const env = {
      ...conn.config,
      OPENROUTER_KEY: FAKE_OPENROUTER_KEY,
      OPENROUTER_BASE_URL: fake.url,
    };

    async function projectWithTasks(n: number, cap = 50) {
      const projectId = await rows.project();
      // The queue runs at most a few tasks of one project at once by default.
      await rows.sql`update public.projects set max_running_tasks = ${cap}
                     where id = ${projectId}::uuid`;
      const ids: string[] = [];
      for (let i = 0; i < n; i++) ids.push(await rows.enqueue(projectId, { message: `m${i}` }));
      return { projectId, ids };
    }

    function worker(projectId: string, extra: Record<string, string> = {}, drain = false) {
      const config = testConfig({ ...env, ...extra });
      const log = testLogger();
      const w = new Worker({
        db: conn.db,
        model: createModel(config),
        config,
        log,
        drain,
        projectId,
      });
      return { w, log };
    }

    try {
      await t.step(
        "N tasks with concurrency above one all complete, several at a time",
        async () => {
          fake.setDefault({ kind: "reply", content: "done", delayMs: 150 });
          const { projectId, ids } = await projectWithTasks(12);
          const { w } = worker(
            projectId,
            { RUNNER_CONCURRENCY: "6", RUNNER_BATCH_SIZE: "3" },
            true,
          );
          await w.run();
          const summary = w.summary();

          assertEquals(
            [summary.claimed, summary.completed, summary.failed],
            [12, 12, 0],
            "every task claimed once and completed",
          );
          assert(
            summary.peak_in_flight > 1 && summary.peak_in_flight <= 6,
            `several in flight, never above the limit: ${summary.peak_in_flight}`,
          );
          for (const id of ids) {
            assertEquals((await rows.task(id)).status, "completed", "task completed");
            assertEquals((await rows.assistantMessages(id)).length, 1, "one reply each");
          }
        },
      );

      await t.step(
        "a slot freed after a full claim is filled while the other tasks still run",
        async () => {
          // Four slots, batches of four: one slot is below the low-water mark
          // of two, yet it must not wait for the long tasks to end.
          fake.setDefault((req) => {
            const last = req.body.messages.findLast((m: { role: string }) => m.role === "user");
            const delayMs = last?.content === "m0"
              ? 50
              : ["m1", "m2", "m3"].includes(last?.content)
              ? 2500
              : 0;
            return { kind: "reply", content: "ok", delayMs };
          });
          const { projectId, ids } = await projectWithTasks(5);
          const { w } = worker(projectId, { RUNNER_CONCURRENCY: "4", RUNNER_BATCH_SIZE: "4" });
          const running = w.run();
          try {
            await eventually(
              async () => (await rows.task(ids[4])).status === "completed",
              "the fifth task completes",
              8000,
            );
            const longOnes = await Promise.all(ids.slice(1, 4).map((id) => rows.task(id)));
            assertEquals(
              longOnes.map((task) => task.status),
              ["running", "running", "running"],
              "the fifth task was done before any long task ended",
            );
          } finally {
            await w.shutdown(100);
            await running;
          }
        },
      );

      await t.step("drain mode exits at once when nothing is due", async () => {
        const { w } = worker(await rows.project(), {}, true);
        await w.run();
        assertEquals(w.summary().claimed, 0, "nothing claimed");
      });

      await t.step(
        "shutdown releases tasks still running after the grace period, attempts kept",
        async () => {
          fake.setDefault({ kind: "hang", ms: 30_000 });
          const { projectId, ids } = await projectWithTasks(3);
          const { w, log } = worker(projectId, {
            RUNNER_CONCURRENCY: "5",
            RUNNER_MODEL_TIMEOUT_MS: "60000",
          });
          const running = w.run();
          await eventually(() => Promise.resolve(w.inFlight === 3), "three tasks in flight");
          const started = Date.now();
          await w.shutdown(200);
          await running;

          assert(Date.now() - started < 5000, "the hanging calls were aborted");
          assertEquals(w.summary().released, 3, "three released");
          for (const id of ids) {
            const task = await rows.task(id);
            assertEquals(task.status, "queued", "back in the queue");
            assertEquals(task.max_attempts - task.attempts, 3, "no attempt spent");
            assertEquals((await rows.logEvents(id)).at(-1), "released", "logged as released");
          }
          assert(log.lines.some((l) => l.event === "stopping"), "the worker logs its stop");
        },
      );

      await t.step("shutdown lets tasks finish within the grace period", async () => {
        fake.setDefault({ kind: "reply", content: "finished in time", delayMs: 400 });
        const { projectId, ids } = await projectWithTasks(2);
        const { w } = worker(projectId);
        const running = w.run();
        await eventually(() => Promise.resolve(w.inFlight === 2), "two tasks in flight");
        await w.shutdown(10_000);
        await running;
        assertEquals(
          [w.summary().completed, w.summary().released],
          [2, 0],
          "completed, not released",
        );
        for (const id of ids) assertEquals((await rows.task(id)).status, "completed", "completed");
      });

      await t.step("a worker stops claiming once shut down", async () => {
        fake.setDefault({ kind: "reply", content: "late" });
        const projectId = await rows.project();
        const { w } = worker(projectId);
        const running = w.run();
        await w.shutdown(100);
        await running;
        const taskId = await rows.enqueue(projectId);
        await sleep(300);
        assertEquals((await rows.task(taskId)).status, "queued", "not claimed after shutdown");
      });

      if (conn.db.kind === "postgres") {
        await t.step("NOTIFY wakes an idle worker long before its next poll", async () => {
          fake.setDefault({ kind: "reply", content: "woken" });
          const projectId = await rows.project();
          const { w } = worker(projectId, { RUNNER_POLL_MS: "60000", RUNNER_POLL_MAX_MS: "60000" });
          const running = w.run();
          await sleep(300); // the first claim found nothing; the next poll is a minute away
          const taskId = await rows.enqueue(projectId);
          await eventually(
            async () => (await rows.task(taskId)).status === "completed",
            "the task is done within seconds",
            5000,
          );
          await w.shutdown(1000);
          await running;
        });
      } else {
        await t.step("a supabase-js worker says it polls", async () => {
          const { w, log } = worker(await rows.project(), {}, true);
          await w.run();
          assert(log.lines.some((l) => l.event === "polling"), "logs that it polls");
        });
      }
    } finally {
      await rows.close();
      await conn.close();
      await fake.close();
    }
  });
}

Deno.test("a worker process given SIGTERM releases its task and exits cleanly", async () => {
  const rows = new TestDb();
  try {
    const projectId = await rows.project();
    await rows.sql`update public.projects set max_running_tasks = 10 where id = ${projectId}::uuid`;
    const taskId = await rows.enqueue(projectId);
    // The offline model, slowed down, holds the task long enough to be stopped.
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-net",
        "--allow-env",
        "--allow-read",
        "--allow-sys",
        new URL("./main.ts", import.meta.url).pathname,
        "worker",
      ],
      env: {
        DATABASE_URL,
        RUNNER_OFFLINE_DELAY_MS: "60000",
        RUNNER_SHUTDOWN_GRACE_MS: "300",
        RUNNER_LOG_FORMAT: "json",
        RUNNER_POLL_MS: "50",
        OPENROUTER_KEY: "",
      },
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    await eventually(
      async () => (await rows.task(taskId)).status === "running",
      "the worker holds the task",
      15_000,
    );
    child.kill("SIGTERM");
    const { code, stdout } = await child.output();
    const lines = new TextDecoder().decode(stdout).trim().split("\n")
      .map((l) => JSON.parse(l));

    assertEquals(code, 0, "exit code");
    const task = await rows.task(taskId);
    assertEquals(task.status, "queued", "back in the queue");
    assertEquals(task.max_attempts - task.attempts, 3, "no attempt spent");
    assert(lines.some((l) => l.event === "released" && l.task_id === taskId), "logs the release");
    const summary = lines.at(-1);
    assertEquals(summary.event, "summary", "ends with a summary");
    assert(summary.released >= 1, `the summary counts the release: ${summary.released}`);
  } finally {
    await rows.close();
  }
});

Deno.test("a claim the database refuses is logged at every try, not once", async () => {
  const standin = await startPostgrestStandin({
    databaseUrl: DATABASE_URL,
    jwtSecret: FAKE_SERVICE_KEY_SECRET,
  });
  // An anon key: claim_ai_task is the service role's alone.
  const anonKey = await signJwt(
    { role: "anon", exp: Math.floor(Date.now() / 1000) + 600 },
    FAKE_SERVICE_KEY_SECRET,
  );
  const db = createSupabaseQueueDb(standin.url, anonKey);
  try {
    const config = testConfig({ RUNNER_POLL_MS: "20", RUNNER_POLL_MAX_MS: "40" });
    const log = testLogger();
    const w = new Worker({ db, model: createModel(config), config, log });
    const running = w.run();
    await eventually(
      () => Promise.resolve(log.lines.filter((l) => l.event === "claim_failed").length >= 2),
      "the refusal is logged again on the next try",
    );
    await w.shutdown(100);
    await running;
    const refusal = log.lines.find((l) => l.event === "claim_failed")!;
    assertEquals(refusal.code, "42501", "the SQLSTATE is in the log");
    assert(!log.lines.some((l) => l.event === "db_unavailable"), "not mistaken for an outage");
  } finally {
    await db.close();
    await standin.close();
  }
});
