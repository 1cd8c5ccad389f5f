// Database restart: PostgreSQL is restarted (fast shutdown, so every
// connection is cut) while six workers process tasks. They must reconnect by
// themselves, lose and duplicate nothing, and say in their log what happened.
// The cluster is shared with whoever else uses it: the downtime is kept to
// one fast stop and start, a few seconds.

import {
  capture,
  check,
  checkEqual,
  insertTasks,
  makeProjects,
  type Proc,
  queueFigures,
  resetQueue,
  ROOT,
  say,
  type Scenario,
  sleep,
  startWorker,
  waitFor,
} from "./lib.ts";

const WORKERS = 6;
const TASKS = 3000;
const LEASE_SECONDS = 15;

async function restartCluster(): Promise<void> {
  const env = { ...Deno.env.toObject() };
  // db.sh leaves the cluster alone when DATABASE_URL names another database.
  delete env.DATABASE_URL;
  const out = await new Deno.Command("bash", {
    args: [`${ROOT}/scripts/db.sh`, "restart"],
    env,
    clearEnv: true,
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  capture("db_restart.out", text);
  check(out.success, `scripts/db.sh restart succeeds: ${text.trim()}`);
}

export const scenario: Scenario = {
  name: "db_restart",
  async run(sql) {
    await resetQueue(sql);
    const projects = await makeProjects(sql, 50);
    const workers: Proc[] = [];
    for (let i = 0; i < WORKERS; i++) {
      workers.push(startWorker({
        name: `restart-w${i + 1}`,
        env: {
          RUNNER_OFFLINE_DELAY_MS: "200",
          RUNNER_CONCURRENCY: "8",
          RUNNER_BATCH_SIZE: "8",
          // A claim whose answer the restart cuts off has still committed: the
          // worker never learns of its tasks, and they wait out their lease.
          RUNNER_LEASE_SECONDS: String(LEASE_SECONDS),
        },
      }));
    }
    try {
      await Promise.all(
        workers.map((w) =>
          w.waitForEvent(`${w.name} started`, 60_000, (e) => e.event === "worker_started")
        ),
      );
      const ids = await insertTasks(sql, projects, TASKS, { text: "restart" });
      const started = performance.now();
      await waitFor("a quarter of the tasks done", 120_000, async () => {
        const [{ n }] = await sql`
          select count(*)::int as n from public.ai_tasks where status = 'completed'`;
        return n >= TASKS / 4;
      }, 100);
      const [{ before }] = await sql`
        select count(*)::int as before from public.ai_tasks where status = 'completed'`;

      const down = performance.now();
      await restartCluster();
      await waitFor("the database answers again", 60_000, async () => {
        try {
          await sql`select 1`;
          return true;
        } catch {
          return false;
        }
      }, 100);
      const downtime = (performance.now() - down) / 1000;

      await waitFor(
        "every task finished after the restart",
        180_000,
        async () => (await queueFigures(sql, ids)).unfinished === 0,
        250,
      );
      const seconds = (performance.now() - started) / 1000;
      await sleep(200);
      const codes = await Promise.all(workers.map((w) => w.stop()));
      const f = await queueFigures(sql, ids);

      const saw = (event: string) =>
        workers.filter((w) => w.events().some((e) => e.event === event)).length;
      const count = (event: string) =>
        workers.reduce((n, w) => n + w.events().filter((e) => e.event === event).length, 0);
      const noticed = workers.filter((w) =>
        w.events().some((e) =>
          ["db_unavailable", "db_retry", "listen_lost"].includes(String(e.event))
        )
      ).length;
      const [{ twice, expired, spent }] = await sql`
        select
          (select count(*)::int from (
             select task_id from public.build_logs
             where metadata->>'event' = 'completed' and task_id = any (${ids}::uuid[])
             group by task_id having count(*) > 1) x) as twice,
          (select count(distinct task_id)::int from public.build_logs
           where metadata->>'event' = 'lease_expired' and task_id = any (${ids}::uuid[]))
            as expired,
          (select count(*)::int from public.ai_tasks t
           where t.id = any (${ids}::uuid[]) and exists (
             select 1 from jsonb_array_elements(t.errors) e
             where e->>'error' <> 'lease expired')) as spent`;
      const lost = TASKS - (f.byStatus.completed ?? 0);
      const line = `tasks=${TASKS} workers=${WORKERS} completed_before_restart=${before} ` +
        `downtime_s=${downtime.toFixed(1)} seconds=${seconds.toFixed(1)} ` +
        `completed=${f.byStatus.completed ?? 0} duplicates=${f.duplicates + twice} lost=${lost} ` +
        `write_retries=${count("db_retry")} attempts_failed_by_restart=${spent} ` +
        `unrecorded=${count("unrecorded")} ` +
        `recovered_by_lease_expiry=${expired} workers_logging: ` +
        `outage=${noticed} db_unavailable=${saw("db_unavailable")} ` +
        `db_reconnected=${saw("db_reconnected")} listen_lost=${saw("listen_lost")} ` +
        `listen_restored=${saw("listen_restored")}`;
      say(line);

      check(before < TASKS, "the restart came while tasks were still queued");
      checkEqual(f.byStatus.completed ?? 0, TASKS, "tasks completed");
      checkEqual(f.duplicates + twice + f.missingAnswers, 0, "tasks without exactly one answer");
      checkEqual(noticed, WORKERS, "workers that logged the outage");
      checkEqual(saw("listen_restored"), WORKERS, "workers that logged listen_restored");
      checkEqual(spent, 0, "tasks with an attempt failed by the restart (writes are retried)");
      checkEqual(count("unrecorded"), 0, "outcomes given up on (left to the lease)");
      checkEqual(
        codes.map((c) =>
          c.code
        ),
        workers.map(() => 0),
        "worker exit codes",
      );
      return { figures: line };
    } finally {
      await Promise.all(workers.map((w) => w.stop()));
    }
  },
};
