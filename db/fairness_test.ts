// Fairness and rate limits with sessions that really interleave: one project's
// burst against five small projects, running caps and model limits under
// concurrent claims, a provider answering 429 with Retry-After, and racing
// enqueues with one idempotency key. Runs against DATABASE_URL
// (`make test-fairness` points it at the scratch database ai_tasks_test).
// Everything it creates lives under one user of its own and is deleted at the
// end; its tasks use model names of their own, so a pause another test left
// on the default model does not touch them.
//
//   deno task test:fairness
//   FAIRNESS_RETRY_AFTER=3 deno task test:fairness   # a shorter 429 wait

import { assert, assertEquals, connect as connectAs, sleep, type Sql } from "./test_support.ts";

const IN_FLIGHT = 8;
const BURST = 5000;
const SMALL_PROJECTS = 5;
const SMALL_TASKS = 10;
const MODEL_CALL_MS = 15;
const RETRY_AFTER_SECONDS = Number(Deno.env.get("FAIRNESS_RETRY_AFTER") ?? "10");
// A bound on each scenario, so a queue that stops handing out tasks fails the
// test instead of hanging it.
const DEADLINE_MS = 120_000;

const connect = (): Sql => connectAs("fairness_test");

/** A user of this run with the named projects, each with the running cap given (null: default). */
async function createFixture(admin: Sql, label: string, caps: (number | null)[]) {
  const userId = crypto.randomUUID();
  await admin`insert into auth.users (id, email)
              values (${userId}::uuid, ${`${label}-${userId}@fairness.test`})`;
  const projectIds: string[] = [];
  for (const [i, cap] of caps.entries()) {
    const [row] = await admin`
      insert into public.projects (owner_id, name, max_running_tasks)
      values (${userId}::uuid, ${`${label} ${i}`}, ${cap}::int) returning id`;
    projectIds.push(row.id as string);
  }
  return {
    userId,
    projectIds,
    async drop(models: string[] = []) {
      // Tasks, messages and logs go with their projects (on delete cascade).
      await admin`delete from public.projects where owner_id = ${userId}::uuid`;
      await admin`delete from auth.users where id = ${userId}::uuid`;
      if (models.length) {
        await admin`delete from public.ai_model_limits where model = any(${admin.array(models)})`;
      }
    },
  };
}

/**
 * The unfiltered claims below would also take tasks other tests left queued,
 * and those would muddle the order this test asserts: refuse to run then.
 */
async function assertQueueEmptyBesides(admin: Sql, projectIds: string[]) {
  const [{ others }] = await admin`
    select count(*)::int as others from public.ai_tasks
    where status = 'queued' and run_at <= now() + interval '1 minute'
      and project_id <> all(${admin.array(projectIds)}::uuid[])`;
  assert(
    others === 0,
    `${others} queued tasks of other projects are in this database; the fairness test ` +
      "claims without a project filter, so run it on a scratch database (make test-fairness)",
  );
}

