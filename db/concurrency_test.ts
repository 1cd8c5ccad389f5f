// Many workers on one queue at once, each on its own database connection: the
// claim's FOR UPDATE SKIP LOCKED, the fencing tokens and the retry path are
// proven here with sessions that really interleave, which one pgTAP session
// cannot do. Runs against DATABASE_URL (`make test-concurrency` points it at
// the scratch database ai_tasks_test). Everything it creates lives under one
// user of its own and is deleted at the end, so reruns start clean.
//
//   deno task test:concurrency

import { assert, assertEquals, connect as connectAs, type Sql } from "./test_support.ts";

const CONNECTIONS = 8;
const PROJECTS = 6;
const TASKS = 6000;
const BATCH_SIZE = 5;
const LEASE_SECONDS = 60;
// A bound on the whole run, so a queue that stops handing out tasks fails the
// test instead of hanging it.
const DEADLINE_MS = 240_000;

const connect = (): Sql => connectAs("concurrency_test");

/** A user of this run with `count` projects of its own, without running caps. */
async function createFixture(admin: Sql, count: number, label: string) {
  const userId = crypto.randomUUID();
  await admin`insert into auth.users (id, email)
              values (${userId}::uuid, ${`${label}-${userId}@concurrency.test`})`;
  const rows = await admin`
    insert into public.projects (owner_id, name, max_running_tasks)
    select ${userId}::uuid, ${label} || ' ' || n, 1000 from generate_series(1, ${count}::int) n
    returning id`;
  const projectIds = rows.map((r) => r.id as string);
  return {
    userId,
    projectIds,
    async drop() {
      // Tasks, messages and logs go with their projects (on delete cascade).
      await admin`delete from public.projects where owner_id = ${userId}::uuid`;
      await admin`delete from auth.users where id = ${userId}::uuid`;
    },
  };
}

interface WorkerFigures {
  workerId: string;
  claims: number;
  failures: number;
  completions: number;
  projects: Set<string>;
  messageIds: string[];
  /** Whether the worker claimed from all projects at once to the end. */
  unfiltered: boolean;
}

/**
 * One worker: claims small batches, fails the attempts a task's payload asks
 * to fail (retryable, due again at once) and completes the rest, until none of
 * the run's tasks is left unfinished. Even-numbered workers claim from every
 * project at once (the fair, round-robin path a plain worker takes); the
 * others cycle through the projects with project-filtered claims, each from a
 * different one. An unfiltered worker that is handed a task of someone else's
 * (a database shared with other work) gives it back and filters from then on.
 */
async function work(sql: Sql, index: number, projectIds: string[], start: Promise<void>) {
  const figures: WorkerFigures = {
    workerId: `concurrency-worker-${index}`,
    claims: 0,
    failures: 0,
    completions: 0,
    projects: new Set(),
    messageIds: [],
    unfiltered: index % 2 === 0,
  };
  const deadline = Date.now() + DEADLINE_MS;
  await start;

  const ours = new Set(projectIds);
  let turn = index;
  let emptyClaims = 0;
  while (true) {
    if (Date.now() > deadline) throw new Error(`${figures.workerId}: deadline passed`);
    const projectId = figures.unfiltered ? null : projectIds[turn++ % projectIds.length];
    const handed = await sql`
      select id, project_id, attempt, payload
      from public.claim_ai_task(${figures.workerId}, ${projectId}::uuid,
                                ${BATCH_SIZE}::int, ${LEASE_SECONDS}::int)`;
    const claimed = handed.filter((task) => ours.has(task.project_id));
    for (const task of handed.filter((task) => !ours.has(task.project_id))) {
      await sql`select public.release_ai_task(${task.id}::uuid, ${task.attempt}::int)`;
      figures.unfiltered = false;
    }

    if (claimed.length === 0) {
      emptyClaims++;
      if (projectId !== null && emptyClaims < projectIds.length) continue;
      // A whole round found nothing: done, unless others still hold tasks.
      const [{ open }] = await sql`
        select count(*)::int as open from public.ai_tasks
        where project_id = any(${sql.array(projectIds)}::uuid[]) and status <> 'completed'`;
      if (open === 0) return figures;
      emptyClaims = 0;
      await new Promise((resolve) => setTimeout(resolve, 2));
      continue;
    }

    emptyClaims = 0;
    figures.claims += claimed.length;
    for (const task of claimed) {
      figures.projects.add(task.project_id);
      if (task.attempt <= task.payload.fail_attempts) {
        const [{ status }] = await sql`
          select public.fail_ai_task(${task.id}::uuid, ${task.attempt}::int,
                                     'simulated provider outage', true, 0) as status`;
        assertEquals(status, "queued", `status after failing attempt ${task.attempt}`);
        figures.failures++;
      } else {
        const [{ message_id }] = await sql`
          select public.complete_ai_task(${task.id}::uuid, ${task.attempt}::int,
                                         ${`answer ${task.payload.n}`}) as message_id`;
        figures.messageIds.push(message_id);
        figures.completions++;
      }
    }
  }
}

