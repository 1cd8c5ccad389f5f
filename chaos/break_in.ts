// Break-in attempts, the way a browser really reaches the database:
//   * every table (found in the catalog, so a new one is covered too), every
//     operation, as anon, as another signed-in user and as the owner, over a
//     real connection with the role and JWT claims set as PostgREST sets them;
//   * every function in public, as those callers and as the service, through
//     the PostgREST stand-in (runner/testing/postgrest_standin.ts) with JWTs
//     signed by its signJwt, plus forged and expired tokens; every function in
//     ai_queue over a real connection;
//   * SECURITY DEFINER functions called with a search_path that puts a
//     caller's schema (and pg_temp) in front of pg_catalog and public.
// Only what the design allows may succeed. Each attempt runs in a transaction
// that is rolled back, so the attempts cannot disturb one another.
// PostgREST itself cannot be installed here: its table endpoints are not
// exercised, the same statements are sent over SQL with the same settings.

import postgres from "postgres";
import { signJwt, startPostgrestStandin } from "../runner/testing/postgrest_standin.ts";
import {
  type ApiRole,
  capture,
  check,
  checkEqual,
  DATABASE_URL,
  insertTasks,
  makeProjects,
  rememberSecret,
  resetQueue,
  say,
  type Scenario,
  SECRETS,
} from "./lib.ts";

type Result = "denied" | "none" | "allowed";

class Rollback extends Error {
  constructor(readonly rows: number) {
    super("rollback");
  }
}

/** Runs one statement as `role` (with `sub` as auth.uid()) and always rolls back. */
async function attempt(
  sql: postgres.Sql,
  role: ApiRole,
  sub: string | null,
  statement: string,
  searchPath?: string,
): Promise<{ result: Result; code?: string; rows: number }> {
  const claims = JSON.stringify(sub ? { role, sub } : { role });
  try {
    await sql.begin(async (tx) => {
      await tx`select pg_catalog.set_config('role', ${role}, true),
                      pg_catalog.set_config('request.jwt.claims', ${claims}, true)`;
      if (searchPath) await tx`select pg_catalog.set_config('search_path', ${searchPath}, true)`;
      const res = await tx.unsafe(statement);
      // A select reports the rows it saw; a write the rows it touched.
      const rows = /^\s*select count/.test(statement) ? Number(res[0]?.n ?? 0) : res.count;
      throw new Rollback(rows);
    });
    throw new Error("unreachable");
  } catch (error) {
    if (error instanceof Rollback) {
      return { result: error.rows > 0 ? "allowed" : "none", rows: error.rows };
    }
    const code = String((error as { code?: string }).code);
    if (code === "42501") return { result: "denied", code, rows: 0 };
    throw new Error(
      `${role} ${statement.slice(0, 120)}: unexpected ${code} ` +
        `${(error as Error).message}`,
    );
  }
}

interface Fixture {
  owner: string;
  other: string;
  ownProject: string;
  spareProject: string;
  othersProject: string;
  queued: string;
  failed: string;
}

