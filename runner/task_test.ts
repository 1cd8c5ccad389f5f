// One task through the runner, against the real queue and the fake model:
// each model behaviour ends in the right ai_tasks, chat_messages and
// build_logs rows. Runs once per database path.

import type { Config } from "./config.ts";
import type { ClaimedTask, QueueDb } from "./db.ts";
import { createModel } from "./model.ts";
import { newStats, processTask } from "./task.ts";
import { startFakeOpenAI } from "./testing/fake_openai.ts";
import {
  assert,
  assertEquals,
  assertMatch,
  DB_PATHS,
  eventually,
  FAKE_OPENROUTER_KEY,
  testConfig,
  TestDb,
  testLogger,
} from "./test_support.ts";

for (const path of DB_PATHS) {
  Deno.test(`task outcomes via ${path.name}`, async (t) => {
    const fake = await startFakeOpenAI();
    const conn = await path.open();
    const rows = new TestDb();
    const config = testConfig({
      ...conn.config,
      OPENROUTER_KEY: FAKE_OPENROUTER_KEY,
      OPENROUTER_BASE_URL: fake.url,
      OPENROUTER_APP_URL: "https://example.test/app",
      OPENROUTER_APP_TITLE: "runner tests",
    });
    const model = createModel(config);

    // Claims the one queued task of a fresh project, as a worker would.
    async function claimOne(projectId: string, db: QueueDb, cfg: Config): Promise<ClaimedTask> {
      const [task] = await db.claim({
        workerId: cfg.workerId,
        projectId,
        batchSize: 5,
        leaseSeconds: cfg.leaseSeconds,
      });
      assert(task, "the queued task is claimed");
      return task;
    }

    async function run(options: Parameters<TestDb["enqueue"]>[1] = {}, cfg = config) {
      const projectId = await rows.project();
      const taskId = await rows.enqueue(projectId, options);
      const task = await claimOne(projectId, conn.db, cfg);
      const log = testLogger();
      const stats = newStats();
      const before = fake.requests.length;
      const outcome = await processTask(task, {
        db: conn.db,
        model: cfg === config ? model : createModel(cfg),
        config: cfg,
        log,
        stats,
      }, new AbortController().signal);
      return { taskId, task, outcome, log, stats, requests: fake.requests.slice(before) };
    }

    try {
      await t.step(
        "a reply is stored whole, with the answering model, tokens and cost",
        async () => {
          fake.push({
            kind: "reply",
            content: "Bread & Butter Bakery would be lovely.",
            model: "openai/gpt-4o-mini-2024-07-18",
            usage: { prompt_tokens: 21, completion_tokens: 7, cost: 0.0000073 },
          });
          const { taskId, outcome, requests } = await run({ message: "Name my bakery" });

          assertEquals(outcome, "completed", "outcome");
          const task = await rows.task(taskId);
          assertEquals(task.status, "completed", "task status");
          assertEquals(
            task.model,
            "openai/gpt-4o-mini-2024-07-18",
            "task model is the answering one",
          );
          assertEquals(task.result?.prompt_tokens, 21, "prompt tokens");
          assertEquals(task.result?.completion_tokens, 7, "completion tokens");
          assertEquals(task.result?.cost, 0.0000073, "cost");
          assert(typeof task.result?.latency_ms === "number", "latency recorded");
          const messages = await rows.assistantMessages(taskId);
          assertEquals(messages.length, 1, "one assistant message");
          assertEquals(messages[0].content, "Bread & Butter Bakery would be lovely.", "content");
          assertEquals(messages[0].streaming, false, "message is final");
          assertEquals(messages[0].metadata.model, "openai/gpt-4o-mini-2024-07-18", "metadata");
          assertEquals(await rows.logEvents(taskId), ["queued", "completed"], "logs");

          assertEquals(requests.length, 1, "one model call");
          const body = requests[0].body;
          assertEquals(body.model, "openai/gpt-4o-mini", "default model requested");
          assertEquals(body.stream, true, "streamed");
          assertEquals(body.stream_options, { include_usage: true }, "usage requested");
          assertEquals(
            body.messages.map((m: { role: string }) => m.role),
            ["system", "user"],
            "system message, then the history",
          );
          assertEquals(body.messages[1].content, "Name my bakery", "the user's message");
          assertEquals(requests[0].headers["http-referer"], "https://example.test/app", "referer");
          assertEquals(requests[0].headers["x-title"], "runner tests", "title");
        },
      );

      await t.step(
        "the task's own model is asked for, and files context reaches the system message",
        async () => {
          const { outcome, requests } = await run({
            model: "anthropic/claude-test",
            payload: {
              projectFilesContext: {
                bucket: "project-files",
                path: "p/v3",
                versionId: "v-3",
                versionNumber: 3,
              },
            },
          });
          assertEquals(outcome, "completed", "outcome");
          assertEquals(requests[0].body.model, "anthropic/claude-test", "task model requested");
          assertMatch(
            requests[0].body.messages[0].content,
            /"project-files" at "p\/v3" \(version 3/,
            "system message names the files",
          );
        },
      );

      await t.step("history goes to the model oldest first", async () => {
        const projectId = await rows.project();
        await rows.sql`
          insert into public.chat_messages (project_id, role, content, created_at) values
            (${projectId}::uuid, 'user', 'first', now() - interval '2 min'),
            (${projectId}::uuid, 'assistant', 'second', now() - interval '1 min')`;
        await rows.enqueue(projectId, { message: "third" });
        const task = await claimOne(projectId, conn.db, config);
        const before = fake.requests.length;
        await processTask(task, {
          db: conn.db,
          model,
          config,
          log: testLogger(),
          stats: newStats(),
        }, new AbortController().signal);
        const sent = fake.requests[before].body.messages.slice(1)
          .map((m: { content: string }) => m.content);
        assertEquals(sent, ["first", "second", "third"], "oldest first");
      });

      await t.step("a streamed reply is written as it grows, then once whole", async () => {
        const words = Array.from({ length: 16 }, (_, i) => `word${i}`).join(" ");
        fake.push({ kind: "reply", content: words, chunkDelayMs: 30 });
        const projectId = await rows.project();
        const taskId = await rows.enqueue(projectId);
        const task = await claimOne(projectId, conn.db, config);
        const seen: string[] = [];
        let watching = true;
        const watcher = (async () => {
          while (watching) {
            const [row] = await rows.sql`
              select content from public.chat_messages
              where task_id = ${taskId}::uuid and role = 'assistant' and streaming`;
            if (row && !seen.includes(row.content)) seen.push(row.content);
            await new Promise((r) => setTimeout(r, 10));
          }
        })();
        const outcome = await processTask(task, {
          db: conn.db,
          model,
          config,
          log: testLogger(),
          stats: newStats(),
        }, new AbortController().signal);
        watching = false;
        await watcher;

        assertEquals(outcome, "completed", "outcome");
        assert(seen.length >= 2, `partial replies seen while streaming: ${seen.length}`);
        for (const partial of seen) {
          assert(words.startsWith(partial), `a partial reply is a prefix: ${partial}`);
        }
        assert(
          seen.some((partial) => partial.length < words.length),
          "some partial reply came before the whole text",
        );
        const messages = await rows.assistantMessages(taskId);
        assertEquals(messages.length, 1, "still one assistant message");
        assertEquals(messages[0].content, words, "the final message is whole");
        assertEquals(messages[0].streaming, false, "no longer streaming");
        const result = (await rows.task(taskId)).result!;
        assert(Number(result.stream_writes) >= 2, "the result counts the partial writes");
      });

      await t.step(
        "a reply arriving in one piece, however late, costs no partial write",
        async () => {
          fake.push({ kind: "reply", content: "Done.", delayMs: 300 });
          const { taskId, outcome } = await run();
          assertEquals(outcome, "completed", "outcome");
          assertEquals((await rows.task(taskId)).result?.stream_writes, 0, "no stream writes");
        },
      );

      await t.step(
        "429 with Retry-After snoozes the task for that long, attempt not spent",
        async () => {
          fake.push({ kind: "status", status: 429, retryAfter: "7" });
          // A model of its own: a snooze pauses its model for every claim.
          const { taskId, outcome, stats } = await run({
            model: `test/rate-limited-${crypto.randomUUID().slice(0, 8)}`,
          });
          assertEquals(outcome, "retried", "outcome");
          assertEquals(stats.snoozed, 1, "counted as snoozed");
          const task = await rows.task(taskId);
          assertEquals(task.status, "queued", "back in the queue");
          assertEquals(task.max_attempts - task.attempts, 3, "no attempt spent");
          assert(
            task.run_at_in_s > 5.5 && task.run_at_in_s <= 7.5,
            `run_at honours Retry-After: due in ${task.run_at_in_s} s`,
          );
          assertEquals(await rows.assistantMessages(taskId), [], "no reply");
          assertEquals((await rows.logEvents(taskId)).at(-1), "snoozed", "logged as snoozed");
        },
      );

      await t.step("500 is retried later with an attempt spent", async () => {
        fake.push({ kind: "status", status: 500 });
        const { taskId, outcome } = await run();
        assertEquals(outcome, "retried", "outcome");
        const task = await rows.task(taskId);
        assertEquals(task.status, "queued", "queued again");
        assertEquals(task.attempts, 1, "attempt spent");
        assert(task.run_at_in_s > 1, `backoff before the retry: ${task.run_at_in_s} s`);
        assertMatch(task.error, /server error \(HTTP 500\)/, "error says what happened");
        assertEquals(task.errors.at(-1)?.retryable, true, "recorded as retryable");
        assertEquals(await rows.assistantMessages(taskId), [], "no reply");
        assertEquals((await rows.logEvents(taskId)).at(-1), "retry_scheduled", "logged");
      });

      await t.step("402 fails the task at once: out of credits, not retryable", async () => {
        fake.push({ kind: "status", status: 402 });
        const { taskId, outcome } = await run();
        assertEquals(outcome, "failed", "outcome");
        const task = await rows.task(taskId);
        assertEquals(task.status, "failed", "failed");
        assertEquals(task.attempts, 1, "on its first attempt");
        assertMatch(task.error, /out of credits/, "error says out of credits");
        assertEquals(task.errors.at(-1)?.retryable, false, "not retryable");
        assert(task.finished_at !== null, "finished");
        assertEquals(await rows.assistantMessages(taskId), [], "no reply");
        assertEquals((await rows.logEvents(taskId)).at(-1), "failed", "logged as failed");
      });

      await t.step(
        "401 fails the task at once and blames the key, without showing it",
        async () => {
          fake.push({ kind: "status", status: 401 });
          const { taskId, outcome, log } = await run();
          assertEquals(outcome, "failed", "outcome");
          const task = await rows.task(taskId);
          assertMatch(task.error, /rejected the API key \(OPENROUTER_KEY\)/, "error names the key");
          assert(!task.error!.includes(FAKE_OPENROUTER_KEY), "the key is not in the error");
          assert(!JSON.stringify(log.lines).includes(FAKE_OPENROUTER_KEY), "nor in the logs");
        },
      );

      await t.step("a reply slower than the timeout is abandoned and retried", async () => {
        fake.push({ kind: "hang", ms: 20_000 });
        const cfg = testConfig({
          ...conn.config,
          OPENROUTER_KEY: FAKE_OPENROUTER_KEY,
          OPENROUTER_BASE_URL: fake.url,
          RUNNER_MODEL_TIMEOUT_MS: "400",
        });
        const started = Date.now();
        const { taskId, outcome } = await run({}, cfg);
        assertEquals(outcome, "retried", "outcome");
        assert(Date.now() - started < 5000, "the call was cut at the timeout, not at the hang");
        const task = await rows.task(taskId);
        assertEquals(task.status, "queued", "queued again");
        assertMatch(task.error, /timed out/, "error says timed out");
      });

      await t.step("a stream that stalls after its first chunks also times out", async () => {
        fake.push({ kind: "reply", content: "slow words ".repeat(40), chunkDelayMs: 200 });
        const cfg = testConfig({
          ...conn.config,
          OPENROUTER_KEY: FAKE_OPENROUTER_KEY,
          OPENROUTER_BASE_URL: fake.url,
          RUNNER_MODEL_TIMEOUT_MS: "700",
        });
        const { taskId, outcome } = await run({}, cfg);
        assertEquals(outcome, "retried", "outcome");
        assertMatch((await rows.task(taskId)).error, /timed out/, "error says timed out");
        assertEquals(await rows.assistantMessages(taskId), [], "the partial reply is removed");
      });

      await t.step("malformed JSON from the provider is retried", async () => {
        fake.push({ kind: "malformed" });
        const { taskId, outcome } = await run();
        assertEquals(outcome, "retried", "outcome");
        const task = await rows.task(taskId);
        assertEquals(task.status, "queued", "queued again");
        assertMatch(task.error, /malformed/, "error says malformed");
        assertEquals(await rows.assistantMessages(taskId), [], "no reply");
      });

      await t.step("an error inside the stream is handled like its HTTP status", async () => {
        fake.push({ kind: "stream_error", afterChunks: 3, status: 502 });
        const retried = await run();
        assertEquals(retried.outcome, "retried", "502 in the stream is retried");
        assertMatch(
          (await rows.task(retried.taskId)).error,
          /HTTP 502\): in stream/,
          "error says it came in the stream",
        );
        assertEquals(await rows.assistantMessages(retried.taskId), [], "no partial reply left");

        fake.push({ kind: "stream_error", afterChunks: 1, status: 402, message: "no credits" });
        const failed = await run();
        assertEquals(failed.outcome, "failed", "402 in the stream fails at once");
        assertMatch((await rows.task(failed.taskId)).error, /out of credits/, "out of credits");
      });

      await t.step(
        "a task cancelled during its call aborts the call and writes nothing",
        async () => {
          fake.push({ kind: "reply", content: "never ".repeat(200), chunkDelayMs: 100 });
          const projectId = await rows.project();
          const taskId = await rows.enqueue(projectId);
          const task = await claimOne(projectId, conn.db, config);
          const log = testLogger();
          const started = Date.now();
          const running = processTask(
            task,
            { db: conn.db, model, config, log, stats: newStats() },
            new AbortController().signal,
          );
          await eventually(
            async () => (await rows.assistantMessages(taskId)).length > 0,
            "the reply starts streaming",
          );
          assertEquals(await rows.cancel(taskId), "cancelled", "cancel_ai_task");
          const outcome = await running;

          assertEquals(outcome, "cancelled", "outcome");
          assert(Date.now() - started < 5000, "the 20 s reply was cut short");
          const row = await rows.task(taskId);
          assertEquals(row.status, "cancelled", "still cancelled");
          assertEquals(row.result, null, "no result");
          assertEquals(await rows.assistantMessages(taskId), [], "no reply left behind");
          const events = await rows.logEvents(taskId);
          assert(
            !events.includes("completed") && !events.includes("failed"),
            `nothing recorded after the cancel: ${events}`,
          );
          assert(log.lines.some((l) => l.event === "cancelled"), "the runner logs the cancel");
        },
      );

      await t.step(
        "a task type without a handler fails at once, without a model call",
        async () => {
          const { taskId, outcome, requests } = await run({ type: "build_site", message: null });
          assertEquals(outcome, "failed", "outcome");
          assertEquals(requests.length, 0, "no model call");
          const task = await rows.task(taskId);
          assertMatch(task.error, /build_site is not supported yet/, "error says not supported");
          assertEquals(task.errors.at(-1)?.retryable, false, "not retryable");
        },
      );

      await t.step("the offline model answers with no key, labelled as offline", async () => {
        const cfg = testConfig({ ...conn.config });
        const { taskId, outcome } = await run({ message: "are you there?" }, cfg);
        assertEquals(outcome, "completed", "outcome");
        const [message] = await rows.assistantMessages(taskId);
        assertMatch(message.content, /^\[offline model.*"are you there\?"/, "labelled echo");
        assertEquals(message.metadata.model, "offline/echo", "metadata.model");
        assertEquals(message.metadata.offline, true, "metadata.offline");
      });
    } finally {
      await rows.close();
      await conn.close();
      await fake.close();
    }
  });
}