Deno.test({
  name: "8 connections claim, fail, retry and complete 6000 tasks exactly once",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const admin = connect();
    const workers = Array.from({ length: CONNECTIONS }, connect);
    const fixture = await createFixture(admin, PROJECTS, "concurrency");
    try {
      // One task in ten fails its first attempt, one in twenty-five its first
      // two; each is retried at once (Retry-After 0) by whichever worker
      // claims it next.
      const [{ retries }] = await admin`
        with inserted as (
          insert into public.ai_tasks (project_id, type, payload, max_attempts, priority)
          select (${admin.array(fixture.projectIds)}::uuid[])[1 + n % ${PROJECTS}::int],
                 'chat_reply',
                 jsonb_build_object('n', n, 'fail_attempts',
                   case when n % 25 = 0 then 2 when n % 10 = 0 then 1 else 0 end),
                 3, n % 3
          from generate_series(1, ${TASKS}::int) n
          returning payload
        )
        select sum((payload ->> 'fail_attempts')::int)::int as retries from inserted`;

      // Every connection is open before any starts, so they all begin at once.
      await Promise.all(workers.map((w) => w`select 1`));
      let go!: () => void;
      const start = new Promise<void>((resolve) => (go = resolve));
      const running = workers.map((w, i) => work(w, i, fixture.projectIds, start));
      const began = performance.now();
      go();
      const figures = await Promise.all(running);
      const seconds = (performance.now() - began) / 1000;

      const claims = figures.reduce((sum, f) => sum + f.claims, 0);
      const failures = figures.reduce((sum, f) => sum + f.failures, 0);
      const completions = figures.reduce((sum, f) => sum + f.completions, 0);
      console.log(
        `concurrency: ${TASKS} tasks, ${CONNECTIONS} connections, ${PROJECTS} projects, ` +
          `batch ${BATCH_SIZE}: ${claims} claims (${retries} retries) in ${
            seconds.toFixed(2)
          } s, ` +
          `${(TASKS / seconds).toFixed(0)} tasks/s`,
      );
      console.log(
        "concurrency: claims per connection " + figures.map((f) => f.claims).join(", ") +
          ` (${figures.filter((f) => f.unfiltered).length} claiming from all projects, ` +
          `the others project by project)`,
      );

      // Every task finished exactly once, by the attempt after its failures.
      const projects = admin.array(fixture.projectIds);
      const byStatus = await admin`
        select status, count(*)::int as tasks from public.ai_tasks
        where project_id = any(${projects}::uuid[]) group by status`;
      assertEquals(
        byStatus.map((r) => [r.status, r.tasks]),
        [["completed", TASKS]],
        "tasks by status (none queued, running, failed or lost)",
      );
      const [wrongAttempt] = await admin`
        select count(*)::int as tasks from public.ai_tasks
        where project_id = any(${projects}::uuid[])
          and attempts <> (payload ->> 'fail_attempts')::int + 1`;
      assertEquals(wrongAttempt.tasks, 0, "tasks completed by another attempt than planned");

      // Exactly one assistant message per task, holding that task's answer.
      const [messages] = await admin`
        select count(*)::int as messages, count(distinct m.task_id)::int as tasks,
               count(*) filter (where m.content <> 'answer ' || (t.payload ->> 'n'))::int
                 as wrong
        from public.chat_messages m join public.ai_tasks t on t.id = m.task_id
        where t.project_id = any(${projects}::uuid[]) and m.role = 'assistant'`;
      assertEquals(
        messages,
        { messages: TASKS, tasks: TASKS, wrong: 0 },
        "assistant messages (one per task, with its own answer)",
      );
      const returnedIds = new Set(figures.flatMap((f) => f.messageIds));
      assertEquals(returnedIds.size, TASKS, "distinct message ids returned by complete");

      // Claims: the workers' count and the tasks' attempts both equal tasks
      // plus retries.
      assertEquals(failures, retries, "failed attempts");
      assertEquals(completions, TASKS, "completions");
      assertEquals(claims, TASKS + retries, "claims (tasks plus retries)");
      const [server] = await admin`
        select (select sum(attempts)::int from public.ai_tasks
                where project_id = any(${projects}::uuid[])) as attempts,
               (select count(*)::int from public.build_logs
                where project_id = any(${projects}::uuid[])
                  and metadata ->> 'event' = 'completed') as completion_logs`;
      assertEquals(server, {
        attempts: TASKS + retries,
        completion_logs: TASKS,
      }, "attempts and logs in the database");

      // The workers really interleaved: all of them took part, across
      // projects, and the completion log switches between workers constantly.
      for (const f of figures) {
        assert(f.claims > 0, `${f.workerId} claimed nothing`);
        assert(f.projects.size >= 2, `${f.workerId} claimed from only ${f.projects.size} project`);
      }
      const [{ switches }] = await admin`
        select count(*) filter (where worker <> previous)::int as switches from (
          select metadata ->> 'worker' as worker,
                 lag(metadata ->> 'worker') over (order by id) as previous
          from public.build_logs
          where project_id = any(${projects}::uuid[]) and metadata ->> 'event' = 'completed'
        ) c`;
      console.log(`concurrency: the completion log switches worker ${switches} times`);
      assert(
        switches >= TASKS / BATCH_SIZE / 4,
        `claims hardly interleaved: only ${switches} switches between workers`,
      );
    } finally {
      await fixture.drop();
      await Promise.all([admin, ...workers].map((c) => c.end({ timeout: 5 })));
    }
  },
});

