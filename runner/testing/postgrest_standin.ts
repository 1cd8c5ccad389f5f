// A stand-in for PostgREST's RPC endpoint, so the runner's supabase-js path
// (`createClient(url, key).rpc(fn, args)`) runs against a real database in
// tests. PostgREST itself cannot be installed on this machine; this serves
// only what our callers use: POST (and GET) /rest/v1/rpc/<fn> in schema
// public, JWT roles, and PostgREST's error bodies and HTTP statuses.
//
// Each request runs in one transaction, as PostgREST does:
//   select set_config('role', <role>, true),
//          set_config('request.jwt.claims', <claims>, true), ...
//   select ... public.<fn>(arg => _args.arg, ...) from json_to_record($1) _args(...)
// The role comes from a verified HS256 JWT and must be anon, authenticated
// or service_role: the pool connects as a superuser, so any other role name
// would be a way up.
//
// Not served (PostgREST has them, our callers do not use them): tables and
// views, filters/select/order on RPC results, Prefer headers (count,
// params=single-object, tx), HEAD, array bodies (bulk calls), functions
// taking one unnamed json parameter, and schema-cache reload by NOTIFY.
import postgres from "postgres";
import { serveOnLoopback } from "./serve.ts";

const API_ROLES = new Set(["anon", "authenticated", "service_role"]);
// PostgREST accepts tokens up to 30 s early or late to absorb clock skew.
const CLOCK_SKEW_S = 30;
const encoder = new TextEncoder();

export interface PostgrestStandin {
  /** Base URL for `createClient(url, key)`; the API lives under /rest/v1. */
  url: string;
  close(): Promise<void>;
}

export interface PostgrestStandinOptions {
  databaseUrl: string;
  jwtSecret: string;
  port?: number;
  /** Connections in the pool (default 4). */
  poolSize?: number;
}

interface ApiError {
  code: string;
  message: string;
  details: string | null;
  hint: string | null;
}

class HttpError extends Error {
  constructor(readonly status: number, readonly body: ApiError, readonly wwwAuth?: string) {
    super(body.message);
    this.name = "HttpError";
  }
}

function apiError(
  status: number,
  code: string,
  message: string,
  extra: { details?: string | null; hint?: string | null; wwwAuth?: string } = {},
): HttpError {
  return new HttpError(
    status,
    { code, message, details: extra.details ?? null, hint: extra.hint ?? null },
    extra.wwwAuth,
  );
}

// ---------------------------------------------------------------------------
// JWT (HS256 only, via Web Crypto)

function base64url(bytes: Uint8Array): string {
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function fromBase64url(text: string): Uint8Array<ArrayBuffer> {
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/");
  const bin = atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4));
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

function hmacKey(secret: string, usage: "sign" | "verify"): Promise<CryptoKey> {
  return crypto.subtle.importKey(
    "raw",
    encoder.encode(secret),
    { name: "HMAC", hash: "SHA-256" },
    false,
    [usage],
  );
}

/** Signs claims as an HS256 JWT, as Supabase's anon, service_role and user keys are. */
export async function signJwt(claims: Record<string, unknown>, secret: string): Promise<string> {
  const header = base64url(encoder.encode(JSON.stringify({ alg: "HS256", typ: "JWT" })));
  const payload = base64url(encoder.encode(JSON.stringify(claims)));
  const key = await hmacKey(secret, "sign");
  const sig = await crypto.subtle.sign("HMAC", key, encoder.encode(`${header}.${payload}`));
  return `${header}.${payload}.${base64url(new Uint8Array(sig))}`;
}

