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

      // ---- 3: the task that kills every worker.
      for (const w of [frozen, w3, w4]) await w.stop();
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
        `${woken.length - refusedAq001}) fencing_check=AQ001 ` +
        `completed=${f.byStatus.completed ?? 0} duplicates=${f.duplicates} ` +
        `lost=${ids.length - (f.byStatus.completed ?? 0)} poison: kills=${kills} ` +
        `status=${p.status} attempts=${p.attempts}/${p.max_attempts}`;
      say(line);

      checkEqual(f.byStatus.completed ?? 0, TASKS, "crash tasks completed");
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
