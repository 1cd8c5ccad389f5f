// Shutdown: SIGTERM during a burst of 4-second model calls. A worker whose
// grace period is shorter than the calls gives its tasks back without
// spending their attempts (release: the remaining attempts stay as they were,
// build_logs says 'released'); one whose grace period is longer finishes
// them. Both exit 0 within their grace period, nothing stays running, and a
// draining worker then completes everything exactly once.

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
  sleep,
  startFakeModel,
  startWorker,
  waitFor,
} from "./lib.ts";

const TASKS = 40;
const SHORT_GRACE_MS = 1000;
const LONG_GRACE_MS = 8000;
// Signals reach a process that still has to close its pool and print its summary.
const EXIT_SLACK_MS = 3000;

type Held = { id: string; attempts: number; remaining: number };

async function heldBy(sql: import("postgres").Sql, worker: string): Promise<Held[]> {
  const rows = await sql`
    select id, attempts, max_attempts from public.ai_tasks
    where status = 'running' and locked_by = ${worker}`;
  // A running task's attempt is spent already; before its claim one more remained.
  return rows.map((r) => ({
    id: String(r.id),
    attempts: Number(r.attempts),
    remaining: Number(r.max_attempts) - Number(r.attempts) + 1,
  }));
}

export const scenario: Scenario = {
  name: "shutdown",
  async run(sql) {
    await resetQueue(sql);
    const fake = await startFakeModel("shutdown-fake", "chaos/fake_model.ts", [
      "--latency-ms",
      "4000",
    ]);
    const workers: Proc[] = [];
    const start = (name: string, env: Record<string, string>, args: string[] = []) => {
      const w = startWorker({
        name,
        modelUrl: fake.url,
        args,
        env: { RUNNER_CONCURRENCY: "4", RUNNER_BATCH_SIZE: "4", ...env },
      });
      workers.push(w);
      return w;
    };
    try {
      const projects = await makeProjects(sql, 10);
      const quick = start("shutdown-quick", { RUNNER_SHUTDOWN_GRACE_MS: String(SHORT_GRACE_MS) });
      const patient = start("shutdown-patient", {
        RUNNER_SHUTDOWN_GRACE_MS: String(LONG_GRACE_MS),
      });
      await Promise.all(
        workers.map((w) =>
          w.waitForEvent(`${w.name} started`, 60_000, (e) => e.event === "worker_started")
        ),
      );
      const ids = await insertTasks(sql, projects, TASKS, { text: "shutdown" });

      const [quickHeld, patientHeld] = await waitFor(
        "both workers hold 4 tasks",
        20_000,
        async () => {
          const q = await heldBy(sql, quick.name);
          const p = await heldBy(sql, patient.name);
          return q.length === 4 && p.length === 4 ? [q, p] : null;
        },
        50,
      );
      await sleep(1000); // the 4 s calls are in flight, 3 s from their answers
      const signalled = Date.now();
      quick.kill("SIGTERM");
      patient.kill("SIGTERM");
      const [q, p] = await Promise.all([quick.status, patient.status]);
      const quickMs = quick.exitedAt! - signalled;
      const patientMs = patient.exitedAt! - signalled;
      const [{ running }] = await sql`
        select count(*)::int as running from public.ai_tasks where status = 'running'`;

      const released = await sql`
        select t.id, t.status, t.attempts, t.max_attempts,
               exists (select 1 from public.build_logs b
                       where b.task_id = t.id and b.metadata->>'event' = 'released'
                         and (b.metadata->>'attempt')::int = t.attempts) as logged
        from public.ai_tasks t where t.id = any (${quickHeld.map((h) => h.id)}::uuid[])`;
      const finished = await sql`
        select count(*)::int as n from public.ai_tasks t
        join unnest(${patientHeld.map((h) => h.id)}::uuid[],
                    ${patientHeld.map((h) => h.attempts)}::int[]) h (id, a) on h.id = t.id
        where t.status = 'completed' and t.attempts = h.a`;
      const quickReleasedLogs = quick.events().filter((e) => e.event === "released").length;

      // Whatever is left is drained by one more worker, which then exits by itself.
      const drain = start("shutdown-drain", { RUNNER_CONCURRENCY: "40", RUNNER_BATCH_SIZE: "40" }, [
        "--drain",
      ]);
      const d = await drain.status;
      const f = await queueFigures(sql, ids);

      const line =
        `tasks=${TASKS} in_flight_at_sigterm=${quickHeld.length}+${patientHeld.length} ` +
        `quick(grace ${SHORT_GRACE_MS} ms): exit=${q.code} in ${quickMs} ms, ` +
        `released=${released.filter((r) => r.status === "queued").length} ` +
        `remaining_attempts_kept=${
          released.filter((r) =>
            r.max_attempts - r.attempts === quickHeld.find((h) => h.id === r.id)!.remaining
          )
            .length
        } released_logged=${released.filter((r) => r.logged).length} | ` +
        `patient(grace ${LONG_GRACE_MS} ms): exit=${p.code} in ${patientMs} ms, ` +
        `finished=${finished[0].n} | running_after=${running} drain_exit=${d.code} ` +
        `completed=${f.byStatus.completed ?? 0} duplicates=${f.duplicates}`;
      say(line);

      checkEqual([q.code, p.code], [0, 0], "exit codes after SIGTERM");
      check(quickMs <= SHORT_GRACE_MS + EXIT_SLACK_MS, `quick worker exits in time: ${quickMs} ms`);
      check(
        patientMs <= LONG_GRACE_MS + EXIT_SLACK_MS,
        `patient worker exits in time: ${patientMs} ms`,
      );
      checkEqual(running, 0, "tasks left running after both exited");
      checkEqual(
        released.map((r) => r.status),
        quickHeld.map(() => "queued"),
        "the quick worker's tasks are back in the queue",
      );
      for (const r of released) {
        const h = quickHeld.find((x) => x.id === r.id)!;
        checkEqual(
          [r.attempts, r.max_attempts - r.attempts],
          [h.attempts, h.remaining],
          `task ${r.id}: fencing token kept, remaining attempts given back`,
        );
      }
      checkEqual(
        released.filter((r) => r.logged).length,
        quickHeld.length,
        "build_logs 'released' entries for the quick worker's tasks",
      );
      checkEqual(quickReleasedLogs, quickHeld.length, "'released' lines in the quick worker's log");
      checkEqual(finished[0].n, patientHeld.length, "the patient worker's tasks it finished");
      checkEqual(d.code, 0, "the draining worker's exit code");
      checkEqual(f.byStatus.completed ?? 0, TASKS, "tasks completed in the end");
      checkEqual(f.duplicates + f.missingAnswers, 0, "tasks without exactly one answer");
      return { figures: line };
    } finally {
      await Promise.all(workers.map((w) => w.stop()));
      await fake.stop();
    }
  },
};
