// Shared pieces of the multi-connection database tests (db/*_test.ts): the
// migrated database they run against and one-connection clients, so that each
// worker of a test is a session of its own.

import postgres from "postgres";
export { assert, assertEquals, sleep } from "../runner/testing/assert.ts";

export type Sql = ReturnType<typeof postgres>;

const url = Deno.env.get("DATABASE_URL");
if (!url) {
  throw new Error("DATABASE_URL is not set: point it at a migrated database, e.g. ai_tasks_test");
}

/** A client with exactly one connection, named in pg_stat_activity. */
export function connect(applicationName: string): Sql {
  return postgres(url!, {
    max: 1,
    onnotice: () => {},
    connection: { application_name: applicationName },
  });
}
