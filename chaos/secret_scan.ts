// Secret scan: everything the suite's processes printed (every worker's
// stdout and stderr, the fake models, the HTTP handler's log, the HTTP and
// PostgREST stand-in bodies, the suite's own output) is searched for the
// keys, secrets and JWTs this run used, and for anything shaped like a JWT
// or an OpenRouter key. Run last, so it reads what all the others wrote.

import { allSecrets, check, checkEqual, LOG_DIR, say, type Scenario, SECRETS } from "./lib.ts";

// A JWT (header.payload.signature, the first two base64url JSON objects),
// a bearer header with its token, or an OpenRouter-style key.
const SHAPES = [
  /eyJ[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]*/g,
  /bearer\s+[\w.-]{16,}/gi,
  /sk-or-[\w-]{8,}/g,
];

function hits(text: string, secrets: string[]): string[] {
  const found: string[] = [];
  for (const secret of secrets) if (text.includes(secret)) found.push(secret.slice(0, 12));
  for (const shape of SHAPES) for (const m of text.matchAll(shape)) found.push(m[0].slice(0, 12));
  return found;
}

export const scenario: Scenario = {
  name: "secret_scan",
  run() {
    const secrets = allSecrets();
    // The scanner must find what it looks for, or zero hits would prove nothing.
    checkEqual(
      hits(`x ${SECRETS.openrouterKey} y`, secrets).length >= 1,
      true,
      "the scan finds a planted key",
    );
    checkEqual(
      hits("authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoiYW5vbiJ9.abc", []).length >= 1,
      true,
      "the scan finds a planted JWT",
    );

    let files = 0, bytes = 0;
    const leaks: string[] = [];
    for (const entry of Deno.readDirSync(LOG_DIR)) {
      if (!entry.isFile) continue;
      const text = Deno.readTextFileSync(`${LOG_DIR}/${entry.name}`);
      files++;
      bytes += text.length;
      for (const h of hits(text, secrets)) leaks.push(`${entry.name}: ${h}...`);
    }
    const line = `files=${files} bytes=${bytes} secrets_searched=${secrets.length} ` +
      `shapes_searched=${SHAPES.length} hits=${leaks.length}`;
    say(line);
    for (const leak of leaks.slice(0, 20)) say(`  ${leak}`);
    check(files > 0, `output was captured in ${LOG_DIR}`);
    checkEqual(leaks.length, 0, "secrets or tokens in the captured output");
    return Promise.resolve({ figures: line });
  },
};
