// A database restart under a running worker. The shared cluster serves other
// people, so this test starts a throwaway PostgreSQL 15 cluster of its own,
// migrates it, stops it under the worker and starts it again.

import { createPostgresQueueDb } from "./db.ts";
import { createModel } from "./model.ts";
import { assert, eventually, sleep, testConfig, TestDb, testLogger } from "./test_support.ts";
import { Worker } from "./worker.ts";

const PG_BIN = "/usr/lib/postgresql/15/bin";
const haveServer = (() => {
  try {
    return Deno.statSync(`${PG_BIN}/initdb`).isFile;
  } catch {
    return false;
  }
})();

async function sh(cmd: string[], env: Record<string, string> = {}): Promise<void> {
  // PostgreSQL refuses to run as root, so as root the server runs as postgres.
  const asOwner = Deno.uid() === 0 ? ["runuser", "-u", "postgres", "--", ...cmd] : cmd;
  const { code, stderr } = await new Deno.Command(asOwner[0], {
    args: asOwner.slice(1),
    env,
    stdout: "null",
    stderr: "piped",
  }).output();
  if (code !== 0) {
    throw new Error(`${cmd.join(" ")} failed: ${new TextDecoder().decode(stderr).slice(0, 500)}`);
  }
}

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

Deno.test({
  name: "the worker survives a database restart, logs it, and listens again",
  ignore: !haveServer,
}, async () => {
  // Through commands, so the suite needs --allow-run but no --allow-write.
  const made = await new Deno.Command("mktemp", {
    args: ["-d", "/tmp/runner-restart-XXXXXX"],
    stdout: "piped",
  }).output();
  const dir = new TextDecoder().decode(made.stdout).trim();
  const data = `${dir}/data`;
  const port = freePort();
  const url = `postgres://postgres@127.0.0.1:${port}/postgres`;
  const pgCtl = (action: string) =>
    sh([
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
    ]);
  if (Deno.uid() === 0) await new Deno.Command("chown", { args: ["postgres", dir] }).output();

  let worker: Worker | null = null;
  let running: Promise<void> | null = null;
  const db = createPostgresQueueDb(url, 2);
  let rows: TestDb | null = null;
  try {
    await sh([`${PG_BIN}/initdb`, "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"]);
    await pgCtl("start");
    const migrate = await new Deno.Command(
      new URL("../scripts/migrate.sh", import.meta.url)
        .pathname,
      { env: { DATABASE_URL: url }, stdout: "null", stderr: "piped" },
    ).output();
    assert(migrate.code === 0, `migrate: ${new TextDecoder().decode(migrate.stderr)}`);

    rows = new TestDb(url);
    const projectId = await rows.project();
    const config = testConfig({
      DATABASE_URL: url,
      RUNNER_POLL_MS: "100",
      RUNNER_POLL_MAX_MS: "400",
    });
    const log = testLogger();
    // Counts NOTIFYs reaching the worker, to tell them from its polling.
    let notified = 0;
    const counted = {
      ...db,
      listen: (onWake: () => void, onState?: Parameters<typeof db.listen>[1]) =>
        db.listen(() => {
          notified++;
          onWake();
        }, onState),
    };
    worker = new Worker({ db: counted, model: createModel(config), config, log, projectId });
    running = worker.run();

    const before = await rows.enqueue(projectId);
    await eventually(
      async () => (await rows!.task(before)).status === "completed",
      "a task completes before the restart",
    );

    await rows.sql.end({ timeout: 1 });
    await pgCtl("stop");
    await sleep(1200); // long enough for the worker to find the database gone
    await pgCtl("start");

    rows = new TestDb(url);
    const after = await rows.enqueue(projectId);
    await eventually(
      async () => (await rows!.task(after)).status === "completed",
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
    await rows?.close().catch(() => {});
    await pgCtl("stop").catch(() => {});
    await new Deno.Command("rm", { args: ["-rf", dir] }).output();
  }
});
