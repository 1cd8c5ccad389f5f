// complete_ai_tasks under concurrency: eight connections claim and complete
// the same tasks' answers at once, half of them in batches (complete_ai_tasks)
// and half one by one (complete_ai_task). Batches overlap on purpose: every
// worker also resends completions other workers already sent (a retried call
// whose answer was lost), and some leases are expired under their holder so
// that a later attempt takes the task over while the first attempt's stale
// answer is still to be sent. Exactly one answer per task must survive, the
// one of the attempt that holds the task, and no batch may deadlock another.
// Runs against DATABASE_URL; everything it creates is deleted at the end.
//
//   deno test --allow-net --allow-env db/complete_batch_test.ts

import type postgres from "postgres";
import { assert, assertEquals, connect as connectAs, type Sql } from "./test_support.ts";

const CONNECTIONS = 8;
const PROJECTS = 4;
const TASKS = 2000;
const BATCH_SIZE = 20;
// A bound on the whole run, so a deadlock or a lost task fails the test
// instead of hanging it.
const DEADLINE_MS = 240_000;

const connect = (): Sql => connectAs("complete_batch_test");

interface Entry {
  task_id: string;
  attempt: number;
  content: string;
}

/** Every answer any call returned for a task, and how it was written. */
interface Seen {
  messageIds: Set<string>;
  /** complete_ai_tasks rows with outcome 'completed' (a write). */
  batchWrites: number;
}

interface Shared {
  /** Completions sent (or being sent), for other workers to send again. */
  sent: Entry[];
  seen: Map<string, Seen>;
  outcomes: Record<string, number>;
  projectIds: string[];
}

function note(shared: Shared, taskId: string, messageId: string | null, wrote: boolean) {
  let seen = shared.seen.get(taskId);
  if (!seen) shared.seen.set(taskId, seen = { messageIds: new Set(), batchWrites: 0 });
  if (messageId) seen.messageIds.add(messageId);
  if (wrote) seen.batchWrites++;
}

/**
 * One worker. Claims a batch; a task whose payload says so has its lease
 * expired under it and its answer held back until the next round (by then
 * another worker may have taken it over). Then completes: the batch, the held
 * back answers and three answers other workers already sent, in one
 * complete_ai_tasks call (even workers) or one complete_ai_task call each
 * (odd workers).
 */