Deno.test({
  name: "two connections racing for one task: exactly one gets it",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const admin = connect();
    const a = connect();
    const b = connect();
    const rounds = 100;
    const fixture = await createFixture(admin, rounds, "race");
    try {
      const claim = (sql: Sql, worker: string, projectId: string) =>
        sql`select id, attempt from public.claim_ai_task(${worker}, ${projectId}::uuid)`;

      // Deterministic interleaving: A has claimed the task but not committed
      // when B claims. B must neither wait for A nor get the task.
      const first = fixture.projectIds[0];
      await admin`insert into public.ai_tasks (project_id, type)
                  values (${first}::uuid, 'chat_reply')`;
      let bDuringA = -1;
      const aGot = await a.begin(async (tx) => {
        const mine = await claim(tx as unknown as Sql, "racer-a", first);
        bDuringA = (await claim(b, "racer-b", first)).length;
        return mine.length;
      });
      assertEquals([aGot, bDuringA], [1, 0], "claims while A's claim was uncommitted [A, B]");
      assertEquals(
        (await claim(b, "racer-b", first)).length,
        0,
        "B's claim after A committed (the lease holds)",
      );

      // Free races: both claims sent at once, a fresh single task each round.
      const rest = fixture.projectIds.slice(1);
      await admin`
        insert into public.ai_tasks (project_id, type)
        select unnest(${admin.array(rest)}::uuid[]), 'chat_reply'`;
      await Promise.all([a`select 1`, b`select 1`]);
      let winsA = 0;
      let winsB = 0;
      for (const projectId of rest) {
        const [ra, rb] = await Promise.all([
          claim(a, "racer-a", projectId),
          claim(b, "racer-b", projectId),
        ]);
        assertEquals(ra.length + rb.length, 1, `tasks handed out in the race for ${projectId}`);
        if (ra.length) winsA++;
        else winsB++;
      }
      console.log(`race: ${rest.length} races for one task, A won ${winsA}, B won ${winsB}`);

      const [held] = await admin`
        select count(*)::int as running, count(distinct id)::int as tasks,
               max(attempts)::int as max_attempts
        from public.ai_tasks
        where project_id = any(${admin.array(fixture.projectIds)}::uuid[])
          and status = 'running'`;
      assertEquals(
        held,
        { running: rounds, tasks: rounds, max_attempts: 1 },
        "every task claimed once, on its first attempt",
      );
    } finally {
      await fixture.drop();
      await Promise.all([admin, a, b].map((c) => c.end({ timeout: 5 })));
    }
  },
});
