// Tests that need a database of their own to break: a restart under a running
// worker, and a queue without snooze_ai_task. The shared cluster serves other
// people, so each test starts a throwaway PostgreSQL 15 cluster, migrates it,
// and removes it afterwards.

import { createPostgresQueueDb, createSupabaseQueueDb, type QueueDb } from "./db.ts";
import { createModel } from "./model.ts";
import { newStats, processTask } from "./task.ts";
import { startFakeOpenAI } from "./testing/fake_openai.ts";
import { signJwt, startPostgrestStandin } from "./testing/postgrest_standin.ts";
import {
  assert,
  assertEquals,
  eventually,
  FAKE_OPENROUTER_KEY,
  FAKE_SERVICE_KEY_SECRET,
  sleep,
  testConfig,
  TestDb,
  testLogger,
} from "./test_support.ts";
import { Worker } from "./worker.ts";

const PG_BIN = "/usr/lib/postgresql/15/bin";
const haveServer = (() => {
  try {
    return Deno.statSync(`${PG_BIN}/initdb`).isFile;
  } catch {
    return false;
  }
})();

async function run(cmd: string[], env: Record<string, string> = {}): Promise<string> {
  const { code, stdout, stderr } = await new Deno.Command(cmd[0], {
    args: cmd.slice(1),
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (code !== 0) {
    throw new Error(`${cmd.join(" ")} failed: ${new TextDecoder().decode(stderr).slice(0, 500)}`);
  }
  return new TextDecoder().decode(stdout).trim();
}

// PostgreSQL refuses to run as root, so as root the server runs as postgres.
const asOwner = (cmd: string[]) =>
  Deno.uid() === 0 ? ["runuser", "-u", "postgres", "--", ...cmd] : cmd;

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

interface Cluster {
  url: string;
  stop(): Promise<void>;
  start(): Promise<void>;
}

/** A migrated cluster in a temporary directory, for the length of `fn`. */
async function withCluster(fn: (cluster: Cluster) => Promise<void>): Promise<void> {
  // Through commands, so the suite needs --allow-run but no --allow-write.
  const dir = await run(["mktemp", "-d", "/tmp/runner-cluster-XXXXXX"]);
  if (Deno.uid() === 0) await run(["chown", "postgres", dir]);
  const data = `${dir}/data`;
  const port = freePort();
  const pgCtl = (action: string) =>
    run(
      asOwner([
        `${PG_BIN}/pg_ctl`,
        "-D",
        data,
        "-l",
        `${dir}/server.log`,
        "-w",
        "-m",
        "fast",
        "-o",
        `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1`,
        action,
      ]),
    );
  const cluster: Cluster = {
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    stop: () => pgCtl("stop").then(() => {}),
    start: () => pgCtl("start").then(() => {}),
  };
  try {
    await run(
      asOwner([`${PG_BIN}/initdb`, "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"]),
    );
    await cluster.start();
    await run([new URL("../scripts/migrate.sh", import.meta.url).pathname], {
      DATABASE_URL: cluster.url,
    });
    await fn(cluster);
  } finally {
    await cluster.stop().catch(() => {});
    await run(["rm", "-rf", dir]);
  }
}

Deno.test({
  name: "the worker survives a database restart, logs it, and listens again",
  ignore: !haveServer,
}, async () => {
  await withCluster(async (cluster) => {
    const db = createPostgresQueueDb(cluster.url, 2);
    let rows = new TestDb(cluster.url);
    let worker: Worker | null = null;
    let running: Promise<void> | null = null;
    try {
      const projectId = await rows.project();
      const config = testConfig({
        DATABASE_URL: cluster.url,
        RUNNER_POLL_MS: "100",
        RUNNER_POLL_MAX_MS: "400",
      });
      const log = testLogger();
      // Counts NOTIFYs reaching the worker, to tell them from its polling.
      let notified = 0;
      const counted: QueueDb = {
        ...db,
        listen: (onWake, onState) =>
          db.listen(() => {
            notified++;
            onWake();
          }, onState),
      };
      worker = new Worker({ db: counted, model: createModel(config), config, log, projectId });
      running = worker.run();

      const before = await rows.enqueue(projectId);
      await eventually(
        async () => (await rows.task(before)).status === "completed",
        "a task completes before the restart",
      );

      await rows.sql.end({ timeout: 1 });
      await cluster.stop();
      await sleep(1200); // long enough for the worker to find the database gone
      await cluster.start();

      rows = new TestDb(cluster.url);
      const after = await rows.enqueue(projectId);
      await eventually(
        async () => (await rows.task(after)).status === "completed",
        "a task queued after the restart completes",
        15_000,
      );
      const events = log.lines.map((l) => l.event);
      assert(events.includes("db_unavailable"), `the outage is logged: ${events}`);
      assert(events.includes("db_reconnected"), `the recovery is logged: ${events}`);
      await eventually(
        () => Promise.resolve(log.lines.some((l) => l.event === "listen_restored")),
        "LISTEN is established again",
        10_000,
      );
      const heard = notified;
      await rows.enqueue(projectId);
      await eventually(
        () => Promise.resolve(notified > heard),
        "a NOTIFY after the restart reaches the worker",
        5000,
      );
    } finally {
      await worker?.shutdown(1000);
      await running;
      await db.close();
      await rows.close().catch(() => {});
    }
  });
});

Deno.test({
  name: "without snooze_ai_task a 429 becomes a retryable failure after Retry-After",
  ignore: !haveServer,
}, async () => {
  await withCluster(async (cluster) => {
    const rows = new TestDb(cluster.url);
    await rows.sql`drop function public.snooze_ai_task(uuid, integer, integer, text)`;
    const fake = await startFakeOpenAI();
    const standin = await startPostgrestStandin({
      databaseUrl: cluster.url,
      jwtSecret: FAKE_SERVICE_KEY_SECRET,
    });
    const serviceKey = await signJwt({
      role: "service_role",
      exp: Math.floor(Date.now() / 1000) + 600,
    }, FAKE_SERVICE_KEY_SECRET);
    const paths: [string, QueueDb][] = [
      ["postgres.js", createPostgresQueueDb(cluster.url, 2)],
      ["supabase-js", createSupabaseQueueDb(standin.url, serviceKey)],
    ];
    try {
      const config = testConfig({
        DATABASE_URL: cluster.url,
        OPENROUTER_KEY: FAKE_OPENROUTER_KEY,
        OPENROUTER_BASE_URL: fake.url,
      });
      for (const [name, db] of paths) {
        // Twice: the first call finds the function missing, the second knows.
        for (let round = 1; round <= 2; round++) {
          fake.push({ kind: "status", status: 429, retryAfter: "9" });
          const projectId = await rows.project();
          const taskId = await rows.enqueue(projectId);
          const [task] = await db.claim({
            workerId: config.workerId,
            projectId,
            batchSize: 1,
            leaseSeconds: 30,
          });
          const outcome = await processTask(task, {
            db,
            model: createModel(config),
            config,
            log: testLogger(),
            stats: newStats(),
          }, new AbortController().signal);

          assertEquals(outcome, "retried", `${name} round ${round}: outcome`);
          const row = await rows.task(taskId);
          assertEquals(row.status, "queued", `${name}: back in the queue`);
          assertEquals(row.attempts, 1, `${name}: an attempt spent, as fail_ai_task does`);
          assert(
            row.run_at_in_s > 7.5 && row.run_at_in_s <= 9.5,
            `${name}: run_at honours Retry-After: ${row.run_at_in_s} s`,
          );
          assertEquals(row.errors.at(-1)?.retryable, true, `${name}: recorded as retryable`);
        }
      }
    } finally {
      for (const [, db] of paths) await db.close();
      await standin.close();
      await fake.close();
      await rows.close();
    }
  });
});
