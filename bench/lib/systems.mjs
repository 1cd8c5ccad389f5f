// The three queues as the harness drives them: how to build each one's
// database, queue many tasks at once or one at a time, and tell when every
// queued task is done. Bulk enqueues run in one transaction whose xid is
// returned, so that its WAL can be told apart from the workers'.

import pg from "pg";
import PgBoss from "pg-boss";
import { connect, migrateOurs, recreateDatabase, urlFor } from "./pg.mjs";

// Tasks are spread over many projects, as many users' chats would be. The
// claim caps each project's running tasks (ai_queue_settings, 4 by default),
// so 1,000 tasks in flight need at least 250 projects.
const PROJECTS = 1000;

export const ours = {
  name: "ours",
  db: "bench_ours",

  async setup(admin, root) {
    await recreateDatabase(admin, this.db);
    await migrateOurs(root, this.db);
    this.sql = connect(this.db);
    await this.sql`
      with users as (
        insert into auth.users (email)
        select 'bench-' || g || '@example.test' from generate_series(1, ${PROJECTS}) g
        returning id
      )
      insert into public.projects (owner_id, name)
      select id, 'bench project' from users`;
    this.projects = (await this.sql`select id from public.projects order by id`)
      .map((r) => r.id);
  },

  /** Clears tasks, messages and logs between runs; the projects stay. */
  async reset() {
    await this.sql`truncate public.build_logs, public.chat_messages, public.ai_tasks`;
    await this.sql`vacuum analyze public.ai_tasks`;
  },

  // Each task gets its user message first, as enqueue_ai_task(message => ...)
  // does, so claims return a real history. The per-task "queued" build log of
  // enqueue_ai_task is left out: it is the enqueuer's cost, not the worker's.
  async enqueueBulk(from, to) {
    return await this.sql.begin(async (tx) => {
      await tx`
        with p as (
          select id, (row_number() over (order by id)) - 1 as k from public.projects
        ), msgs as (
          insert into public.chat_messages (project_id, role, content)
          select p.id, 'user', 'Bench question ' || g
          from generate_series(${from}::int, ${to}::int) g join p on p.k = g % ${PROJECTS}
          returning id, project_id, content
        )
        insert into public.ai_tasks (project_id, type, payload)
        select m.project_id, 'chat_reply',
               jsonb_build_object('message_id', m.id,
                                  'seq', split_part(m.content, ' ', 3)::int)
        from msgs m`;
      const [{ xid }] = await tx`select (pg_current_xact_id()::text::bigint % 4294967296)::text as xid`;
      return xid;
    });
  },

  /** The browser's way in: enqueue_ai_task with the user's message. */
  async enqueueOne(seq) {
    const project = this.projects[seq % this.projects.length];
    await this.sql`
      select public.enqueue_ai_task(${project}::uuid, 'chat_reply',
        ${this.sql.json({ seq })}, ${"Bench question " + seq})`;
  },

  async pending() {
    const [row] = await this.sql`
      select exists (select 1 from public.ai_tasks
                     where status in ('queued', 'running')) as pending`;
    return row.pending;
  },

  async close() {
    await this.sql?.end({ timeout: 5 });
  },
};

export const graphile = {
  name: "graphile",
  db: "bench_graphile",

  async setup(admin) {
    await recreateDatabase(admin, this.db);
    const { Logger, runMigrations } = await import("graphile-worker");
    await runMigrations({ connectionString: urlFor(this.db), logger: new Logger(() => () => {}) });
    this.sql = connect(this.db);
  },

  async reset() {
    await this.sql`delete from graphile_worker._private_jobs`;
    await this.sql`vacuum analyze graphile_worker._private_jobs`;
  },

  async enqueueBulk(from, to) {
    return await this.sql.begin(async (tx) => {
      await tx`
        select count(*) from graphile_worker.add_jobs(array(
          select row('bench', json_build_object('seq', g), null, null, null, null, null, null)
                   ::graphile_worker.job_spec
          from generate_series(${from}::int, ${to}::int) g))`;
      const [{ xid }] = await tx`select (pg_current_xact_id()::text::bigint % 4294967296)::text as xid`;
      return xid;
    });
  },

  async enqueueOne(seq) {
    await this.sql`select graphile_worker.add_job('bench', ${this.sql.json({ seq })}::json)`;
  },

  async pending() {
    const [row] = await this.sql`
      select exists (select 1 from graphile_worker._private_jobs) as pending`;
    return row.pending;
  },

  async close() {
    await this.sql?.end({ timeout: 5 });
  },
};

export const pgboss = {
  name: "pgboss",
  db: "bench_pgboss",

  async setup(admin) {
    await recreateDatabase(admin, this.db);
    // This instance only queues jobs: no maintenance, no cron, so the worker
    // process's own pg-boss is the only one doing background work.
    this.boss = new PgBoss({
      connectionString: urlFor(this.db), supervise: false, schedule: false, max: 2,
    });
    this.boss.on("error", () => {});
    await this.boss.start();
    await this.boss.createQueue("bench");
    this.sql = connect(this.db);
  },

  async reset() {
    await this.sql`delete from pgboss.job where name = 'bench'`;
    await this.sql`vacuum analyze pgboss.job`;
  },

  async enqueueBulk(from, to) {
    const jobs = [];
    for (let seq = from; seq <= to; seq++) jobs.push({ name: "bench", data: { seq } });
    // pg-boss's own insert, in one transaction of a node-postgres client (the
    // driver pg-boss is written for) through its `db` option.
    const client = new pg.Client({ connectionString: urlFor(this.db) });
    await client.connect();
    try {
      await client.query("begin");
      const db = { executeSql: (text, values) => client.query(text, values) };
      for (let i = 0; i < jobs.length; i += 5000) {
        await this.boss.insert(jobs.slice(i, i + 5000), { db });
      }
      const { rows: [{ xid }] } = await client.query(
        "select (pg_current_xact_id()::text::bigint % 4294967296)::text as xid");
      await client.query("commit");
      return xid;
    } finally {
      await client.end();
    }
  },

  async enqueueOne(seq) {
    await this.boss.send("bench", { seq });
  },

  async pending() {
    const [row] = await this.sql`
      select exists (select 1 from pgboss.job
                     where name = 'bench' and state < 'completed') as pending`;
    return row.pending;
  },

  async close() {
    await this.boss?.stop({ graceful: false, wait: true, timeout: 1000 });
    await this.sql?.end({ timeout: 5 });
  },
};

