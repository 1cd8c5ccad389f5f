// Crash: workers die or freeze in the middle of model calls.
//   1. SIGKILL a worker with calls in flight: its tasks come back when their
//      leases expire (reaped by the other workers' claims) and complete once.
//   2. SIGSTOP a worker with calls in flight, wait until others took its
//      tasks over and completed them, SIGCONT it: its late writes are refused
//      (fencing), it says so in its log, and nothing is written twice.
//   3. A task whose model call never ends, and whose every worker is killed
//      while holding it, ends failed after max_attempts instead of looping.

import postgres from "postgres";
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

const LEASE_SECONDS = 5;
const TASKS = 80;

type Held = { id: string; attempts: number };

async function heldBy(sql: postgres.Sql, worker: string): Promise<Held[]> {
  const rows = await sql`
    select id, attempts from public.ai_tasks where status = 'running' and locked_by = ${worker}`;
  return rows.map((r) => ({ id: String(r.id), attempts: Number(r.attempts) }));
}

/** Tasks of `held` completed on a later attempt than the one the worker held. */
async function takenOver(sql: postgres.Sql, held: Held[]): Promise<number> {
  const [{ n }] = await sql`
    select count(*)::int as n
    from unnest(${held.map((h) => h.id)}::uuid[], ${held.map((h) => h.attempts)}::int[]) h (id, a)
    join public.ai_tasks t on t.id = h.id
    where t.status = 'completed' and t.attempts > h.a`;
  return n;
}

async function leaseExpiries(sql: postgres.Sql, held: Held[]): Promise<number> {
  const [{ n }] = await sql`
    select count(distinct b.task_id)::int as n
    from unnest(${held.map((h) => h.id)}::uuid[], ${held.map((h) => h.attempts)}::int[]) h (id, a)
    join public.build_logs b on b.task_id = h.id
    where b.metadata->>'event' = 'lease_expired' and (b.metadata->>'attempt')::int = h.a`;
  return n;
}