Deno.test({
  name: "a burst of 5000 tasks does not hold back five small projects, within the running caps",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const admin = connect();
    const workers = Array.from({ length: IN_FLIGHT }, connect);
    const [{ cap }] = await admin`
      select default_max_running_tasks as cap from public.ai_queue_settings`;
    // The default cap is what is under test; only a default that lets one
    // project fill every slot would make the scenario meaningless.
    const burstCap = cap < IN_FLIGHT ? null : 4;
    const fixture = await createFixture(admin, "fairness", [
      burstCap,
      ...Array(SMALL_PROJECTS).fill(null),
    ]);
    const [burst, ...small] = fixture.projectIds;
    const model = "fairness-test/burst";
    let stop = false;
    try {
      await assertQueueEmptyBesides(admin, fixture.projectIds);

      // The burst first, so every one of its tasks is older than any small one.
      await admin`
        insert into public.ai_tasks (project_id, type, model, payload, run_at, created_at)
        select ${burst}::uuid, 'chat_reply', ${model}, jsonb_build_object('n', n),
               now() - interval '1 hour' + n * interval '1 ms',
               now() - interval '1 hour' + n * interval '1 ms'
        from generate_series(1, ${BURST}::int) n`;
      for (const [p, projectId] of small.entries()) {
        for (let n = 1; n <= SMALL_TASKS; n++) {
          await admin`select public.enqueue_ai_task(${projectId}::uuid, 'chat_reply',
                        ${admin.json({ n })}, model => ${model},
                        idempotency_key => ${`small-${p}-${n}`})`;
        }
      }

      // Workers: each keeps one task in flight (claim, a short "model call",
      // complete), so the eight together keep eight in flight. A sampler
      // watches the running counts per project while they work.
      const order: { project: number; n: number }[] = [];
      const projectIndex = new Map(fixture.projectIds.map((id, i) => [id, i]));
      const deadline = Date.now() + DEADLINE_MS;
      const maxRunning = new Map<number, number>();
      const sampler = (async () => {
        while (!stop) {
          const rows = await admin`
            select project_id, count(*)::int as running from public.ai_tasks
            where status = 'running' and project_id = any(${
            admin.array(fixture.projectIds)
          }::uuid[])
            group by project_id`;
          for (const r of rows) {
            const i = projectIndex.get(r.project_id)!;
            maxRunning.set(i, Math.max(maxRunning.get(i) ?? 0, r.running));
          }
          await sleep(5);
        }
      })();
      const smallDone = () => order.filter((o) => o.project > 0).length;
      const burstDone = () => order.filter((o) => o.project === 0).length;

      await Promise.all(workers.map((w) => w`select 1`));
      const began = performance.now();
      await Promise.all(workers.map(async (sql, i) => {
        while (smallDone() < SMALL_PROJECTS * SMALL_TASKS || burstDone() < 50) {
          if (Date.now() > deadline) throw new Error(`worker ${i}: deadline passed`);
          const [task] = await sql`
            select id, project_id, attempt, payload
            from public.claim_ai_task(${`fairness-worker-${i}`}, batch_size => 1)`;
          if (!task) {
            await sleep(5);
            continue;
          }
          await sleep(MODEL_CALL_MS);
          await sql`select public.complete_ai_task(${task.id}::uuid, ${task.attempt}::int,
                                                   'done')`;
          order.push({ project: projectIndex.get(task.project_id)!, n: task.payload.n });
        }
      }));
      const seconds = (performance.now() - began) / 1000;
      stop = true;
      await sampler;

      // The summary: where each project's first task and the burst's 50th
      // finished in the completion order.
      const position = (pred: (o: { project: number; n: number }) => boolean, nth = 1) => {
        let seen = 0;
        for (const [i, o] of order.entries()) if (pred(o) && ++seen === nth) return i + 1;
        return Infinity;
      };
      const burst50 = position((o) => o.project === 0, 50);
      const firsts = small.map((_, p) => position((o) => o.project === p + 1));
      const lasts = small.map((_, p) => position((o) => o.project === p + 1, SMALL_TASKS));
      console.log(
        `fairness: ${BURST} burst tasks + ${SMALL_PROJECTS} x ${SMALL_TASKS}, ` +
          `${IN_FLIGHT} in flight, running cap ${burstCap ?? cap} (default ${cap}): ` +
          `${order.length} completions in ${seconds.toFixed(2)} s`,
      );
      console.log(
        `fairness: small projects' first tasks finished at positions ${firsts.join(", ")}; ` +
          `their last at ${lasts.join(", ")}; the burst's 50th at ${burst50}`,
      );
      console.log(
        "fairness: first 24 completions by project (0 = burst): " +
          order.slice(0, 24).map((o) => o.project).join(" "),
      );
      console.log(
        "fairness: most running at once per project (0 = burst): " +
          [...maxRunning.entries()].sort((a, b) => a[0] - b[0])
            .map(([p, n]) => `${p}:${n}`).join(" "),
      );

      for (const [p, at] of firsts.entries()) {
        assert(
          at < burst50,
          `small project ${
            p + 1
          }'s first task finished at ${at}, after the burst's 50th (${burst50})`,
        );
      }
      const limit = burstCap ?? cap;
      for (const [p, n] of maxRunning) {
        assert(n <= limit, `project ${p} ran ${n} tasks at once, over its cap of ${limit}`);
      }
      assert(
        (maxRunning.get(0) ?? 0) >= 2,
        "the burst never ran in parallel: the test proved nothing",
      );
    } finally {
      stop = true;
      await fixture.drop();
      await Promise.all([admin, ...workers].map((c) => c.end({ timeout: 5 })));
    }
  },
});

