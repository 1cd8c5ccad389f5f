// Completions that arrive together go to the queue as one complete_ai_tasks
// call, yet each caller gets its own answer, exactly as from complete_ai_task.
// First the batcher alone, with a recording stand-in for the database; then
// against the real queue, once per database path; then a queue that lacks
// complete_ai_tasks.

import postgres from "postgres";
import { ConfigError, loadConfig } from "./config.ts";
import {
  type Completion,
  CompletionBatcher,
  type CompletionRow,
  createPostgresQueueDb,
  createSupabaseQueueDb,
  QueueDbError,
  type TaskRef,
} from "./db.ts";
import { signJwt, startPostgrestStandin } from "./testing/postgrest_standin.ts";
import {
  assert,
  assertEquals,
  DATABASE_URL,
  DB_PATHS,
  FAKE_SERVICE_KEY_SECRET,
  sleep,
  TestDb,
} from "./test_support.ts";

const entry = (id: string, attempt = 1): Completion => ({
  task: { id, attempt },
  content: `answer ${id}`,
  result: {},
  model: null,
});

/** A database stand-in: answers each batch by `judge`, and records every call. */
function recorder(judge: (e: Completion) => CompletionRow["outcome"] = () => "completed") {
  const calls = { batches: [] as string[][], singles: [] as string[], peakInFlight: 0 };
  let inFlight = 0;
  const sendBatch = async (entries: Completion[]) => {
    calls.batches.push(entries.map((e) => e.task.id));
    inFlight++;
    calls.peakInFlight = Math.max(calls.peakInFlight, inFlight);
    await sleep(5);
    inFlight--;
    return entries.map((e): CompletionRow => {
      const outcome = judge(e);
      const written = outcome === "completed" || outcome === "already_completed";
      return {
        task_id: e.task.id,
        message_id: written ? `message of ${e.task.id}` : null,
        outcome,
        status: outcome === "not_found" ? null : written ? "completed" : "cancelled",
        attempt: outcome === "not_found" ? null : e.task.attempt,
      };
    });
  };
  const sendOne = (e: Completion) => {
    calls.singles.push(e.task.id);
    return Promise.resolve(`single message of ${e.task.id}`);
  };
  return { calls, sendBatch, sendOne };
}

const ids = (n: number, prefix = "t") => Array.from({ length: n }, (_, i) => `${prefix}${i}`);

Deno.test("completions made together share one call, each resolving with its own id", async () => {
  const db = recorder();
  const batcher = new CompletionBatcher(db.sendBatch, db.sendOne, { max: 100, waitMs: 2 });
  const answers = await Promise.all(ids(50).map((id) => batcher.complete(entry(id))));

  assertEquals(answers, ids(50).map((id) => `message of ${id}`), "each caller's message id");
  assertEquals(db.calls.batches.length, 1, "fifty completions in one call");
  assertEquals(db.calls.singles, [], "no single calls");
});

Deno.test("a completion with nothing on its way is sent at once, not after waitMs", async () => {
  const db = recorder();
  // A wait of a minute: had the lone completion waited for the timer, it
  // would not have been sent by the check below.
  const batcher = new CompletionBatcher(db.sendBatch, db.sendOne, { max: 100, waitMs: 60_000 });
  const answer = batcher.complete(entry("alone"));
  await sleep(1);
  assertEquals(db.calls.batches, [["alone"]], "the lone completion is on its way");
  assertEquals(await answer, "message of alone", "and answered");
});

Deno.test("completions arriving while a batch is on its way go together when it returns", async () => {
  const db = recorder();
  const batcher = new CompletionBatcher(db.sendBatch, db.sendOne, { max: 100, waitMs: 60_000 });
  const first = batcher.complete(entry("first"));
  await sleep(1);
  const later = ids(20, "later").map((id) => batcher.complete(entry(id)));
  await Promise.all([first, ...later]);
  assertEquals(
    db.calls.batches,
    [["first"], ids(20, "later")],
    "the twenty that waited for the first call's answer went in one second call",
  );
});

