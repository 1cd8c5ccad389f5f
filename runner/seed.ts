// `deno task seed`: make a fresh database show something. When it holds no
// tasks at all, create a demo user, a project, a user message and a queued
// chat_reply task (through enqueue_ai_task, like the browser), and say what
// it did. A database with tasks is left alone.

import postgres from "postgres";
import { ConfigError, describeDatabase, loadConfig } from "./config.ts";

const DEMO_EMAIL = "demo@example.com";
const DEMO_MESSAGE = "Hello! Can you suggest a name for my bakery's website?";

async function seed(): Promise<void> {
  const config = loadConfig();
  // A direct connection: the demo user goes into auth.users, which no RPC writes.
  const sql = postgres(config.databaseUrl, { max: 1, onnotice: () => {} });
  try {
    const [{ tasks }] = await sql`select count(*)::int as tasks from public.ai_tasks`;
    if (tasks > 0) {
      console.log(`seed: ${describeDatabase(config)} already has ${tasks} task(s); nothing added`);
      return;
    }
    const created = await sql.begin(async (tx) => {
      const [user] = await tx`
        insert into auth.users (email) values (${DEMO_EMAIL})
        on conflict (email) do update set email = excluded.email
        returning id`;
      const [project] = await tx`
        insert into public.projects (owner_id, name) values (${user.id}, 'Demo project')
        returning id`;
      const [task] = await tx`
        select public.enqueue_ai_task(${project.id}::uuid, 'chat_reply', '{}'::jsonb,
                                      ${DEMO_MESSAGE}) as id`;
      return { user: user.id, project: project.id, task: task.id };
    });
    console.log([
      `seed: added to ${describeDatabase(config)}:`,
      `  user     ${created.user} (${DEMO_EMAIL})`,
      `  project  ${created.project} (Demo project)`,
      `  message  "${DEMO_MESSAGE}"`,
      `  task     ${created.task} (chat_reply, queued)`,
      `more: deno task enqueue -- --project ${created.project} --message "..."`,
    ].join("\n"));
  } finally {
    await sql.end({ timeout: 5 });
  }
}

if (import.meta.main) {
  try {
    await seed();
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    console.error(
      error instanceof ConfigError
        ? `seed: configuration error: ${message}`
        : `seed: failed: ${message}`,
    );
    Deno.exit(1);
  }
}
