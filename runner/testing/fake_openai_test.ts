// The fake model, driven through the real `openai` SDK the runner uses: every
// behaviour the runner relies on must look to the SDK exactly like the real
// service's. No database needed.
import OpenAI from "openai";
import {
  type FakeOpenAI,
  faultMix,
  kindName,
  type RecordedRequest,
  runCli,
  startFakeOpenAI,
} from "./fake_openai.ts";
import { assert, assertEquals } from "./assert.ts";

async function rejects(fn: () => Promise<unknown>, msg: string): Promise<unknown> {
  try {
    await fn();
  } catch (e) {
    return e;
  }
  throw new Error(`expected a rejection: ${msg}`);
}

const API_KEY = "sk-test-fixture-secret-0000";

function client(fake: FakeOpenAI, extra: Partial<ConstructorParameters<typeof OpenAI>[0]> = {}) {
  // No SDK retries: each test decides exactly which scenario a call meets.
  return new OpenAI({ apiKey: API_KEY, baseURL: fake.url, maxRetries: 0, ...extra });
}

const messages: OpenAI.Chat.ChatCompletionMessageParam[] = [
  { role: "system", content: "You are terse." },
  { role: "user", content: "first question" },
  { role: "assistant", content: "first answer" },
  { role: "user", content: "hello there fake" },
];

async function withFake(fn: (fake: FakeOpenAI) => Promise<void>) {
  const fake = await startFakeOpenAI();
  try {
    await fn(fake);
  } finally {
    await fake.close();
  }
}

Deno.test("a plain reply echoes the last user message and reports usage with cost", () =>
  withFake(async (fake) => {
    const res = await client(fake).chat.completions.create({
      model: "openai/gpt-4o-mini",
      messages,
    });

    assertEquals(res.choices[0].message.content, "echo: hello there fake", "content");
    assertEquals(res.choices[0].finish_reason, "stop", "finish_reason");
    assertEquals(res.model, "openai/gpt-4o-mini", "model echoes the request");
    assert(res.usage!.prompt_tokens > 0, "prompt tokens counted");
    assertEquals(res.usage!.completion_tokens, 4, "one token per word of the reply");
    assertEquals(
      res.usage!.total_tokens,
      res.usage!.prompt_tokens + res.usage!.completion_tokens,
      "total tokens",
    );
    // deno-lint-ignore no-explicit-any
    assert((res.usage as any).cost > 0, "usage carries an OpenRouter-style cost");
  }));

Deno.test("each request is recorded with its body and the API key redacted", () =>
  withFake(async (fake) => {
    await client(fake).chat.completions.create({ model: "m-1", messages });

    assertEquals(fake.requests.length, 1, "one request recorded");
    const rec = fake.requests[0];
    assertEquals(rec.body.model, "m-1", "body recorded");
    assertEquals(rec.body.messages.length, 4, "messages recorded");
    assertEquals(rec.headers["authorization"], "[redacted]", "authorization redacted");
    assert(!JSON.stringify(fake.requests).includes(API_KEY), "the key appears nowhere");
    assert(Math.abs(rec.at - Date.now()) < 60_000, "arrival time recorded");
  }));

Deno.test("a streamed reply is assembled by the SDK, ends with stop and a usage chunk", () =>
  withFake(async (fake) => {
    fake.push({ kind: "reply", content: "one two three four", chunkDelayMs: 5 });
    const stream = await client(fake).chat.completions.create({
      model: "openai/gpt-4o-mini",
      messages,
      stream: true,
      stream_options: { include_usage: true },
    });

    let text = "";
    let contentChunks = 0;
    let finish: string | null = null;
    let usage: OpenAI.CompletionUsage | undefined;
    for await (const chunk of stream) {
      assertEquals(chunk.object, "chat.completion.chunk", "chunk object");
      const choice = chunk.choices[0];
      if (choice?.delta?.content) {
        text += choice.delta.content;
        contentChunks++;
      }
      if (choice?.finish_reason) finish = choice.finish_reason;
      if (chunk.usage) usage = chunk.usage;
    }

    assertEquals(text, "one two three four", "assembled text");
    assertEquals(contentChunks, 4, "one content chunk per word");
    assertEquals(finish, "stop", "final finish_reason");
    assertEquals(usage?.completion_tokens, 4, "usage chunk sent when include_usage");
  }));