Deno.test("no call carries more than max completions, nor more than two calls at once", async () => {
  const db = recorder();
  const batcher = new CompletionBatcher(db.sendBatch, db.sendOne, { max: 40, waitMs: 0 });
  await Promise.all(ids(250).map((id) => batcher.complete(entry(id))));
  assert(
    db.calls.batches.every((b) => b.length <= 40),
    `batch sizes ${db.calls.batches.map((b) => b.length)}`,
  );
  assertEquals(db.calls.batches.flat().sort(), ids(250).sort(), "every completion sent once");
  assert(db.calls.peakInFlight <= 2, `at most two calls at once, saw ${db.calls.peakInFlight}`);
});

Deno.test("one lost lease in a batch fails only that task, with AQ001 as complete_ai_task", async () => {
  const db = recorder((e) =>
    e.task.id === "t3" ? "not_held" : e.task.id === "t5" ? "not_found" : "completed"
  );
  const batcher = new CompletionBatcher(db.sendBatch, db.sendOne, { max: 100, waitMs: 2 });
  const settled = await Promise.allSettled(ids(8).map((id) => batcher.complete(entry(id, 2))));

  const lost = settled[3];
  assert(lost.status === "rejected", "the task whose lease was lost is refused");
  const error = lost.reason;
  assert(error instanceof QueueDbError && error.leaseLost, `a lease-lost error: ${error}`);
  assertEquals(
    [error.code, error.step, error.transient],
    ["AQ001", "complete_ai_task", false],
    "code, step and transience as complete_ai_task's refusal",
  );
  assertEquals(
    error.message,
    "complete_ai_task: task t3 is not held by attempt 2: it is cancelled at attempt 2",
    "the message names the task, the attempt and where the task is now",
  );
  const gone = settled[5];
  assert(
    gone.status === "rejected" && gone.reason instanceof QueueDbError &&
      gone.reason.code === "AQ002",
    "an unknown task is refused with AQ002",
  );
  assertEquals(
    settled.filter((s) => s.status === "fulfilled").map((s) =>
      (s as PromiseFulfilledResult<string>).value
    ),
    ["t0", "t1", "t2", "t4", "t6", "t7"].map((id) => `message of ${id}`),
    "the other six completed",
  );
});

Deno.test("the same task twice never goes in one call", async () => {
  const db = recorder();
  const batcher = new CompletionBatcher(db.sendBatch, db.sendOne, { max: 100, waitMs: 0 });
  await Promise.all([
    batcher.complete(entry("a")),
    batcher.complete(entry("b")),
    batcher.complete(entry("a")),
  ]);
  assert(
    db.calls.batches.every((b) => new Set(b).size === b.length),
    `no call repeats a task: ${JSON.stringify(db.calls.batches)}`,
  );
  assertEquals(db.calls.batches.flat().sort(), ["a", "a", "b"], "both completions of a were sent");
});

Deno.test("a batch refused as a whole is sent again entry by entry", async () => {
  const db = recorder();
  const refused = (entries: Completion[]) => {
    db.calls.batches.push(entries.map((e) => e.task.id));
    return Promise.reject(
      new QueueDbError(
        "complete_ai_tasks",
        "22023",
        "completions[2].content must be text of at most 200000 characters",
        false,
      ),
    );
  };
  const batcher = new CompletionBatcher(
    refused,
    (e) =>
      e.task.id === "t2"
        ? Promise.reject(new QueueDbError("complete_ai_task", "22023", "content too long", false))
        : db.sendOne(e),
    { max: 100, waitMs: 2 },
  );
  const settled = await Promise.allSettled(ids(4).map((id) => batcher.complete(entry(id))));
  assertEquals(
    settled.map((s) => s.status),
    ["fulfilled", "fulfilled", "rejected", "fulfilled"],
    "only the bad entry fails",
  );
  assertEquals(db.calls.singles.sort(), ["t0", "t1", "t3"], "the good ones were sent alone");
});

Deno.test("a batch that got no answer fails every entry as transient, for persist to repeat", async () => {
  const db = recorder();
  const cut = () =>
    Promise.reject(new QueueDbError("complete_ai_tasks", "CONNECTION_CLOSED", "closed", true));
  const batcher = new CompletionBatcher(cut, db.sendOne, { max: 100, waitMs: 2 });
  const settled = await Promise.allSettled(ids(3).map((id) => batcher.complete(entry(id))));
  assert(
    settled.every((s) =>
      s.status === "rejected" && s.reason instanceof QueueDbError &&
      s.reason.transient
    ),
    "every entry rejected with the transient error",
  );
  assertEquals(db.calls.singles, [], "nothing is resent behind persist's back");
});

