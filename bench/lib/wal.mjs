// WAL written for one database between two LSNs. pg_current_wal_lsn() is
// cluster-wide, and other sessions (other engineers' tests) write WAL at the
// same time, so the difference of two LSNs overstates a queue's cost. Instead
// the records in the range are read with pg_waldump and kept when they touch
// a relation of the database (rel <tablespace>/<database oid>/<relation>) or
// belong to a transaction that did; that keeps each transaction's COMMIT
// record, which names no relation. Records of no database (checkpoints,
// running-xacts snapshots) are left out. When pg_waldump or the WAL directory
// cannot be read, the plain LSN difference is returned, marked as such.

import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { promisify } from "node:util";

const run = promisify(execFile);
const WALDUMP = "/usr/lib/postgresql/15/bin/pg_waldump";

const LINE = /^rmgr: (\S+)\s+len \(rec\/tot\):\s*(\d+)\/\s*(\d+), tx:\s*(\d+), lsn: [^,]+, prev [^,]+, desc: (\S+)(.*)$/;
const REL = /rel \d+\/(\d+)\/\d+/g;

/**
 * Bytes of WAL that database `dbOid` caused between `startLsn` and `endLsn`.
 * Returns { bytes, commits, records, method } where commits counts COMMIT
 * records of its transactions (each one a WAL flush under synchronous_commit).
 * Transactions in `excludeXids` (the harness's enqueue) are left out.
 */
export async function walForDatabase({
  walDir, startLsn, endLsn, dbOid, lsnDiffBytes, excludeXids = [],
}) {
  if (!walDir || !existsSync(WALDUMP) || !existsSync(walDir)) {
    return { bytes: lsnDiffBytes, commits: null, records: null, method: "lsn-diff" };
  }
  let stdout;
  try {
    ({ stdout } = await run(WALDUMP, ["-p", walDir, "-s", startLsn, "-e", endLsn],
      { maxBuffer: 1 << 30 }));
  } catch (error) {
    // pg_waldump exits non-zero at the end of the readable WAL but has printed
    // the records before it; anything else falls back to the LSN difference.
    stdout = error.stdout;
    if (!stdout) {
      return { bytes: lsnDiffBytes, commits: null, records: null, method: "lsn-diff" };
    }
  }

  const db = String(dbOid);
  const parsed = [];
  const ours = new Set();
  for (const line of stdout.split("\n")) {
    const m = LINE.exec(line);
    if (!m) continue;
    const [, rmgr, , tot, tx, desc, rest] = m;
    let touches = false;
    for (const r of rest.matchAll(REL)) if (r[1] === db) touches = true;
    parsed.push({ rmgr, tot: Number(tot), tx, desc, touches });
    if (touches && tx !== "0") ours.add(tx);
  }

  // The harness's own bulk enqueue falls in the range; it is not the worker's.
  for (const xid of excludeXids) ours.delete(String(xid));
  const excluded = new Set(excludeXids.map(String));

  let bytes = 0, commits = 0, records = 0;
  for (const r of parsed) {
    if (excluded.has(r.tx)) continue;
    if (!(r.touches || (r.tx !== "0" && ours.has(r.tx)))) continue;
    bytes += r.tot;
    records++;
    if (r.rmgr === "Transaction" && r.desc.startsWith("COMMIT")) commits++;
  }
  return { bytes, commits, records, method: "pg_waldump" };
}