Deno.test("a stream without include_usage sends no usage chunk", () =>
  withFake(async (fake) => {
    const stream = await client(fake).chat.completions.create({
      model: "m",
      messages,
      stream: true,
    });
    let sawUsage = false;
    let text = "";
    for await (const chunk of stream) {
      if (chunk.usage) sawUsage = true;
      text += chunk.choices[0]?.delta?.content ?? "";
    }
    assertEquals(text, "echo: hello there fake", "default echo streamed");
    assertEquals(sawUsage, false, "no usage chunk");
  }));

Deno.test("the SDK's stream helper assembles the final completion", () =>
  withFake(async (fake) => {
    fake.push({ kind: "reply", content: "assembled by runner helper", model: "other/model" });
    const runner = client(fake).chat.completions.stream({ model: "m", messages });
    const final = await runner.finalChatCompletion();
    assertEquals(final.choices[0].message.content, "assembled by runner helper", "content");
    assertEquals(final.model, "other/model", "scenario model overrides the request's");
  }));

Deno.test("429 surfaces as RateLimitError with the Retry-After header visible", () =>
  withFake(async (fake) => {
    fake.push({ kind: "status", status: 429, retryAfter: "7", message: "slow down" });
    const err = await rejects(
      () => client(fake).chat.completions.create({ model: "m", messages }),
      "429",
    );

    assert(err instanceof OpenAI.RateLimitError, `RateLimitError, got ${err}`);
    assertEquals(err.status, 429, "status");
    assertEquals(err.headers?.get("retry-after"), "7", "Retry-After header");
    assertEquals(err.code, "rate_limit_exceeded", "error code from the body");
    assert(err.message.includes("slow down"), `message from the body: ${err.message}`);
  }));

Deno.test("the SDK's own retry honours Retry-After and then gets the reply", () =>
  withFake(async (fake) => {
    fake.push({ kind: "status", status: 429, retryAfter: "0" });
    const res = await client(fake, { maxRetries: 1 }).chat.completions.create({
      model: "m",
      messages,
    });
    assertEquals(res.choices[0].message.content, "echo: hello there fake", "retried reply");
    assertEquals(fake.requests.length, 2, "two requests reached the fake");
  }));

Deno.test("402 surfaces as an APIError with status 402 and the credits message", () =>
  withFake(async (fake) => {
    fake.push({ kind: "status", status: 402 });
    const err = await rejects(
      () => client(fake).chat.completions.create({ model: "m", messages }),
      "402",
    );
    assert(err instanceof OpenAI.APIError, `APIError, got ${err}`);
    assertEquals(err.status, 402, "status");
    assert(/credits/i.test(err.message), `credits message: ${err.message}`);
  }));

Deno.test("500 and 502 surface as InternalServerError with their status", () =>
  withFake(async (fake) => {
    fake.push({ kind: "status", status: 500 }, {
      kind: "status",
      status: 502,
      code: "upstream_down",
    });
    const e500 = await rejects(
      () => client(fake).chat.completions.create({ model: "m", messages }),
      "500",
    );
    const e502 = await rejects(
      () => client(fake).chat.completions.create({ model: "m", messages }),
      "502",
    );
    assert(e500 instanceof OpenAI.InternalServerError, `500 class, got ${e500}`);
    assertEquals(e500.status, 500, "500 status");
    assert(e502 instanceof OpenAI.InternalServerError, `502 class, got ${e502}`);
    assertEquals(e502.status, 502, "502 status");
    assertEquals(e502.code, "upstream_down", "custom code");
  }));

Deno.test("400, 401, 403 and 408 map to the SDK's error classes", () =>
  withFake(async (fake) => {
    const cases = [
      [400, OpenAI.BadRequestError],
      [401, OpenAI.AuthenticationError],
      [403, OpenAI.PermissionDeniedError],
      [408, OpenAI.APIError],
    ] as const;
    for (const [status, cls] of cases) {
      fake.push({ kind: "status", status });
      const err = await rejects(
        () => client(fake).chat.completions.create({ model: "m", messages }),
        String(status),
      );
      assert(err instanceof cls, `${status} -> ${cls.name}, got ${err}`);
      assertEquals((err as InstanceType<typeof OpenAI.APIError>).status, status, "status");
    }
  }));

