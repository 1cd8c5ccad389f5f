// The local cluster as the benchmark uses it: scratch databases made and
// dropped per run, the migration of our schema, and the facts a results file
// records (server version, durability settings).

import { execFile } from "node:child_process";
import { promisify } from "node:util";
import path from "node:path";
import postgres from "postgres";

const run = promisify(execFile);

export const PGPORT = Number(process.env.PGPORT ?? 54329);
export const HOST = "127.0.0.1";
export const urlFor = (db, port = PGPORT) => `postgres://postgres@${HOST}:${port}/${db}`;

/** A postgres.js client that never prints notices (drop database ... if exists). */
export function connect(db, options = {}) {
  return postgres(urlFor(db), { onnotice: () => {}, max: 2, ...options });
}

export async function recreateDatabase(admin, name) {
  await admin.unsafe(`drop database if exists ${name} with (force)`);
  await admin.unsafe(`create database ${name}`);
}

export async function dropDatabase(admin, name) {
  await admin.unsafe(`drop database if exists ${name} with (force)`);
}

/** Our migrations and db/functions, applied the way every deployment applies them. */
export async function migrateOurs(root, name) {
  try {
    await run(path.join(root, "scripts/migrate.sh"), [], {
      env: { ...process.env, DATABASE_URL: urlFor(name) },
    });
  } catch (error) {
    throw new Error(`migrating ${name} failed: ${error.stderr || error.message}`);
  }
}

/** Server facts for the results file. */
export async function serverFacts(admin) {
  const [row] = await admin`
    select current_setting('server_version') as version,
           current_setting('fsync') as fsync,
           current_setting('synchronous_commit') as synchronous_commit,
           current_setting('shared_buffers') as shared_buffers,
           current_setting('wal_sync_method') as wal_sync_method,
           current_setting('data_directory') as data_directory`;
  return row;
}

export async function walLsn(sql) {
  const [row] = await sql`select pg_current_wal_lsn()::text as lsn`;
  return row.lsn;
}

export async function lsnDiff(sql, a, b) {
  const [row] = await sql`select pg_wal_lsn_diff(${b}::pg_lsn, ${a}::pg_lsn)::bigint as d`;
  return Number(row.d);
}

export async function databaseOid(sql, name) {
  const [row] = await sql`select oid::int as oid from pg_database where datname = ${name}`;
  return row.oid;
}