function invalidToken(code: string, message: string): HttpError {
  // Quotes in the description would break the header's quoted-string.
  const desc = message.replace(/"/g, "'");
  return apiError(401, code, message, {
    wwwAuth: `Bearer error="invalid_token", error_description="${desc}"`,
  });
}

async function verifyJwt(token: string, key: CryptoKey): Promise<Record<string, unknown>> {
  const parts = token.split(".");
  if (parts.length !== 3) {
    throw invalidToken("PGRST301", `Expected 3 parts in JWT; got ${parts.length}`);
  }

  let header, claims;
  try {
    header = JSON.parse(new TextDecoder().decode(fromBase64url(parts[0])));
    claims = JSON.parse(new TextDecoder().decode(fromBase64url(parts[1])));
  } catch {
    throw invalidToken("PGRST301", "JWT cannot be decoded");
  }
  // Only HS256: "none" or an asymmetric alg with our secret as its key would
  // let anyone mint tokens.
  if (header?.alg !== "HS256") {
    throw invalidToken("PGRST301", `JWT alg must be HS256, got ${String(header?.alg)}`);
  }
  if (claims === null || typeof claims !== "object" || Array.isArray(claims)) {
    throw invalidToken("PGRST301", "JWT claims must be a JSON object");
  }

  let sig: Uint8Array<ArrayBuffer>;
  try {
    sig = fromBase64url(parts[2]);
  } catch {
    throw invalidToken("PGRST301", "JWT signature cannot be decoded");
  }
  const ok = await crypto.subtle.verify(
    "HMAC",
    key,
    sig,
    encoder.encode(`${parts[0]}.${parts[1]}`),
  );
  if (!ok) throw invalidToken("PGRST301", "JWT signature does not match");

  const now = Date.now() / 1000;
  if (typeof claims.exp === "number" && now - CLOCK_SKEW_S >= claims.exp) {
    throw invalidToken("PGRST303", "JWT expired");
  }
  if (typeof claims.nbf === "number" && now + CLOCK_SKEW_S < claims.nbf) {
    throw invalidToken("PGRST303", "JWT not yet valid");
  }
  return claims;
}

// PostgREST takes the token from Authorization; Supabase's gateway also
// accepts the key alone in `apikey`, which is what supabase-js always sends.
function tokenOf(req: Request): string {
  const auth = req.headers.get("authorization");
  if (auth !== null) {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(auth);
    if (!m) throw invalidToken("PGRST301", "Authorization header must be 'Bearer <jwt>'");
    return m[1];
  }
  const apikey = req.headers.get("apikey");
  if (apikey) return apikey;
  throw apiError(401, "PGRST302", "No API key found in request", {
    hint: "Send the anon or service_role key in the apikey header or as a Bearer token.",
  });
}

// ---------------------------------------------------------------------------
// Function lookup

interface FunctionArg {
  name: string;
  type: string;
  hasDefault: boolean;
}

interface FunctionInfo {
  args: FunctionArg[];
  returnsSet: boolean;
  returnsVoid: boolean;
}

// deno-lint-ignore no-explicit-any
function describeFunction(row: any): FunctionInfo {
  const names: string[] = row.names ?? [];
  const types: string[] = row.types ?? [];
  const modes: string[] | null = row.modes;
  const inputs: { name: string; type: string }[] = [];
  types.forEach((type, i) => {
    const mode = modes ? modes[i] : "i";
    if (mode === "i" || mode === "b" || mode === "v") inputs.push({ name: names[i] ?? "", type });
  });
  // Defaults belong to the last pronargdefaults input arguments.
  const firstDefault = inputs.length - Number(row.ndefaults);
  return {
    args: inputs.map((a, i) => ({ ...a, hasDefault: i >= firstDefault })),
    returnsSet: row.returns_set,
    returnsVoid: row.returns_void,
  };
}

// The overload whose input names cover the given keys and whose required
// arguments are all given; none -> PGRST202, several -> PGRST203.
function pickFunction(fn: string, candidates: FunctionInfo[], keys: string[]): FunctionInfo {
  const matches = candidates.filter((c) =>
    keys.every((k) => c.args.some((a) => a.name === k)) &&
    c.args.every((a) => a.hasDefault || keys.includes(a.name))
  );
  if (matches.length === 1) return matches[0];

  const sorted = [...keys].sort();
  if (matches.length === 0) {
    const known = candidates.map((c) => `public.${fn}(${c.args.map((a) => a.name).join(", ")})`);
    throw apiError(
      404,
      "PGRST202",
      `Could not find the function public.${fn}(${sorted.join(", ")}) in the schema cache`,
      {
        details: `Searched for the function public.${fn} with parameters ${
          sorted.join(", ") || "(none)"
        }, but no matches were found in the schema cache.`,
        hint: known.length > 0 ? `Perhaps you meant to call ${known.join(" or ")}` : null,
      },
    );
  }
  throw apiError(
    300,
    "PGRST203",
    `Could not choose the best candidate function between: ${
      matches.map((c) => `public.${fn}(${c.args.map((a) => `${a.name} => ${a.type}`).join(", ")})`)
        .join(", ")
    }`,
    { hint: "Overloaded functions with the same argument names are ambiguous." },
  );
}

const LOOKUP_SQL = `
  select p.proretset as returns_set,
         p.prorettype = 'pg_catalog.void'::pg_catalog.regtype as returns_void,
         p.pronargdefaults as ndefaults,
         p.proargnames as names,
         p.proargmodes::text[] as modes,
         array(
           select pg_catalog.format_type(t.oid, null)
           from unnest(coalesce(p.proallargtypes, p.proargtypes::oid[]))
                with ordinality as t(oid, ord)
           order by t.ord
         ) as types
  from pg_catalog.pg_proc p
  where p.pronamespace = 'public'::pg_catalog.regnamespace
    and p.proname = $1
    and p.prokind = 'f'`;

function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

// The call in PostgREST's shape: arguments converted from the JSON body by
// json_to_record, so values coerce exactly as PostgREST coerces them.
function callSql(fn: string, info: FunctionInfo, keys: string[]): string {
  const given = info.args.filter((a) => keys.includes(a.name));
  const named = given.map((a) => `${quoteIdent(a.name)} => _args.${quoteIdent(a.name)}`);
  const call = `public.${quoteIdent(fn)}(${named.join(", ")})`;
  const from = given.length === 0
    ? ""
    : ` from pg_catalog.json_to_record($1::text::json) as _args(${
      given.map((a) => `${quoteIdent(a.name)} ${a.type}`).join(", ")
    })`;

  if (info.returnsVoid) return `select ${call} is null as done${from}`;
  if (info.returnsSet) {
    const source = given.length === 0
      ? ` from ${call} as _t`
      : `${from} cross join lateral ${call} as _t`;
    return `select coalesce(pg_catalog.json_agg(_t), '[]')::text as body, count(*)::int as n${source}`;
  }
  return `select pg_catalog.to_json(${call})::text as body${from}`;
}

// ---------------------------------------------------------------------------
// Errors from the database, with PostgREST's status mapping

function statusForSqlState(code: string, role: string): number {
  if (/^PT\d{3}$/.test(code)) return Number(code.slice(2));
  if (code === "42501") return role === "anon" ? 401 : 403;
  if (code === "42883" || code === "42P01") return 404;
  if (code === "23503" || code === "23505") return 409;
  if (code === "25006") return 405;
  if (code === "P0001") return 400;
  if (code === "42P17") return 500;
  const cls = code.slice(0, 2);
  if (cls === "08" || cls === "53") return 503;
  if (cls === "0L" || cls === "0P" || cls === "28") return 403;
  if (
    ["09", "25", "2D", "38", "39", "3B", "40", "54", "55", "57", "58", "F0", "HV", "P0", "XX"]
      .includes(cls)
  ) return 500;
  return 400;
}

// deno-lint-ignore no-explicit-any
function fromDatabaseError(e: any, role: string): HttpError {
  if (e instanceof HttpError) return e;
  if (e instanceof postgres.PostgresError) {
    const code = String(e.code);
    return apiError(statusForSqlState(code, role), code, e.message, {
      details: e.detail ?? null,
      hint: e.hint ?? null,
    });
  }
  // postgres.js reports a lost or refused connection with a Node-style code.
  if (typeof e?.code === "string" && /^(ECONN|CONNECT_TIMEOUT|CONNECTION_)/.test(e.code)) {
    return apiError(503, "PGRST000", "Could not connect with the database", {
      details: e.code,
    });
  }
  return apiError(500, "PGRST000", "Unexpected error in the PostgREST stand-in", {
    details: e instanceof Error ? e.message : String(e),
  });
}

function json(status: number, body: unknown, extra: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json; charset=utf-8", ...extra },
  });
}