Deno.test({
  name: "concurrent batch claims never exceed a project's cap or a model's requests per minute",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const admin = connect();
    const workers = Array.from({ length: IN_FLIGHT }, connect);
    const fixture = await createFixture(admin, "fairness-caps", [3, ...Array(8).fill(1000)]);
    const [capped, ...open] = fixture.projectIds;
    const limited = `fairness-test/rpm-${crypto.randomUUID()}`;
    try {
      await assertQueueEmptyBesides(admin, fixture.projectIds);
      await admin`
        insert into public.ai_tasks (project_id, type, model)
        select ${capped}::uuid, 'chat_reply', 'fairness-test/free'
        from generate_series(1, 100)`;
      await Promise.all(workers.map((w) => w`select 1`));

      // Twenty rounds: all eight connections claim a batch of 10 at once.
      const handedOut: number[] = [];
      for (let round = 0; round < 20; round++) {
        const got = await Promise.all(
          workers.map((w, i) =>
            w`select id, attempt from public.claim_ai_task(${`caps-${i}`}, batch_size => 10)`
          ),
        );
        handedOut.push(got.reduce((sum, rows) => sum + rows.length, 0));
        for (const [i, rows] of got.entries()) {
          for (const t of rows) {
            await workers[
              i
            ]`select public.complete_ai_task(${t.id}::uuid, ${t.attempt}::int, 'ok')`;
          }
        }
      }
      console.log(
        `caps: 8 racing batch claims per round on a project capped at 3 took ` +
          handedOut.join(" "),
      );
      assert(
        handedOut.every((n) => n === 3),
        `a round handed out other than exactly the cap of 3: ${handedOut.join(" ")}`,
      );

      // A model allowed 5 requests a minute, with tasks in 8 projects: 8 racing
      // batches of 3 get 5 in all.
      await admin`delete from public.ai_tasks where project_id = ${capped}::uuid`;
      await admin`insert into public.ai_model_limits (model, requests_per_minute)
                  values (${limited}, 5)`;
      await admin`
        insert into public.ai_tasks (project_id, type, model)
        select p, 'chat_reply', ${limited}
        from unnest(${admin.array(open)}::uuid[]) p, generate_series(1, 5)`;
      // Far from a minute's end, so the race cannot straddle two windows.
      const [{ seconds }] = await admin`select extract(second from now())::int as seconds`;
      if (seconds > 55) await sleep((61 - seconds) * 1000);
      const got = await Promise.all(
        workers.map((w, i) =>
          w`select id from public.claim_ai_task(${`rpm-${i}`}, batch_size => 3)`
        ),
      );
      const total = got.reduce((sum, rows) => sum + rows.length, 0);
      console.log(
        `rpm: 8 racing batch claims of 3 on a model allowed 5 a minute took ` +
          got.map((r) => r.length).join(" ") + ` = ${total}`,
      );
      assertEquals(total, 5, "tasks of the limited model handed out in one minute");
    } finally {
      await fixture.drop([limited]);
      await Promise.all([admin, ...workers].map((c) => c.end({ timeout: 5 })));
    }
  },
});