async function work(sql: Sql, index: number, shared: Shared, start: Promise<void>) {
  const workerId = `batch-worker-${index}`;
  const batched = index % 2 === 0;
  const deadline = Date.now() + DEADLINE_MS;
  let heldBack: Entry[] = [];
  let calls = 0;
  await start;

  while (true) {
    if (Date.now() > deadline) throw new Error(`${workerId}: deadline passed`);
    const claimed = await sql`
      select id, project_id, attempt, payload
      from public.claim_ai_task(${workerId}, null, ${BATCH_SIZE}::int, 60)`;
    const ours = new Set(shared.projectIds);
    for (const task of claimed.filter((t) => !ours.has(t.project_id))) {
      await sql`select public.release_ai_task(${task.id}::uuid, ${task.attempt}::int)`;
    }

    const now: Entry[] = [];
    const later: Entry[] = [];
    for (const task of claimed.filter((t) => ours.has(t.project_id))) {
      const entry = {
        task_id: task.id,
        attempt: task.attempt,
        content: `answer ${task.payload.n} by attempt ${task.attempt}`,
      };
      if (task.attempt === 1 && task.payload.n % 10 === 0) {
        // The worker stalls: its lease runs out while it still works.
        await sql`update public.ai_tasks set locked_until = now() - interval '1 second'
                  where id = ${task.id}::uuid and attempts = 1`;
        later.push(entry);
      } else {
        now.push(entry);
      }
    }
    // Answers sent a moment ago, some maybe still on their way in another
    // worker's call: the overlaps that need the locks.
    const recent = shared.sent.slice(-60);
    const resent = Array.from(
      { length: Math.min(3, recent.length) },
      () => recent[Math.floor(Math.random() * recent.length)],
    );
    const send = [...now, ...heldBack];
    for (const entry of resent) {
      if (!send.some((e) => e.task_id === entry.task_id)) send.push(entry);
    }
    heldBack = later;

    if (send.length > 0) {
      shared.sent.push(...send);
      calls++;
      if (batched) {
        const rows = await sql`
          select task_id, message_id, outcome, status, attempt
          from public.complete_ai_tasks(${sql.json(send as unknown as postgres.JSONValue)}::jsonb)`;
        assertEquals(rows.length, send.length, `${workerId}: one row per entry`);
        for (const [i, row] of rows.entries()) {
          assertEquals(row.task_id, send[i].task_id, `${workerId}: rows in the order given`);
          shared.outcomes[row.outcome] = (shared.outcomes[row.outcome] ?? 0) + 1;
          assert(row.outcome !== "not_found", `${workerId}: task ${row.task_id} not found`);
          note(shared, row.task_id, row.message_id, row.outcome === "completed");
        }
      } else {
        for (const entry of send) {
          try {
            const [{ id }] = await sql`
              select public.complete_ai_task(${entry.task_id}::uuid, ${entry.attempt}::int,
                                             ${entry.content}) as id`;
            shared.outcomes.single = (shared.outcomes.single ?? 0) + 1;
            note(shared, entry.task_id, id, false);
          } catch (error) {
            if ((error as { code?: string }).code !== "AQ001") throw error;
            shared.outcomes.single_not_held = (shared.outcomes.single_not_held ?? 0) + 1;
          }
        }
      }
    }

    if (claimed.length === 0 && heldBack.length === 0) {
      const [{ open }] = await sql`
        select count(*)::int as open from public.ai_tasks
        where project_id = any(${sql.array(shared.projectIds)}::uuid[])
          and status <> 'completed'`;
      if (open === 0) return { workerId, calls };
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }
}

Deno.test({
  name: "8 connections completing overlapping batches write each task's answer exactly once",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const admin = connect();
    const workers = Array.from({ length: CONNECTIONS }, connect);
    const userId = crypto.randomUUID();
    await admin`insert into auth.users (id, email)
                values (${userId}::uuid, ${`batch-${userId}@concurrency.test`})`;
    const projectIds = (await admin`
      insert into public.projects (owner_id, name, max_running_tasks)
      select ${userId}::uuid, 'batch ' || n, 1000 from generate_series(1, ${PROJECTS}::int) n
      returning id`).map((r) => r.id as string);
    const projects = admin.array(projectIds);
    try {
      await admin`
        insert into public.ai_tasks (project_id, type, payload)
        select (${projects}::uuid[])[1 + n % ${PROJECTS}::int], 'chat_reply',
               jsonb_build_object('n', n)
        from generate_series(1, ${TASKS}::int) n`;

      const shared: Shared = { sent: [], seen: new Map(), outcomes: {}, projectIds };
      await Promise.all(workers.map((w) => w`select 1`));
      let go!: () => void;
      const start = new Promise<void>((resolve) => (go = resolve));
      const running = workers.map((w, i) => work(w, i, shared, start));
      const began = performance.now();
      go();
      const figures = await Promise.all(running);
      const seconds = (performance.now() - began) / 1000;
      console.log(
        `complete batches: ${TASKS} tasks, ${CONNECTIONS} connections in ${
          seconds.toFixed(1)
        } s; ` +
          `outcomes ${JSON.stringify(shared.outcomes)}; calls per worker ` +
          figures.map((f) => f.calls).join(", "),
      );

      // Every task completed, each by the attempt that held it last, with
      // exactly one assistant message and one completion log.
      const [tasks] = await admin`
        select count(*)::int as tasks,
               count(*) filter (where t.status = 'completed')::int as completed,
               count(*) filter (where t.attempts > 1)::int as taken_over
        from public.ai_tasks t where t.project_id = any(${projects}::uuid[])`;
      assertEquals([tasks.tasks, tasks.completed], [TASKS, TASKS], "tasks completed");
      const [messages] = await admin`
        select count(*)::int as messages, count(distinct m.task_id)::int as tasks,
               count(*) filter (where m.content <> format('answer %s by attempt %s',
                                                          t.payload ->> 'n', t.attempts))::int
                 as not_the_holders,
               count(*) filter (where m.streaming)::int as streaming
        from public.chat_messages m join public.ai_tasks t on t.id = m.task_id
        where t.project_id = any(${projects}::uuid[]) and m.role = 'assistant'`;
      assertEquals(
        messages,
        { messages: TASKS, tasks: TASKS, not_the_holders: 0, streaming: 0 },
        "one final assistant message per task, the answer of the attempt that holds it",
      );
      const [logs] = await admin`
        select count(*)::int as logs, count(distinct task_id)::int as tasks
        from public.build_logs
        where project_id = any(${projects}::uuid[]) and metadata ->> 'event' = 'completed'`;
      assertEquals(logs, { logs: TASKS, tasks: TASKS }, "one completion log per task");

      // What the calls said agrees with what was written.
      const finalIds = new Map((await admin`
        select m.task_id, m.id from public.chat_messages m
        join public.ai_tasks t on t.id = m.task_id
        where t.project_id = any(${projects}::uuid[]) and m.role = 'assistant'`)
        .map((r) => [r.task_id as string, r.id as string]));
      for (const [taskId, seen] of shared.seen) {
        assert(seen.batchWrites <= 1, `task ${taskId} written by ${seen.batchWrites} batches`);
        for (const id of seen.messageIds) {
          assertEquals(id, finalIds.get(taskId), `message id returned for task ${taskId}`);
        }
      }

      // The overlaps really happened.
      console.log(`complete batches: ${tasks.taken_over} tasks taken over after a stall`);
      assert(tasks.taken_over > 0, "no lease was taken over: the stale answers tested nothing");
      assert((shared.outcomes.already_completed ?? 0) > 0, "no batch repeated a completion");
      assert((shared.outcomes.not_held ?? 0) > 0, "no batch carried a stale attempt");
      assert(
        (shared.outcomes.completed ?? 0) > 0 && (shared.outcomes.single ?? 0) > 0,
        "both batches and single calls wrote answers",
      );
    } finally {
      await admin`delete from public.projects where owner_id = ${userId}::uuid`;
      await admin`delete from auth.users where id = ${userId}::uuid`;
      await Promise.all([admin, ...workers].map((c) => c.end({ timeout: 5 })));
    }
  },
});