// ---------------------------------------------------------------------------

export async function startPostgrestStandin(
  opts: PostgrestStandinOptions,
): Promise<PostgrestStandin> {
  if (!opts.jwtSecret || opts.jwtSecret.length < 32) {
    throw new RangeError("jwtSecret must be at least 32 characters, as Supabase requires");
  }
  const key = await hmacKey(opts.jwtSecret, "verify");
  const sql = postgres(opts.databaseUrl, {
    max: opts.poolSize ?? 4,
    onnotice: () => {},
    connection: { application_name: "postgrest_standin" },
  });
  // Like PostgREST's schema cache: looked up once per function name; a miss
  // or a call that no longer resolves looks again.
  const functions = new Map<string, FunctionInfo[]>();

  async function lookup(fn: string, fresh: boolean): Promise<FunctionInfo[]> {
    const cached = functions.get(fn);
    if (cached && !fresh) return cached;
    const rows = await sql.unsafe(LOOKUP_SQL, [fn]);
    const found = rows.map(describeFunction);
    if (found.length > 0) functions.set(fn, found);
    return found;
  }

  async function rpc(req: Request, fn: string): Promise<Response> {
    const claims = await verifyJwt(tokenOf(req), key);
    const role = claims.role === undefined ? "anon" : String(claims.role);
    if (!API_ROLES.has(role)) {
      throw invalidToken(
        "PGRST301",
        `JWT role ${role} is not one of anon, authenticated, service_role`,
      );
    }

    const profile = req.headers.get(req.method === "GET" ? "accept-profile" : "content-profile");
    if (profile !== null && profile !== "public") {
      throw apiError(406, "PGRST106", `Invalid schema: ${profile}`, {
        hint: "Only the following schemas are exposed: public",
      });
    }

    let args: Record<string, unknown>;
    if (req.method === "GET") {
      args = Object.fromEntries(new URL(req.url).searchParams);
    } else {
      const text = await req.text();
      let parsed: unknown = {};
      try {
        if (text.trim() !== "") parsed = JSON.parse(text);
      } catch {
        throw apiError(400, "PGRST102", "Empty or invalid json");
      }
      if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
        throw apiError(400, "PGRST102", "RPC body must be a JSON object of named arguments", {
          details: `got ${Array.isArray(parsed) ? "an array" : typeof parsed}`,
        });
      }
      args = parsed as Record<string, unknown>;
    }
    const keys = Object.keys(args);

    let candidates = await lookup(fn, false);
    let info: FunctionInfo;
    try {
      info = pickFunction(fn, candidates, keys);
    } catch (e) {
      if (!(e instanceof HttpError) || e.body.code !== "PGRST202") throw e;
      candidates = await lookup(fn, true);
      info = pickFunction(fn, candidates, keys);
    }

    const query = callSql(fn, info, keys);
    const headers: Record<string, string> = {};
    for (const [k, v] of req.headers) {
      // Credentials stay out of the session, where any function could read them.
      if (k !== "authorization" && k !== "apikey" && k !== "cookie") headers[k] = v;
    }
    const path = new URL(req.url).pathname;

    try {
      // supabase-js's .single() asks for one object instead of an array.
      const single = (req.headers.get("accept") ?? "").includes(
        "application/vnd.pgrst.object+json",
      );
      const rows = await sql.begin(
        req.method === "GET" ? "read only" : "read write",
        async (tx) => {
          await tx.unsafe(
            `select pg_catalog.set_config('role', $1, true),
                  pg_catalog.set_config('request.jwt.claims', $2, true),
                  pg_catalog.set_config('request.method', $3, true),
                  pg_catalog.set_config('request.path', $4, true),
                  pg_catalog.set_config('request.headers', $5, true)`,
            [role, JSON.stringify(claims), req.method, path, JSON.stringify(headers)],
          );
          const result = await tx.unsafe(query, keys.length > 0 ? [JSON.stringify(args)] : []);
          // Thrown inside the transaction so that, as in PostgREST, the
          // function's writes are rolled back with the refused answer.
          if (single && info.returnsSet && result[0].n !== 1) {
            throw apiError(
              406,
              "PGRST116",
              "JSON object requested, multiple (or no) rows returned",
              {
                details: `The result contains ${result[0].n} rows`,
              },
            );
          }
          return result;
        },
      );

      // PostgREST answers a void function with 204 and no body.
      if (info.returnsVoid) return new Response(null, { status: 204 });
      let body: string = rows[0]?.body ?? "null";
      if (single && info.returnsSet) body = body.slice(1, -1);
      return new Response(body, {
        status: 200,
        headers: { "content-type": "application/json; charset=utf-8" },
      });
    } catch (e) {
      // The function changed since it was cached: look it up afresh next time.
      if (e instanceof postgres.PostgresError && (e.code === "42883" || e.code === "42725")) {
        functions.delete(fn);
      }
      throw fromDatabaseError(e, role);
    }
  }

  const handler = async (req: Request): Promise<Response> => {
    try {
      const m = /^\/rest\/v1\/rpc\/([^/]+)$/.exec(new URL(req.url).pathname);
      if (!m) {
        throw apiError(404, "PGRST125", `Invalid path specified in request URL`, {
          details: "The stand-in serves only /rest/v1/rpc/<function>.",
        });
      }
      if (req.method !== "POST" && req.method !== "GET") {
        throw apiError(405, "PGRST117", `Unsupported HTTP method: ${req.method}`);
      }
      let fn: string;
      try {
        fn = decodeURIComponent(m[1]);
      } catch {
        throw apiError(404, "PGRST125", "Invalid path specified in request URL", {
          details: "The function name is not valid percent-encoding.",
        });
      }
      return await rpc(req, fn);
    } catch (e) {
      const err = e instanceof HttpError ? e : fromDatabaseError(e, "anon");
      return json(err.status, err.body, err.wwwAuth ? { "www-authenticate": err.wwwAuth } : {});
    }
  };

  const { server, port } = await serveOnLoopback(handler, opts.port);

  return {
    url: `http://127.0.0.1:${port}`,
    close: async () => {
      await server.shutdown();
      await sql.end({ timeout: 5 });
    },
  };
}
