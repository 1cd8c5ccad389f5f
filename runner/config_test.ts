// Configuration: defaults that work locally, and a bad value stops the runner
// with an error naming the variable, the rule and the value.

import { ConfigError, describeDatabase, loadConfig } from "./config.ts";
import { assert, assertEquals, assertMatch } from "./test_support.ts";

function configError(env: Record<string, string>): ConfigError {
  try {
    loadConfig(env);
  } catch (error) {
    if (error instanceof ConfigError) return error;
    throw error;
  }
  throw new Error(`expected a ConfigError for ${JSON.stringify(env)}`);
}

Deno.test("an empty environment gives the local defaults and the offline model", () => {
  const config = loadConfig({});
  assertEquals(config.openrouterKey, null, "no key: offline");
  assertEquals(config.dbClient, "postgres", "postgres.js locally");
  assertEquals(config.databaseUrl, "postgres://postgres@127.0.0.1:54329/postgres", "local db");
  assertEquals(config.defaultModel, "openai/gpt-4o-mini", "default model");
  assertEquals(config.openrouterBaseUrl, "https://openrouter.ai/api/v1", "OpenRouter");
  assert(config.timeBudgetMs < 150_000, "the HTTP budget is below the platform's 150 s");
});

Deno.test("SUPABASE_URL with the service role key selects supabase-js", () => {
  const config = loadConfig({
    SUPABASE_URL: "https://abc.supabase.co",
    SUPABASE_SERVICE_ROLE_KEY: "test-key-not-real",
    DATABASE_URL: "postgres://u@h/db",
  });
  assertEquals(config.dbClient, "supabase", "auto picks supabase-js");
  const forced = loadConfig({
    SUPABASE_URL: "https://abc.supabase.co",
    SUPABASE_SERVICE_ROLE_KEY: "test-key-not-real",
    RUNNER_DB_CLIENT: "postgres",
    SUPABASE_DB_URL: "postgres://u:pw@db.abc.supabase.co:5432/postgres",
  });
  assertEquals(forced.dbClient, "postgres", "RUNNER_DB_CLIENT overrides");
  assertEquals(
    forced.databaseUrl,
    "postgres://u:pw@db.abc.supabase.co:5432/postgres",
    "SUPABASE_DB_URL is used when DATABASE_URL is not set",
  );
  assert(!describeDatabase(forced).includes("pw"), "the password stays out of logs");
});

Deno.test("a bad number names the variable, the rule and the value", () => {
  const error = configError({ RUNNER_CONCURRENCY: "lots" });
  assertEquals(error.variable, "RUNNER_CONCURRENCY", "variable");
  assertEquals(
    error.message,
    'RUNNER_CONCURRENCY must be a whole number from 1 to 5000, got "lots"',
    "message",
  );
  assertEquals(
    configError({ RUNNER_LEASE_SECONDS: "2" }).variable,
    "RUNNER_LEASE_SECONDS",
    "below the queue's minimum lease",
  );
  assertEquals(
    configError({ RUNNER_TIME_BUDGET_MS: "1.5" }).variable,
    "RUNNER_TIME_BUDGET_MS",
    "not whole",
  );
});

Deno.test("a bad URL is refused without echoing what could be a password", () => {
  const error = configError({ DATABASE_URL: "mysql://user:secret-pw@host/db" });
  assertEquals(error.variable, "DATABASE_URL", "variable");
  assert(!error.message.includes("secret-pw"), "password not echoed");
  assertMatch(
    configError({ OPENROUTER_BASE_URL: "not a url" }).message,
    /OPENROUTER_BASE_URL must be an http\(s\):\/\/ or postgres:\/\/ URL/,
    "message",
  );
});

Deno.test("choices and flags are checked", () => {
  assertEquals(configError({ RUNNER_DB_CLIENT: "mysql" }).variable, "RUNNER_DB_CLIENT", "client");
  assertMatch(
    configError({ RUNNER_DB_CLIENT: "supabase" }).message,
    /needs SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY/,
    "supabase without its settings",
  );
  assertEquals(configError({ RUNNER_LOG_PROMPTS: "maybe" }).variable, "RUNNER_LOG_PROMPTS", "flag");
  assertEquals(
    configError({ RUNNER_POLL_MS: "500", RUNNER_POLL_MAX_MS: "100" }).variable,
    "RUNNER_POLL_MAX_MS",
    "max below min",
  );
  const short = configError({ RUNNER_HTTP_SECRET: "short" });
  assertEquals(short.variable, "RUNNER_HTTP_SECRET", "too short a secret");
  assert(!short.message.includes('short"'), "the secret itself is not echoed");
});