// What the design lets each caller do to the owner's rows, table by table.
// Tables not listed (settings, limits, schema_migrations ...) are the
// service's alone: every operation by an API role is denied.
function expectedTables(f: Fixture): Record<string, Record<string, [string, Result, Result]>> {
  // op -> [statement, as the other user, as the owner]
  return {
    projects: {
      select: [
        `select count(*) as n from public.projects where id = '${f.ownProject}'`,
        "none",
        "allowed",
      ],
      insert: [`insert into public.projects (name) values ('mine')`, "allowed", "allowed"],
      "insert for another owner": [
        `insert into public.projects (owner_id, name)
        values ('${f.owner}', 'planted')`,
        "denied",
        "denied",
      ],
      "update name": [
        `update public.projects set name = 'renamed'
        where id = '${f.ownProject}'`,
        "none",
        "allowed",
      ],
      "update running cap": [
        `update public.projects set max_running_tasks = 1000
        where id = '${f.ownProject}'`,
        "denied",
        "denied",
      ],
      "update owner": [
        `update public.projects set owner_id = '${f.other}'
        where id = '${f.ownProject}'`,
        "denied",
        "denied",
      ],
      delete: [`delete from public.projects where id = '${f.spareProject}'`, "none", "allowed"],
    },
    ai_tasks: {
      select: [
        `select count(*) as n from public.ai_tasks where project_id = '${f.ownProject}'`,
        "none",
        "allowed",
      ],
      insert: [
        `insert into public.ai_tasks (project_id, type)
        values ('${f.ownProject}', 'chat_reply')`,
        "denied",
        "allowed",
      ],
      "insert running": [
        `insert into public.ai_tasks (project_id, type, status)
        values ('${f.ownProject}', 'chat_reply', 'running')`,
        "denied",
        "denied",
      ],
      "insert with attempts": [
        `insert into public.ai_tasks (project_id, type, attempts)
        values ('${f.ownProject}', 'chat_reply', 0)`,
        "denied",
        "denied",
      ],
      update: [
        `update public.ai_tasks set status = 'completed', result = '{}',
        finished_at = now() where id = '${f.queued}'`,
        "denied",
        "denied",
      ],
      delete: [`delete from public.ai_tasks where id = '${f.queued}'`, "denied", "denied"],
    },
    chat_messages: {
      select: [
        `select count(*) as n from public.chat_messages
        where project_id = '${f.ownProject}'`,
        "none",
        "allowed",
      ],
      insert: [
        `insert into public.chat_messages (project_id, role, content)
        values ('${f.ownProject}', 'user', 'hi')`,
        "denied",
        "allowed",
      ],
      "insert assistant": [
        `insert into public.chat_messages (project_id, role, content)
        values ('${f.ownProject}', 'assistant', 'forged answer')`,
        "denied",
        "denied",
      ],
      "insert for a task": [
        `insert into public.chat_messages (project_id, role, content, task_id)
        values ('${f.ownProject}', 'user', 'x', '${f.queued}')`,
        "denied",
        "denied",
      ],
      update: [
        `update public.chat_messages set content = 'edited'
        where project_id = '${f.ownProject}'`,
        "denied",
        "denied",
      ],
      delete: [
        `delete from public.chat_messages where project_id = '${f.ownProject}'`,
        "denied",
        "denied",
      ],
    },
    build_logs: {
      select: [
        `select count(*) as n from public.build_logs where project_id = '${f.ownProject}'`,
        "none",
        "allowed",
      ],
      insert: [
        `insert into public.build_logs (project_id, log_type, message)
        values ('${f.ownProject}', 'info', 'forged')`,
        "denied",
        "denied",
      ],
      update: [
        `update public.build_logs set message = 'x'
        where project_id = '${f.ownProject}'`,
        "denied",
        "denied",
      ],
      delete: [
        `delete from public.build_logs where project_id = '${f.ownProject}'`,
        "denied",
        "denied",
      ],
    },
  };
}

/** A plausible value for each argument, so a call fails on permission or not at all. */
function argValue(name: string, type: string, f: Fixture, fn: string): unknown {
  if (type === "uuid") {
    if (name === "task_id") return fn === "retry_ai_task" ? f.failed : f.queued;
    return f.ownProject;
  }
  if (/int/.test(type)) return name === "lease_seconds" ? 30 : 1;
  if (type === "boolean") return true;
  if (/json/.test(type)) return {};
  if (/timestamp/.test(type)) return new Date().toISOString();
  if (name === "type") return "chat_reply";
  return "chaos";
}

