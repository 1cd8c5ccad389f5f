// The chaos suite: real runner processes, a real database, real faults.
//   deno run -A chaos/run.ts [scenario ...]     (make test-chaos rebuilds the database first)
// Each scenario asserts and prints its figures as one line; the suite ends
// with a summary table and `N passed, N failed`, and exits 1 when any failed.
// Every line any process printed is kept in CHAOS_LOG_DIR (a temporary
// directory by default); the last scenario scans all of it for secrets.

import { connect, LOG_DIR, say, type Scenario } from "./lib.ts";

// In running order; the secret scan reads what all the others printed.
const MODULES: Record<string, string> = {
  load: "./load.ts",
  crash: "./crash.ts",
  db_restart: "./db_restart.ts",
  model_faults: "./model_faults.ts",
  shutdown: "./shutdown.ts",
  bad_input: "./bad_input.ts",
  break_in: "./break_in.ts",
  secret_scan: "./secret_scan.ts",
};

const wanted = Deno.args.length > 0 ? Deno.args : Object.keys(MODULES);
const unknown = wanted.filter((w) => !(w in MODULES));
if (unknown.length > 0) {
  console.error(`unknown scenario ${unknown[0]}; known: ${Object.keys(MODULES).join(", ")}`);
  Deno.exit(2);
}
const scenarios: Scenario[] = [];
for (const name of Object.keys(MODULES).filter((n) => wanted.includes(n))) {
  scenarios.push((await import(MODULES[name])).scenario);
}

say(`chaos: logs of every process in ${LOG_DIR}`);
const sql = connect(4);
const results: { name: string; ok: boolean; seconds: number; line: string }[] = [];
for (const scenario of scenarios) {
  say(`--- ${scenario.name}`);
  const started = performance.now();
  let ok = false;
  let line: string;
  try {
    line = (await scenario.run(sql)).figures;
    ok = true;
  } catch (error) {
    line = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
    if (error instanceof Error && error.name !== "AssertionError" && error.stack) {
      say(error.stack);
    }
  }
  const seconds = (performance.now() - started) / 1000;
  say(`${ok ? "PASS" : "FAIL"} ${scenario.name} (${seconds.toFixed(1)} s): ${line}`);
  results.push({ name: scenario.name, ok, seconds, line });
}
await sql.end({ timeout: 5 });

const width = Math.max(...results.map((r) => r.name.length));
say("");
say(`${"scenario".padEnd(width)}  result  seconds  figures`);
for (const r of results) {
  say(
    `${r.name.padEnd(width)}  ${(r.ok ? "pass" : "FAIL").padEnd(6)}  ` +
      `${r.seconds.toFixed(1).padStart(7)}  ${r.line}`,
  );
}
const passed = results.filter((r) => r.ok).length;
say("");
say(`${passed} passed, ${results.length - passed} failed`);
Deno.exit(passed === results.length ? 0 : 1);
