// Load: 16 real workers drain 20,000 tasks that an inserter adds in bulk
// batches across 200 projects while they run. Every task must end completed
// exactly once with exactly one assistant message, and nothing may be left.

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
  startWorker,
  waitFor,
} from "./lib.ts";

const WORKERS = 16;
const TASKS = 20_000;
const PROJECTS = 200;
const BATCH = 500;

/** The resident memory of the processes together, in MiB, as ps reports it. */
async function rssMiB(pids: number[]): Promise<number> {
  const out = await new Deno.Command("ps", {
    args: ["-o", "rss=", "-p", pids.join(",")],
    stdout: "piped",
    stderr: "null",
  }).output();
  const kb = new TextDecoder().decode(out.stdout).split(/\s+/).filter(Boolean)
    .reduce((n, v) => n + Number(v), 0);
  return Math.round(kb / 1024);
}

export const scenario: Scenario = {
  name: "load",
  async run(sql) {
    await resetQueue(sql);
    const projects = await makeProjects(sql, PROJECTS);
    const [{ max }] = await sql`select current_setting('max_connections')::int as max`;
    // Each worker: a pool of 4 plus its LISTEN connection.
    check(WORKERS * 5 + 20 < max, `max_connections ${max} leaves room for ${WORKERS} workers`);

    const workers: Proc[] = [];
    for (let i = 0; i < WORKERS; i++) {
      workers.push(startWorker({
        name: `load-w${i + 1}`,
        env: {
          RUNNER_CONCURRENCY: "10",
          RUNNER_BATCH_SIZE: "10",
        },
      }));
    }
    try {
      await Promise.all(
        workers.map((w) =>
          w.waitForEvent(`${w.name} started`, 60_000, (e) => e.event === "worker_started")
        ),
      );

      let peakRss = 0;
      let peakConnections = 0;
      const connectionSampler = setInterval(async () => {
        const [{ n }] = await sql`select count(*)::int as n from pg_catalog.pg_stat_activity`
          .catch(() => [{ n: 0 }]);
        peakConnections = Math.max(peakConnections, n);
      }, 1000);
      const sampler = setInterval(async () => {
        peakRss = Math.max(peakRss, await rssMiB(workers.map((w) => w.pid)));
      }, 1000);
      const started = performance.now();
      const ids: string[] = [];
      for (let offset = 0; offset < TASKS; offset += BATCH) {
        ids.push(...await insertTasks(sql, projects, BATCH, { offset, text: "load" }));
        await sleep(50);
      }
      const insertSeconds = (performance.now() - started) / 1000;

      await waitFor("every task finished", 300_000, async () => {
        const [{ n }] = await sql`
          select count(*)::int as n from public.ai_tasks where status in ('queued', 'running')`;
        return n === 0;
      }, 250);
      const seconds = (performance.now() - started) / 1000;
      clearInterval(sampler);
      clearInterval(connectionSampler);

      const codes = await Promise.all(workers.map((w) => w.stop()));
      const f = await queueFigures(sql, ids);
      const [{ twice, lost }] = await sql`
        select
          (select count(*)::int from (
             select task_id from public.build_logs
             where metadata->>'event' = 'completed' and task_id = any (${ids}::uuid[])
             group by task_id having count(*) > 1) x) as twice,
          (select count(*)::int from unnest(${ids}::uuid[]) i (id)
           where not exists (select 1 from public.ai_tasks t
                             where t.id = i.id and t.status = 'completed')) as lost`;
      const summaries = workers.map((w) => w.events().find((e) => e.event === "summary"));
      const byWorkers = summaries.reduce((n, s) => n + Number(s?.completed ?? 0), 0);
      const busy = summaries.filter((s) => Number(s?.completed ?? 0) > 0).length;
      const duplicates = f.duplicates + twice + Math.max(0, byWorkers - TASKS);
      const line = `tasks=${ids.length} workers=${WORKERS} (${busy} did work) ` +
        `seconds=${seconds.toFixed(1)} (inserts ${insertSeconds.toFixed(1)}) ` +
        `tasks/s=${(TASKS / seconds).toFixed(0)} completed=${f.byStatus.completed ?? 0} ` +
        `completed_by_workers=${byWorkers} duplicates=${duplicates} lost=${lost} ` +
        `unfinished=${f.unfinished} peak_rss_16_workers=${peakRss}MiB ` +
        `cluster_connections_peak=${peakConnections}/${max}`;
      say(line);

      checkEqual(ids.length, TASKS, "tasks inserted");
      checkEqual(f.byStatus.completed ?? 0, TASKS, "tasks completed");
      checkEqual(f.missingAnswers, 0, "completed tasks without exactly one assistant message");
      checkEqual(duplicates, 0, "tasks completed more than once");
      checkEqual(lost, 0, "tasks not completed");
      checkEqual(byWorkers, TASKS, "completions the workers report");
      checkEqual(codes.map((c) => c.code), workers.map(() => 0), "worker exit codes");
      check(peakRss > 0, "the workers' memory was measured");
      return { figures: line };
    } finally {
      await Promise.all(workers.map((w) => w.stop()));
    }
  },
};