Deno.test("a mid-stream error raises inside the SDK's stream iteration", () =>
  withFake(async (fake) => {
    fake.push({ kind: "stream_error", afterChunks: 2, message: "provider went away" });
    const stream = await client(fake).chat.completions.create({
      model: "m",
      messages,
      stream: true,
    });

    let contentChunks = 0;
    const err = await rejects(async () => {
      for await (const chunk of stream) {
        if (chunk.choices[0]?.delta?.content) contentChunks++;
      }
    }, "mid-stream error");

    assert(err instanceof OpenAI.APIError, `APIError, got ${err}`);
    assert(err.message.includes("provider went away"), `message: ${err.message}`);
    assertEquals(err.code as unknown, 502, "OpenRouter-style numeric code in the error event");
    assertEquals(contentChunks, 2, "the chunks before the error arrived");
  }));

Deno.test("a stream_error scenario on a non-streaming request is an HTTP error", () =>
  withFake(async (fake) => {
    fake.push({ kind: "stream_error", afterChunks: 1, status: 503 });
    const err = await rejects(
      () => client(fake).chat.completions.create({ model: "m", messages }),
      "non-stream",
    );
    assert(err instanceof OpenAI.APIError, `APIError, got ${err}`);
    assertEquals(err.status, 503, "status");
  }));

Deno.test("a malformed JSON body raises in the SDK", () =>
  withFake(async (fake) => {
    fake.push({ kind: "malformed" });
    const err = await rejects(
      () => client(fake).chat.completions.create({ model: "m", messages }),
      "malformed",
    );
    assert(err instanceof Error, "an error");
    assert(/JSON|Unexpected|parse/i.test((err as Error).message), `parse error: ${err}`);
  }));

Deno.test("a malformed stream event raises inside the SDK's stream iteration", () =>
  withFake(async (fake) => {
    fake.push({ kind: "malformed" });
    const stream = await client(fake, { logLevel: "off" }).chat.completions.create({
      model: "m",
      messages,
      stream: true,
    });
    const err = await rejects(async () => {
      for await (const _ of stream) { /* drain */ }
    }, "malformed stream");
    assert(/malformed|JSON/i.test((err as Error).message), `parse error: ${err}`);
  }));

Deno.test("a hang trips the SDK timeout", () =>
  withFake(async (fake) => {
    fake.push({ kind: "hang", ms: 10_000 });
    const started = Date.now();
    const err = await rejects(
      () => client(fake, { timeout: 300 }).chat.completions.create({ model: "m", messages }),
      "hang",
    );
    assert(err instanceof OpenAI.APIConnectionTimeoutError, `timeout error, got ${err}`);
    assert(Date.now() - started < 5_000, "gave up long before the hang ended");
  }));

Deno.test("close() ends a hang still in progress instead of waiting for it", async () => {
  const fake = await startFakeOpenAI();
  fake.push({ kind: "hang", ms: 60_000 });
  const call = client(fake, { timeout: 120_000 }).chat.completions.create({
    model: "m",
    messages,
  }).catch((e) => e);
  while (fake.requests.length === 0) await new Promise((r) => setTimeout(r, 10));

  const started = Date.now();
  await fake.close();
  await call;
  assert(Date.now() - started < 5_000, "close returned promptly");
});

Deno.test("a reply's delayMs holds the answer back", () =>
  withFake(async (fake) => {
    fake.push({ kind: "reply", delayMs: 400 });
    const err = await rejects(
      () => client(fake, { timeout: 100 }).chat.completions.create({ model: "m", messages }),
      "delay beyond timeout",
    );
    assert(err instanceof OpenAI.APIConnectionTimeoutError, `timeout error, got ${err}`);
  }));