export const scenario: Scenario = {
  name: "crash",
  async run(sql) {
    await resetQueue(sql);
    const fake = await startFakeModel("crash-fake", "chaos/fake_model.ts", [
      "--latency-ms",
      "2500",
    ]);
    const env = {
      RUNNER_LEASE_SECONDS: String(LEASE_SECONDS),
      RUNNER_CONCURRENCY: "4",
      RUNNER_BATCH_SIZE: "4",
      RUNNER_SHUTDOWN_GRACE_MS: "0",
    };
    const workers: Proc[] = [];
    const start = (name: string) => {
      const w = startWorker({ name, modelUrl: fake.url, env });
      workers.push(w);
      return w;
    };
    try {
      // ---- 1 and 2: a killed and a frozen worker among four.
      const projects = await makeProjects(sql, 10);
      const [killed, frozen, w3, w4] = ["crash-w1", "crash-w2", "crash-w3", "crash-w4"]
        .map(start);
      await Promise.all(
        workers.map((w) =>
          w.waitForEvent(`${w.name} started`, 60_000, (e) => e.event === "worker_started")
        ),
      );
      const ids = await insertTasks(sql, projects, TASKS, { text: "crash" });

      const killedHeld = await waitFor("crash-w1 holds tasks", 20_000, async () => {
        const held = await heldBy(sql, killed.name);
        return held.length >= 2 ? held : null;
      }, 50);
      await sleep(300); // well inside the 2.5 s model call
      killed.kill("SIGKILL");
      const frozenHeld = await waitFor("crash-w2 holds tasks", 20_000, async () => {
        const held = await heldBy(sql, frozen.name);
        return held.length >= 1 ? held : null;
      }, 50);
      frozen.kill("SIGSTOP");
      const frozenAt = Date.now();

      await waitFor(
        "the killed worker's tasks completed by others",
        60_000,
        async () => await takenOver(sql, killedHeld) === killedHeld.length,
      );
      await waitFor(
        "the frozen worker's tasks completed by others",
        60_000,
        async () => await takenOver(sql, frozenHeld) === frozenHeld.length,
      );
      const frozenSeconds = (Date.now() - frozenAt) / 1000;
      frozen.kill("SIGCONT");

      // The woken worker finds each of its tasks no longer held by its attempt:
      // its complete is refused (AQ001), or, when a lease renewal or a stream
      // write noticed first, it never sends one.
      const woken: Record<string, unknown>[] = [];
      for (const h of frozenHeld) {
        woken.push(
          await frozen.waitForEvent(
            `crash-w2 logs that task ${h.id} is no longer its`,
            30_000,
            (e) =>
              e.event === "cancelled" && e.task_id === h.id &&
              e.attempt === h.attempts,
          ),
        );
      }
      const refusedAq001 = woken.filter((e) => e.code === "AQ001").length;
      // The fencing itself, as the woken worker's complete meets it.
      let refused = "";
      try {
        await sql`select public.complete_ai_task(${frozenHeld[0].id}::uuid,
                                                 ${frozenHeld[0].attempts}::int, 'late')`;
      } catch (error) {
        refused = String((error as { code?: string }).code);
      }
      checkEqual(refused, "AQ001", "a complete by the superseded attempt");

      await waitFor(
        "all crash tasks finished",
        120_000,
        async () => (await queueFigures(sql, ids)).unfinished === 0,
        250,
      );
      const f = await queueFigures(sql, ids);
      const expired = await leaseExpiries(sql, [...killedHeld, ...frozenHeld]);
      const frozenCompleted = frozen.events().filter((e) =>
        e.event === "completed" &&
        frozenHeld.some((h) => h.id === e.task_id)
      ).length;

      // ---- 2b: a complete that reaches the database after the takeover. The
      // woken worker above notices the loss before it writes; this one has sent
      // its complete when the takeover happens, as after a network stall. The
      // harness holds the task's row lock, so the worker's complete waits in
      // the database; meanwhile the lease runs out and the task is claimed
      // again (in the harness's transaction); then the waiting complete runs.
      // (The lease is set to have run out rather than waited out: the same
      // row lock that holds the complete back would hold the reaper back.)
      for (const w of [frozen, w3, w4]) await w.stop();
      const late = start("crash-late");
      const [lateProject] = await makeProjects(sql, 1);
      const [lateTask] = await insertTasks(sql, [lateProject], 1, { text: "late" });
      await waitFor(
        "crash-late holds its task",
        30_000,
        async () => (await heldBy(sql, late.name)).length === 1,
        50,
      );
      let takeoverAttempt = 0;
      await sql.begin(async (tx) => {
        // A share lock: the worker's stream writes (for share) pass, its
        // complete (for update) and lease renewal (update) wait.
        await tx`select 1 from public.ai_tasks where id = ${lateTask}::uuid for share`;
        await waitFor("crash-late's complete waits for the row lock", 30_000, async () => {
          const [{ n }] = await sql`
            select count(*)::int as n from pg_catalog.pg_stat_activity
            where application_name = 'ai-tasks-runner' and wait_event_type = 'Lock'
              and query like '%complete_ai_task%'`;
          return n > 0;
        }, 50);
        await tx`update public.ai_tasks set locked_until = now() - interval '1 second'
                 where id = ${lateTask}::uuid`;
        const [claim] = await tx`
          select attempt from public.claim_ai_task('crash-takeover', ${lateProject}::uuid, 1, 30)`;
        takeoverAttempt = Number(claim?.attempt ?? 0);
      });
      await sql`select public.complete_ai_task(${lateTask}::uuid, ${takeoverAttempt}::int,
                                               'answered by the takeover')`;
      const lateRefusal = await late.waitForEvent(
        "crash-late logs its refused complete",
        30_000,
        (e) => e.event === "cancelled" && e.task_id === lateTask,
      );
      const [lateRow] = await sql`
        select t.status, t.attempts,
               (select count(*)::int from public.chat_messages m
                where m.task_id = t.id and m.role = 'assistant') as answers,
               (select m.content from public.chat_messages m
                where m.task_id = t.id and m.role = 'assistant') as answer
        from public.ai_tasks t where t.id = ${lateTask}::uuid`;
      await late.stop();

      // ---- 3: the task that kills every worker.
      const [poisonProject] = await makeProjects(sql, 1);
      const [poison] = await insertTasks(sql, [poisonProject], 1, {
        text: "hang-forever",
        maxAttempts: 3,
      });
      let kills = 0;
      for (let n = 1; kills < 10; n++) {
        const w = start(`crash-poison-w${n}`);
        const state = await waitFor(
          `crash-poison-w${n} claims the poison task or it fails`,
          60_000,
          async () => {
            const [t] = await sql`select status, locked_by from public.ai_tasks
                                  where id = ${poison}::uuid`;
            if (t.status === "failed") return "failed";
            return t.status === "running" && t.locked_by === w.name ? "held" : null;
          },
          50,
        );
        if (state === "failed") {
          await w.stop();
          break;
        }
        await sleep(500); // the hanging model call is in flight
        w.kill("SIGKILL");
        kills++;
        await w.status;
      }
      await sleep(LEASE_SECONDS * 1000 + 1500); // a loop would claim it again by now
      const [p] =
        await sql`select status, attempts, max_attempts, jsonb_array_length(errors) as errs,
                                   error from public.ai_tasks where id = ${poison}::uuid`;

      const line = `tasks=${ids.length} workers=4 lease_s=${LEASE_SECONDS} ` +
        `killed_in_flight=${killedHeld.length} frozen_in_flight=${frozenHeld.length} ` +
        `frozen_s=${frozenSeconds.toFixed(1)} taken_over_after_lease_expiry=${expired} ` +
        `late_completes_by_frozen=${frozenCompleted} woken_tasks_dropped=${woken.length} ` +
        `(complete refused AQ001: ${refusedAq001}, lease check first: ` +
        `${woken.length - refusedAq001}) late_complete: ` +
        `${lateRefusal.refused_by} ${lateRefusal.code}, answers=${lateRow.answers} ` +
        `completed=${f.byStatus.completed ?? 0} duplicates=${f.duplicates} ` +
        `lost=${ids.length - (f.byStatus.completed ?? 0)} poison: kills=${kills} ` +
        `status=${p.status} attempts=${p.attempts}/${p.max_attempts}`;
      say(line);

      checkEqual(f.byStatus.completed ?? 0, TASKS, "crash tasks completed");
      checkEqual(takeoverAttempt, 2, "the takeover's attempt");
      checkEqual(
        [lateRefusal.refused_by, lateRefusal.code],
        ["complete_ai_task", "AQ001"],
        "the late complete, as crash-late logs it",
      );
      checkEqual(
        [lateRow.status, lateRow.attempts, lateRow.answers, lateRow.answer],
        ["completed", 2, 1, "answered by the takeover"],
        "the late task: the takeover's answer, once",
      );
      checkEqual(f.duplicates + f.missingAnswers, 0, "tasks without exactly one answer");
      checkEqual(
        expired,
        killedHeld.length + frozenHeld.length,
        "taken-over tasks whose lease expired first",
      );
      checkEqual(frozenCompleted, 0, "completions the frozen worker claims for taken-over tasks");
      checkEqual(
        [p.status, p.attempts, p.errs],
        ["failed", 3, 3],
        "the poison task: status, attempts, errors",
      );
      checkEqual(kills, 3, "workers killed by the poison task");
      check(/lease of attempt 3 expired/.test(p.error), `poison error says why: ${p.error}`);
      return { figures: line };
    } finally {
      for (const w of workers) w.kill("SIGCONT");
      await Promise.all(workers.map((w) => w.stop()));
      await fake.stop();
    }
  },
};