export const scenario: Scenario = {
  name: "break_in",
  async run(sql) {
    await resetQueue(sql);
    const [ownProject, spareProject, othersProject] = await makeProjects(sql, 3);
    const [{ owner, other }] = await sql`
      select (select owner_id from public.projects where id = ${ownProject}::uuid) as owner,
             (select owner_id from public.projects where id = ${othersProject}::uuid) as other`;
    await sql`update public.projects set owner_id = ${owner}::uuid
              where id = ${spareProject}::uuid`;
    const [queued, failed] = await insertTasks(sql, [ownProject], 2, { text: "break in" });
    await sql`update public.ai_tasks set status = 'failed', attempts = 3, finished_at = now(),
              error = 'x' where id = ${failed}::uuid`;
    await sql`insert into public.build_logs (project_id, task_id, log_type, message)
              values (${ownProject}::uuid, ${queued}::uuid, 'info', 'owner''s log')`;
    const f: Fixture = { owner, other, ownProject, spareProject, othersProject, queued, failed };
    const wrong: string[] = [];
    let tries = 0;
    const expect = (what: string, got: Result, want: Result) => {
      tries++;
      if (got !== want) wrong.push(`${what}: ${got}, expected ${want}`);
    };

    // ---- tables, over SQL as PostgREST would run the statements
    const tableRows = await sql`
      select n.nspname || '.' || c.relname as relname,
             (select a.attname from pg_catalog.pg_attribute a
              where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
              order by a.attnum limit 1) as first_column
      from pg_catalog.pg_class c
      join pg_catalog.pg_namespace n on n.oid = c.relnamespace
      where n.nspname in ('public', 'ai_queue') and c.relkind in ('r', 'v', 'm', 'p')
      order by 1`;
    const tables = tableRows.map((r) => String(r.relname));
    const known = expectedTables(f);
    for (const { relname: table, first_column: column } of tableRows) {
      const plan = known[table.replace(/^public\./, "")] ?? {
        select: [`select count(*) as n from ${table}`, "denied", "denied"],
        insert: [`insert into ${table} default values`, "denied", "denied"],
        update: [`update ${table} set ${column} = ${column}`, "denied", "denied"],
        delete: [`delete from ${table}`, "denied", "denied"],
      } as Record<string, [string, Result, Result]>;
      for (const [op, [statement, asOther, asOwner]] of Object.entries(plan)) {
        expect(
          `anon ${op} ${table}`,
          (await attempt(sql, "anon", null, statement)).result,
          "denied",
        );
        expect(
          `other user ${op} ${table}`,
          (await attempt(sql, "authenticated", other, statement)).result,
          asOther,
        );
        expect(
          `owner ${op} ${table}`,
          (await attempt(sql, "authenticated", owner, statement)).result,
          asOwner,
        );
      }
    }

    // ---- ai_queue functions: internal, only owns_project (used by RLS) is callable.
    // Real (non-null) arguments and a bare call: a strict function given a
    // null, or an unused output of a subquery, is never called, so would
    // never meet its privilege check. Trigger functions cannot be called at all.
    const literal: Record<string, string> = {
      uuid: "gen_random_uuid()",
      text: "'x'",
      integer: "1",
      boolean: "true",
      jsonb: "'{}'",
      "timestamp with time zone": "now()",
      interval: "'1 s'",
    };
    const internal = await sql`
      select p.proname,
             coalesce((select array_agg(pg_catalog.format_type(t, null) order by i)
                       from unnest(p.proargtypes) with ordinality a (t, i)), '{}') as types
      from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
      where n.nspname = 'ai_queue' and p.prokind = 'f'
        and p.prorettype <> 'trigger'::regtype
      order by 1`;
    for (const fn of internal) {
      const args = (fn.types as string[]).map((t) => `${literal[t] ?? "null"}::${t}`);
      const call = `select ai_queue.${fn.proname}(${args.join(", ")})`;
      const allowed = fn.proname === "owns_project";
      for (const [role, sub] of [["anon", null], ["authenticated", other]] as const) {
        let got: Result;
        try {
          got = (await attempt(sql, role, sub, call)).result;
        } catch {
          got = "allowed"; // it ran, and failed on its arguments
        }
        expect(
          `${role} execute ai_queue.${fn.proname}`,
          got === "denied" ? "denied" : "allowed",
          allowed && role === "authenticated" ? "allowed" : "denied",
        );
      }
    }

    // ---- public functions, through the PostgREST stand-in with real JWTs
    const standin = await startPostgrestStandin({
      databaseUrl: DATABASE_URL,
      jwtSecret: SECRETS.jwtSecret,
      poolSize: 2,
    });
    const now = Math.floor(Date.now() / 1000);
    const jwt = async (claims: Record<string, unknown>, secret = SECRETS.jwtSecret) =>
      rememberSecret(await signJwt({ iat: now, exp: now + 600, ...claims }, secret));
    const tokens = {
      anon: await jwt({ role: "anon" }),
      other: await jwt({ role: "authenticated", sub: other }),
      owner: await jwt({ role: "authenticated", sub: owner }),
      service: await jwt({ role: "service_role" }),
    };
    const rpc = async (
      fn: string,
      token: string,
      args: Record<string, unknown>,
      headers: Record<string, string> = {},
    ) => {
      const res = await fetch(`${standin.url}/rest/v1/rpc/${fn}`, {
        method: "POST",
        body: JSON.stringify(args),
        headers: {
          "content-type": "application/json",
          apikey: tokens.anon,
          authorization: `Bearer ${token}`,
          ...headers,
        },
      });
      const text = await res.text();
      capture("standin-bodies.log", `${fn}: ${res.status} ${text}`);
      let code = "";
      try {
        code = String(JSON.parse(text)?.code ?? "");
      } catch { /* a result, not an error */ }
      return { status: res.status, code };
    };
    let functionCalls = 0;
    try {
      const functions = await sql`
        select p.proname,
               coalesce(array_agg(a.name order by a.i) filter (where a.name is not null), '{}')
                 as names,
               coalesce(array_agg(pg_catalog.format_type(a.t, null) order by a.i)
                 filter (where a.name is not null), '{}') as types
        from pg_catalog.pg_proc p
        join pg_catalog.pg_namespace n on n.oid = p.pronamespace
        left join lateral (
          select x.name, x.t, x.i
          from unnest(p.proargnames[1:p.pronargs - p.pronargdefaults],
                      p.proargtypes[0:p.pronargs - p.pronargdefaults - 1])
               with ordinality x (name, t, i)
        ) a on true
        where n.nspname = 'public' and p.prokind = 'f'
          and not exists (select 1 from pg_catalog.pg_depend d
                          where d.objid = p.oid and d.deptype = 'e')
        group by p.oid, p.proname order by 1`;
      // Signed-in users may enqueue, cancel and retry their own tasks; nothing else.
      const ownerMay = new Set(["enqueue_ai_task", "cancel_ai_task", "retry_ai_task"]);
      for (const fn of functions) {
        const args = Object.fromEntries(
          (fn.names as string[]).map((
            name,
            i,
          ) => [name, argValue(name, (fn.types as string[])[i], f, fn.proname)]),
        );
        const anon = await rpc(fn.proname, tokens.anon, args);
        const asOther = await rpc(fn.proname, tokens.other, args);
        const asOwner = await rpc(fn.proname, tokens.owner, args);
        const asService = await rpc(fn.proname, tokens.service, args);
        functionCalls += 4;
        const denied = (r: { status: number; code: string }) => r.code === "42501";
        const hidden = (r: { status: number; code: string }) => r.code === "AQ002";
        expect(`anon rpc ${fn.proname}`, denied(anon) ? "denied" : "allowed", "denied");
        // Another user's ids look like ids that do not exist.
        expect(
          `other user rpc ${fn.proname}`,
          denied(asOther) || hidden(asOther) ? "denied" : "allowed",
          "denied",
        );
        expect(
          `owner rpc ${fn.proname}`,
          asOwner.status < 300 ? "allowed" : "denied",
          ownerMay.has(fn.proname) ? "allowed" : "denied",
        );
        if (!ownerMay.has(fn.proname)) {
          checkEqual(asOwner.code, "42501", `owner rpc ${fn.proname}: denied by privilege`);
        }
        expect(`service rpc ${fn.proname}`, denied(asService) ? "denied" : "allowed", "allowed");
      }

      // Tokens that must not get in at all.
      const forged = [
        [
          "signed with another secret",
          await jwt({ role: "service_role" }, "another-secret-that-is-long-enough-000000"),
        ],
        [
          "alg none",
          rememberSecret(`${
            btoa(JSON.stringify({ alg: "none", typ: "JWT" }))
              .replace(/=+$/, "")
          }.${
            btoa(JSON.stringify({ role: "service_role" }))
              .replace(/=+$/, "")
          }.`),
        ],
        ["role postgres", await jwt({ role: "postgres" })],
        ["expired", await jwt({ role: "service_role", iat: now - 7200, exp: now - 3600 })],
        ["garbage", "not-a-jwt"],
      ];
      for (const [name, token] of forged) {
        const r = await rpc("claim_ai_task", token, { worker_id: "intruder" });
        functionCalls++;
        expect(`token ${name}`, r.status === 401 ? "denied" : "allowed", "denied");
      }
      const profile = await rpc("reap_expired_leases", tokens.service, {}, {
        "content-profile": "ai_queue",
      });
      functionCalls++;
      expect("rpc into schema ai_queue", profile.status === 406 ? "denied" : "allowed", "denied");
    } finally {
      await standin.close();
    }

    // ---- a caller's search_path cannot steer a SECURITY DEFINER function
    await sql.unsafe(`
      drop schema if exists chaos_evil cascade;
      create schema chaos_evil;
      create table chaos_evil.hits (fn text, at timestamptz default now());
      create table chaos_evil.ai_tasks (like public.ai_tasks);
      create table chaos_evil.projects (like public.projects);
      grant usage on schema chaos_evil to anon, authenticated, service_role;
      grant all on all tables in schema chaos_evil to anon, authenticated, service_role;`);
    const shadows: [string, string, string][] = [
      ["btrim(text)", "text", "$1"],
      ["length(text)", "integer", "1"],
      ["octet_length(text)", "integer", "1"],
      ["jsonb_typeof(jsonb)", "text", "'object'"],
      ["now()", "timestamptz", "'2000-01-01'"],
      ["gen_random_uuid()", "uuid", "'00000000-0000-4000-8000-000000000000'"],
      ["pg_notify(text, text)", "void", ""],
      ["hashtext(text)", "integer", "0"],
      ["array_to_string(anyarray, text)", "text", "''"],
    ];
    for (const [signature, returns, value] of shadows) {
      await sql.unsafe(`
        create function chaos_evil.${signature} returns ${returns}
        language plpgsql security definer as $f$
        begin
          insert into chaos_evil.hits (fn) values ('${signature}');
          return ${value};
        end $f$;
        grant execute on function chaos_evil.${signature} to public;`);
    }
    const paths = ["chaos_evil, pg_catalog, public", "pg_temp, chaos_evil, pg_catalog, public"];
    let steered = 0;
    try {
      for (const path of paths) {
        const enq = await attempt(
          sql,
          "authenticated",
          owner,
          `select count(*) as n from
          public.enqueue_ai_task('${ownProject}', 'chat_reply', '{}', 'steer me')`,
          path,
        );
        const cancel = await attempt(
          sql,
          "authenticated",
          owner,
          `select count(*) as n from
          public.cancel_ai_task('${queued}')`,
          path,
        );
        const claim = await attempt(
          sql,
          "service_role",
          null,
          `select count(*) as n from
          public.claim_ai_task('chaos-steer', null, 5, 30)`,
          path,
        );
        check(
          enq.result === "allowed" && cancel.result === "allowed" &&
            claim.result === "allowed",
          `the calls run with search_path ${path}`,
        );
      }
      // Rolled back with the calls: count what the shadows saw in a committed probe.
      await sql.begin(async (tx) => {
        await tx`select pg_catalog.set_config('search_path', ${paths[0]}, true)`;
        await tx`select public.enqueue_ai_task(${ownProject}::uuid, 'chat_reply', '{}', 'steer')`;
        const [{ n }] = await tx`select count(*)::int as n from chaos_evil.hits`;
        const [{ planted }] = await tx`select count(*)::int as planted from chaos_evil.ai_tasks`;
        steered = n + planted;
        throw new Rollback(0);
      }).catch((e) => {
        if (!(e instanceof Rollback)) throw e;
      });
      tries++;
      if (steered > 0) wrong.push(`search_path steered a function ${steered} time(s)`);
      // The probe itself can see a shadow: a direct call of an unqualified name does hit it.
      const [{ direct }] = await sql.begin(async (tx) => {
        await tx`select pg_catalog.set_config('search_path', ${paths[0]}, true)`;
        await tx.unsafe(`select btrim('x')`);
        return await tx`select count(*)::int as direct from chaos_evil.hits`;
      });
      check(direct === 1, "the shadow functions are live (an unqualified call reaches them)");
    } finally {
      await sql.unsafe(`drop schema chaos_evil cascade`);
    }

    const line =
      `attempts=${tries} (tables ${tables.length} in public and ai_queue, public functions via stand-in: ` +
      `${functionCalls} calls, ai_queue functions ${internal.length}) ` +
      `wrongly_allowed_or_denied=${wrong.length} search_path_steered=${steered}`;
    say(line);
    for (const w of wrong) say(`  ${w}`);
    checkEqual(wrong, [], "outcomes that differ from the design");
    return { figures: line };
  },
};