Deno.test("pushed scenarios are served in order, then the default", () =>
  withFake(async (fake) => {
    fake.push({ kind: "reply", content: "first" }, { kind: "reply", content: "second" });
    const c = client(fake);
    const got = [];
    for (let i = 0; i < 3; i++) {
      const r = await c.chat.completions.create({ model: "m", messages });
      got.push(r.choices[0].message.content);
    }
    assertEquals(got, ["first", "second", "echo: hello there fake"], "order");
  }));

Deno.test("setDefault with a function sees each request and its number", () =>
  withFake(async (fake) => {
    const seen: number[] = [];
    fake.setDefault((req: RecordedRequest, n: number) => {
      seen.push(n);
      return { kind: "reply", content: `#${n} ${req.body.model}` };
    });
    const c = client(fake);
    const a = await c.chat.completions.create({ model: "alpha", messages });
    const b = await c.chat.completions.create({ model: "beta", messages });
    assertEquals(a.choices[0].message.content, "#0 alpha", "first");
    assertEquals(b.choices[0].message.content, "#1 beta", "second");
    assertEquals(seen, [0, 1], "request numbers");
  }));

Deno.test("a usage given in the scenario is reported as given", () =>
  withFake(async (fake) => {
    fake.push({ kind: "reply", usage: { prompt_tokens: 11, completion_tokens: 7, cost: 0.5 } });
    const r = await client(fake).chat.completions.create({ model: "m", messages });
    assertEquals(
      r.usage,
      // deno-lint-ignore no-explicit-any
      { prompt_tokens: 11, completion_tokens: 7, cost: 0.5, total_tokens: 18 } as any,
      "usage",
    );
  }));

Deno.test("GET /v1/models lists a model through the SDK", () =>
  withFake(async (fake) => {
    const ids = [];
    for await (const m of client(fake).models.list()) ids.push(m.id);
    assertEquals(ids, ["openai/gpt-4o-mini"], "model ids");
  }));

Deno.test("the fault mix is reproducible from its seed and near its rate", () => {
  const req: RecordedRequest = { body: { stream: true }, headers: {}, at: 0 };
  const run = (seed: number) => {
    const mix = faultMix({ faultRate: 0.2, latencyMs: 50, seed });
    return Array.from({ length: 2000 }, (_, n) => kindName(mix(req, n)));
  };
  const a = run(42), b = run(42), c = run(43);

  assertEquals(a, b, "same seed, same sequence");
  assert(JSON.stringify(a) !== JSON.stringify(c), "another seed, another sequence");
  const faults = a.filter((k) => k !== "reply").length;
  assert(faults > 300 && faults < 500, `about 20% of 2000 are faults, got ${faults}`);
  for (
    const kind of [
      "rate_limited_429",
      "server_error_500",
      "bad_gateway_502",
      "hang",
      "stream_error",
      "payment_required_402",
    ]
  ) {
    assert(a.includes(kind), `the mix serves ${kind}`);
  }
});

Deno.test("the fault mix's replies carry the fixed latency and its 429s Retry-After 1", () => {
  const mix = faultMix({ faultRate: 0.5, latencyMs: 1000, seed: 7 });
  const req: RecordedRequest = { body: {}, headers: {}, at: 0 };
  const served = Array.from({ length: 500 }, (_, n) => mix(req, n));
  for (const s of served) {
    if (s.kind === "reply") assertEquals(s.delayMs, 1000, "reply latency");
    if (s.kind === "status" && s.status === 429) assertEquals(s.retryAfter, "1", "Retry-After");
    assert(s.kind !== "stream_error", "no stream errors for a non-streaming request");
  }
});