Deno.test("without complete_ai_tasks every completion goes alone, from then on", async () => {
  const db = recorder();
  let batchCalls = 0;
  const missing = () => {
    batchCalls++;
    return Promise.reject(
      new QueueDbError(
        "complete_ai_tasks",
        "42883",
        "function public.complete_ai_tasks(jsonb) does not exist",
        false,
      ),
    );
  };
  const batcher = new CompletionBatcher(missing, db.sendOne, { max: 100, waitMs: 2 });
  const first = await Promise.all(ids(3).map((id) => batcher.complete(entry(id))));
  const later = await Promise.all(ids(3, "u").map((id) => batcher.complete(entry(id))));
  assertEquals(
    [...first, ...later],
    [...ids(3), ...ids(3, "u")].map((id) => `single message of ${id}`),
    "every completion answered by complete_ai_task",
  );
  assertEquals(batchCalls, 1, "complete_ai_tasks was tried once only");
});

Deno.test("max 1 turns batching off: each completion is complete_ai_task's", async () => {
  const db = recorder();
  const batcher = new CompletionBatcher(db.sendBatch, db.sendOne, { max: 1, waitMs: 2 });
  await Promise.all(ids(3).map((id) => batcher.complete(entry(id))));
  assertEquals([db.calls.batches.length, db.calls.singles.length], [0, 3], "three single calls");
});

Deno.test("the batch knobs default to 100 completions and 2 ms, and bad values stop the runner", () => {
  const config = loadConfig({});
  assertEquals([config.completeBatchMax, config.completeBatchWaitMs], [100, 2], "defaults");
  const refused = (env: Record<string, string>) => {
    try {
      loadConfig(env);
    } catch (error) {
      if (error instanceof ConfigError) return error.message;
      throw error;
    }
    return "accepted";
  };
  assertEquals(
    refused({ RUNNER_COMPLETE_BATCH_MAX: "0" }),
    'RUNNER_COMPLETE_BATCH_MAX must be a whole number from 1 to 1000, got "0"',
    "a batch of none is refused",
  );
  assertEquals(
    refused({ RUNNER_COMPLETE_BATCH_MAX: "1001" }),
    'RUNNER_COMPLETE_BATCH_MAX must be a whole number from 1 to 1000, got "1001"',
    "more than complete_ai_tasks takes is refused",
  );
  assertEquals(
    refused({ RUNNER_COMPLETE_BATCH_WAIT_MS: "-1" }),
    'RUNNER_COMPLETE_BATCH_WAIT_MS must be a whole number from 0 to 1000, got "-1"',
    "a negative wait is refused",
  );
});

// ------------------------------------------------------------ the real queue

/** `n` running tasks of one project, claimed by `db`'s worker. */
async function claimed(rows: TestDb, db: ReturnType<typeof createPostgresQueueDb>, n: number) {
  const projectId = await rows.project();
  await rows.sql`update public.projects set max_running_tasks = ${n} where id = ${projectId}`;
  for (let i = 0; i < n; i++) await rows.enqueue(projectId, { message: `question ${i}` });
  const tasks = await db.claim({
    workerId: "batch-test",
    projectId,
    batchSize: n,
    leaseSeconds: 60,
  });
  assertEquals(tasks.length, n, "all claimed");
  return tasks;
}

/** How many transactions wrote the tasks' answers (rows of one transaction share xmin). */
async function answeringTransactions(rows: TestDb, tasks: TaskRef[]): Promise<number> {
  const [row] = await rows.sql`
    select count(distinct xmin::text)::int as n from public.chat_messages
    where role = 'assistant' and task_id = any(${tasks.map((t) => t.id)}::uuid[])`;
  return row.n;
}

