// `deno task enqueue -- --project <uuid> --message "..." [options]`: queue a
// task the way the browser does, through enqueue_ai_task, as the service.

import postgres from "postgres";
import { createClient } from "@supabase/supabase-js";
import { loadConfig } from "./config.ts";

const USAGE = `usage: deno task enqueue -- --project <uuid> [--message <text>]
  [--type chat_reply|build_site|refactor_code] [--model <id>] [--priority <n>]
  [--max-attempts <n>] [--count <n>]`;

interface Options {
  project: string;
  message: string | null;
  type: string;
  model: string | null;
  priority: number;
  maxAttempts: number;
  count: number;
}

function parse(args: string[]): Options {
  const names = ["project", "message", "type", "model", "priority", "max-attempts", "count"];
  const values: Record<string, string | undefined> = {
    type: "chat_reply",
    priority: "0",
    "max-attempts": "3",
    count: "1",
  };
  // `deno task enqueue -- ...` passes the `--` through.
  const rest = args[0] === "--" ? args.slice(1) : [...args];
  while (rest.length > 0) {
    const flag = rest.shift()!;
    const [name, inline] = flag.replace(/^--/, "").split(/=(.*)/s, 2);
    if (!flag.startsWith("--") || !names.includes(name)) {
      throw new Error(`unknown argument ${flag}`);
    }
    const value = inline ?? rest.shift();
    if (value === undefined) throw new Error(`--${name} needs a value`);
    values[name] = value;
  }
  if (!values.project) throw new Error("--project is required (seed prints a project id)");
  const whole = (name: string, raw: string, min: number, max: number) => {
    const n = Number(raw);
    if (!/^-?\d+$/.test(raw) || n < min || n > max) {
      throw new Error(`--${name} must be a whole number from ${min} to ${max}, got ${raw}`);
    }
    return n;
  };
  return {
    project: values.project,
    message: values.message ?? null,
    type: values.type!,
    model: values.model ?? null,
    priority: whole("priority", values.priority!, -100, 100),
    maxAttempts: whole("max-attempts", values["max-attempts"]!, 1, 25),
    count: whole("count", values.count!, 1, 100_000),
  };
}

async function enqueue(o: Options): Promise<string[]> {
  const config = loadConfig();
  const message = (i: number) =>
    o.message === null ? null : o.count > 1 ? `${o.message} (${i + 1}/${o.count})` : o.message;
  const ids: string[] = [];

  if (config.dbClient === "supabase") {
    const client = createClient(config.supabaseUrl!, config.serviceRoleKey!, {
      auth: { persistSession: false, autoRefreshToken: false },
    });
    for (let i = 0; i < o.count; i++) {
      const { data, error } = await client.rpc("enqueue_ai_task", {
        project_id: o.project,
        type: o.type,
        payload: {},
        message: message(i),
        model: o.model,
        priority: o.priority,
        max_attempts: o.maxAttempts,
      });
      if (error) throw new Error(`${error.message}${error.hint ? ` (${error.hint})` : ""}`);
      ids.push(String(data));
    }
    return ids;
  }

  const sql = postgres(config.databaseUrl, { max: 1, onnotice: () => {} });
  try {
    // One transaction per task, as separate browser calls would be: a task's
    // history is what was written up to its own creation.
    for (let i = 0; i < o.count; i++) {
      const [row] = await sql`
        select public.enqueue_ai_task(${o.project}::uuid, ${o.type}, '{}'::jsonb,
          ${message(i)}, ${o.model}, ${o.priority}::int, ${o.maxAttempts}::int) as id`;
      ids.push(String(row.id));
    }
  } finally {
    await sql.end({ timeout: 5 });
  }
  return ids;
}

if (import.meta.main) {
  try {
    const ids = await enqueue(parse(Deno.args));
    if (ids.length === 1) console.log(`enqueue: task ${ids[0]} queued`);
    else console.log(`enqueue: ${ids.length} tasks queued, first ${ids[0]}`);
  } catch (error) {
    console.error(`enqueue: ${error instanceof Error ? error.message : String(error)}`);
    console.error(USAGE);
    Deno.exit(1);
  }
}