Deno.test("the CLI prints its URL, serves the fault mix and prints counts per kind at stop", async () => {
  const out: string[] = [], err: string[] = [];
  const { promise: stop, resolve } = Promise.withResolvers<void>();
  const urlPrinted = Promise.withResolvers<string>();
  const exit = runCli(
    ["--port", "0", "--fault-rate=0.5", "--latency-ms", "5", "--seed", "42", "--hang-ms", "50"],
    { out: (l) => (out.push(l), urlPrinted.resolve(l)), err: (l) => void err.push(l), stop },
  );
  const { url } = JSON.parse(await urlPrinted.promise);
  assert(/^http:\/\/127\.0\.0\.1:\d+\/v1$/.test(url), `url: ${url}`);

  const c = new OpenAI({ apiKey: API_KEY, baseURL: url, maxRetries: 0, timeout: 2000 });
  const outcomes: Record<string, number> = {};
  for (let i = 0; i < 60; i++) {
    const kind = await c.chat.completions.create({ model: "m", messages, stream: i % 2 === 0 })
      .then(async (r) => {
        if (Symbol.asyncIterator in r) { for await (const _ of r) { /* drain */ } }
        return "reply";
      })
      .catch((e) =>
        e instanceof OpenAI.APIConnectionTimeoutError
          ? "hang"
          : e instanceof OpenAI.APIError && e.status
          ? `status_${e.status}`
          : "stream_error"
      );
    outcomes[kind] = (outcomes[kind] ?? 0) + 1;
  }

  resolve();
  assertEquals(await exit, 0, "exit code");
  assertEquals(out.length, 1, "one line on stdout");
  const summary = JSON.parse(err.at(-1)!);
  assertEquals(summary.served, 60, "served count");
  assertEquals(summary.counts.reply ?? 0, outcomes.reply ?? 0, "replies the SDK saw");
  assertEquals(summary.counts.rate_limited_429 ?? 0, outcomes.status_429 ?? 0, "429s");
  assertEquals(summary.counts.payment_required_402 ?? 0, outcomes.status_402 ?? 0, "402s");
  assert(summary.counts.reply > 10 && summary.counts.reply < 50, "about half are faults");
  assert(!err.join("\n").includes(API_KEY), "the key never reaches the log");
});

Deno.test("the CLI refuses a bad option with exit code 2 and names it", async () => {
  const err: string[] = [];
  const code = await runCli(["--fault-rate", "1.5"], {
    out: () => {},
    err: (l) => void err.push(l),
    stop: Promise.resolve(),
  });
  assertEquals(code, 2, "exit code");
  assert(err[0].includes("--fault-rate must be between 0 and 1, got 1.5"), err[0]);
});

// The CLI as a real process needs a subprocess; `deno task test:fixtures` grants --allow-run.
const canRun = (await Deno.permissions.query({ name: "run" })).state === "granted";
if (!canRun) {
  console.warn(
    "fake_openai_test: CLI process test not run: needs --allow-run " +
      "(use `deno task test:fixtures`)",
  );
}

Deno.test({
  name: "the CLI process prints its URL and its counts on SIGTERM, exiting 0",
  ignore: !canRun,
  fn: async () => {
    const cmd = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-net",
        new URL("./fake_openai.ts", import.meta.url).pathname,
        "--port",
        "0",
        "--fault-rate",
        "0.5",
        "--latency-ms",
        "10",
        "--seed",
        "42",
        "--hang-ms",
        "50",
      ],
      stdout: "piped",
      stderr: "piped",
    });
    const child = cmd.spawn();
    const stderrText = new Response(child.stderr).text();
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let line = "";
    while (!line.includes("\n")) {
      const { value, done } = await reader.read();
      if (done) break;
      line += value;
    }
    reader.cancel();
    const { url } = JSON.parse(line.trim());
    assert(/^http:\/\/127\.0\.0\.1:\d+\/v1$/.test(url), `url: ${url}`);

    const c = new OpenAI({ apiKey: API_KEY, baseURL: url, maxRetries: 0, timeout: 2000 });
    let ok = 0, failed = 0;
    for (let i = 0; i < 40; i++) {
      try {
        await c.chat.completions.create({ model: "m", messages });
        ok++;
      } catch {
        failed++;
      }
    }

    child.kill("SIGTERM");
    const status = await child.status;
    assertEquals(status.code, 0, "clean exit on SIGTERM");
    const stderr = await stderrText;
    const summary = JSON.parse(stderr.trim().split("\n").pop()!);
    assertEquals(summary.served, 40, "served count");
    assertEquals(summary.counts.reply ?? 0, ok, "replies counted as served");
    assert(failed > 0 && ok > 0, `a mix of outcomes (ok ${ok}, failed ${failed})`);
    assert(!stderr.includes(API_KEY), "the key never reaches the log");
  },
});