for (const path of DB_PATHS) {
  Deno.test(`via ${path.name}: concurrent completes are written in fewer transactions, a cancelled task alone refused`, async () => {
    const conn = await path.open();
    const rows = new TestDb();
    try {
      const tasks = await claimed(rows, conn.db, 30);
      await rows.cancel(tasks[7].id);
      const settled = await Promise.allSettled(
        tasks.map((t) => conn.db.complete(t, `answer to ${t.id}`, { n: 1 }, null)),
      );

      const refused = settled[7];
      assert(
        refused.status === "rejected" && refused.reason instanceof QueueDbError &&
          refused.reason.leaseLost,
        "the cancelled task's completion is refused as lease lost",
      );
      const done = tasks.filter((_, i) => i !== 7);
      for (const [i, t] of done.entries()) {
        const outcome = settled[tasks.indexOf(t)];
        assert(outcome.status === "fulfilled", `task ${i} completed: ${JSON.stringify(outcome)}`);
        const [row] = await rows.sql`
          select t.status, m.id::text as message_id, m.content, m.streaming
          from public.ai_tasks t join public.chat_messages m
            on m.task_id = t.id and m.role = 'assistant'
          where t.id = ${t.id}::uuid`;
        assertEquals([row.status, row.message_id, row.content, row.streaming], [
          "completed",
          outcome.value,
          `answer to ${t.id}`,
          false,
        ], "completed, with the returned message holding the answer");
        assertEquals(
          (await rows.logEvents(t.id)).filter((e) => e === "completed").length,
          1,
          "one completion log",
        );
      }
      assertEquals(
        (await rows.task(tasks[7].id)).status,
        "cancelled",
        "the cancelled one stays so",
      );
      const transactions = await answeringTransactions(rows, done);
      assert(transactions < done.length / 3, `29 answers in ${transactions} transactions: batched`);

      // A retried call (its first answer lost) gets the same message id back.
      const again = await conn.db.complete(done[0], "answer again", {}, null);
      assertEquals(
        again,
        (settled[0] as PromiseFulfilledResult<string>).value,
        "repeating a completion returns the first message id",
      );
    } finally {
      await rows.close();
      await conn.close();
    }
  });
}

Deno.test("a queue without complete_ai_tasks completes each task with complete_ai_task", async () => {
  // A throwaway database on the same cluster, migrated, minus the function.
  const name = `runner_no_batch_${crypto.randomUUID().slice(0, 8)}`;
  const admin = postgres(DATABASE_URL, { max: 1, onnotice: () => {} });
  const url = DATABASE_URL.replace(/\/[^/?]*(\?|$)/, `/${name}$1`);
  await admin.unsafe(`create database ${name}`);
  try {
    const migrate = await new Deno.Command(
      new URL("../scripts/migrate.sh", import.meta.url).pathname,
      { env: { DATABASE_URL: url }, stdout: "null", stderr: "piped" },
    ).output();
    assert(migrate.success, `migrated: ${new TextDecoder().decode(migrate.stderr).slice(-300)}`);
    const rows = new TestDb(url);
    await rows.sql`drop function public.complete_ai_tasks(jsonb)`;
    const standin = await startPostgrestStandin({
      databaseUrl: url,
      jwtSecret: FAKE_SERVICE_KEY_SECRET,
    });
    const serviceKey = await signJwt({
      role: "service_role",
      exp: Math.floor(Date.now() / 1000) + 600,
    }, FAKE_SERVICE_KEY_SECRET);
    const paths = [
      ["postgres.js", createPostgresQueueDb(url, 4)],
      ["supabase-js", createSupabaseQueueDb(standin.url, serviceKey)],
    ] as const;
    try {
      for (const [label, db] of paths) {
        // Twice: the first batch finds the function missing, the second knows.
        for (let round = 1; round <= 2; round++) {
          const tasks = await claimed(rows, db, 5);
          const answers = await Promise.all(tasks.map((t) => db.complete(t, "fallback", {}, null)));
          assert(
            answers.every((a) => /^[0-9a-f-]{36}$/.test(a)),
            `${label}: message ids ${answers}`,
          );
          const [row] = await rows.sql`
            select count(*)::int as n from public.ai_tasks
            where id = any(${tasks.map((t) => t.id)}::uuid[]) and status = 'completed'`;
          assertEquals(row.n, 5, `${label} round ${round}: all five completed`);
          assertEquals(
            await answeringTransactions(rows, tasks),
            5,
            `${label} round ${round}: one transaction per task, as complete_ai_task writes`,
          );
        }
      }
    } finally {
      for (const [, db] of paths) await db.close();
      await standin.close();
      await rows.close();
    }
  } finally {
    await admin.unsafe(`drop database if exists ${name} with (force)`);
    await admin.end({ timeout: 5 });
  }
});