Deno.test({
  name: "a provider's 429 with Retry-After snoozes tasks without spending attempts, then resumes",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const admin = connect();
    const workers = Array.from({ length: IN_FLIGHT }, connect);
    const fixture = await createFixture(admin, "fairness-429", Array(4).fill(1000));
    const projects = admin.array(fixture.projectIds);
    const model = `fairness-test/429-${crypto.randomUUID()}`;
    const TASKS = 20;
    try {
      await assertQueueEmptyBesides(admin, fixture.projectIds);
      await admin`
        insert into public.ai_tasks (project_id, type, model, max_attempts)
        select (${projects}::uuid[])[1 + n % 4], 'chat_reply', ${model}, 3
        from generate_series(1, ${TASKS}::int) n`;

      // The provider refuses every request for RETRY_AFTER_SECONDS from the
      // start, answering 429 with the seconds left as Retry-After.
      const began = performance.now();
      const refuseUntil = began + RETRY_AFTER_SECONDS * 1000;
      let refusals = 0;
      let served = 0;
      const provider = async (): Promise<{ status: 200 } | { status: 429; retryAfter: number }> => {
        await sleep(MODEL_CALL_MS);
        const now = performance.now();
        if (now < refuseUntil) {
          refusals++;
          return { status: 429, retryAfter: Math.ceil((refuseUntil - now) / 1000) };
        }
        served++;
        return { status: 200 };
      };

      const completedAt: number[] = [];
      const deadline = Date.now() + DEADLINE_MS;
      await Promise.all(workers.map((w) => w`select 1`));
      await Promise.all(workers.map(async (sql, i) => {
        while (completedAt.length < TASKS) {
          if (Date.now() > deadline) throw new Error(`worker ${i}: deadline passed`);
          const [task] = await sql`
            select id, attempt from public.claim_ai_task(${`429-worker-${i}`}, batch_size => 1)`;
          if (!task) {
            // Idle polling, as the runner does between wake-ups.
            await sleep(50);
            continue;
          }
          const answer = await provider();
          if (answer.status === 429) {
            const [{ status }] = await sql`
              select public.snooze_ai_task(${task.id}::uuid, ${task.attempt}::int,
                                           ${answer.retryAfter}::int, 'HTTP 429') as status`;
            assertEquals(status, "queued", "status after a snooze");
            continue;
          }
          await sql`select public.complete_ai_task(${task.id}::uuid, ${task.attempt}::int, 'ok')`;
          completedAt.push((performance.now() - began) / 1000);
        }
      }));

      const [tasks] = await admin`
        select count(*) filter (where status = 'completed')::int as completed,
               count(*) filter (where errors <> '[]'::jsonb)::int as with_errors,
               count(*) filter (where max_attempts - attempts <> 2)::int as attempts_spent,
               coalesce(sum(snoozes), 0)::int as snoozes, max(snoozes)::int as most_snoozes
        from public.ai_tasks where project_id = any(${projects}::uuid[])`;
      const first = Math.min(...completedAt);
      const last = Math.max(...completedAt);
      console.log(
        `429: Retry-After ${RETRY_AFTER_SECONDS} s, ${TASKS} tasks, ${IN_FLIGHT} workers: ` +
          `${refusals} refusals, ${tasks.snoozes} snoozes (at most ${tasks.most_snoozes} per task), ` +
          `first completion at ${first.toFixed(2)} s, last at ${last.toFixed(2)} s, ` +
          `${served} requests served`,
      );
      assertEquals(tasks.completed, TASKS, "tasks completed");
      assertEquals(tasks.with_errors, 0, "tasks with an error recorded");
      assertEquals(
        tasks.attempts_spent,
        0,
        "tasks that spent more than the one attempt that succeeded",
      );
      assertEquals(tasks.snoozes, refusals, "snoozes (one per refusal)");
      // Only the first wave, already in flight when the first 429 came back,
      // hits the refusing provider: the model's pause stops further claims.
      assert(
        refusals <= IN_FLIGHT,
        `${refusals} refusals: claims went on handing out the paused model`,
      );
      assert(first >= RETRY_AFTER_SECONDS, `a task completed at ${first} s, inside the wait`);
      assert(
        last < RETRY_AFTER_SECONDS + 5,
        `the queue took until ${last.toFixed(2)} s to drain after the wait`,
      );
    } finally {
      await fixture.drop([model]);
      await Promise.all([admin, ...workers].map((c) => c.end({ timeout: 5 })));
    }
  },
});

Deno.test({
  name: "racing enqueues with one idempotency key queue one task",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const admin = connect();
    const clients = Array.from({ length: IN_FLIGHT }, connect);
    const fixture = await createFixture(admin, "fairness-dedup", [1000]);
    const [project] = fixture.projectIds;
    const KEYS = 30;
    try {
      await Promise.all(clients.map((c) => c`select 1`));
      const distinct: number[] = [];
      for (let k = 0; k < KEYS; k++) {
        const ids = await Promise.all(
          clients.map((c) =>
            c`select public.enqueue_ai_task(${project}::uuid, message => ${`request ${k}`},
                                          idempotency_key => ${`key-${k}`}) as id`
          ),
        );
        distinct.push(new Set(ids.map(([r]) => r.id)).size);
      }
      const [rows] = await admin`
        select count(*)::int as tasks, count(distinct idempotency_key)::int as keys,
               (select count(*)::int from public.chat_messages
                where project_id = ${project}::uuid) as messages
        from public.ai_tasks where project_id = ${project}::uuid`;
      console.log(
        `dedup: ${KEYS} keys x ${IN_FLIGHT} racing enqueues -> ${rows.tasks} tasks, ` +
          `${rows.messages} user messages`,
      );
      assert(distinct.every((n) => n === 1), `some race returned several ids: ${distinct}`);
      assertEquals(
        rows,
        { tasks: KEYS, keys: KEYS, messages: KEYS },
        "tasks, keys and messages after the races",
      );
    } finally {
      await fixture.drop();
      await Promise.all([admin, ...clients].map((c) => c.end({ timeout: 5 })));
    }
  },
});
