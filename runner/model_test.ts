// How provider answers are classified: retry or not, how long to wait, and
// an error text that says which.

import { classifyStatus, createOfflineModel, parseRetryAfter } from "./model.ts";
import { assert, assertEquals, assertMatch } from "./test_support.ts";

Deno.test("Retry-After is read as seconds, as an HTTP date, and as retry-after-ms", () => {
  assertEquals(parseRetryAfter(new Headers({ "retry-after": "12" })), 12, "seconds");
  assertEquals(parseRetryAfter(new Headers({ "retry-after": "1.2" })), 2, "rounded up");
  assertEquals(parseRetryAfter(new Headers({ "retry-after-ms": "2500" })), 3, "milliseconds");
  const date = new Date(Date.now() + 30_000).toUTCString();
  const fromDate = parseRetryAfter(new Headers({ "retry-after": date }))!;
  assert(fromDate >= 28 && fromDate <= 31, `HTTP date: ${fromDate}`);
  assertEquals(parseRetryAfter(new Headers({ "retry-after": "soon" })), null, "unreadable");
  assertEquals(parseRetryAfter(new Headers({ "retry-after": "999999" })), 86400, "capped");
  assertEquals(parseRetryAfter(new Headers()), null, "absent");
});

Deno.test("429, 408 and 5xx are retryable; Retry-After is kept for them", () => {
  for (const status of [429, 408, 500, 502, 503, 504]) {
    const error = classifyStatus(status, "x", 9);
    assertEquals(error.retryable, true, `${status} retryable`);
    assertEquals(error.retryAfterSeconds, 9, `${status} keeps Retry-After`);
  }
  assertEquals(classifyStatus(429, "").kind, "rate_limited", "429 is a rate limit");
});

Deno.test("400, 401, 402, 403 and 404 are not retryable and say which", () => {
  const cases: [number, RegExp][] = [
    [400, /rejected the request \(HTTP 400\)/],
    [401, /rejected the API key \(OPENROUTER_KEY\) \(HTTP 401\)/],
    [402, /out of credits.*\(HTTP 402\)/],
    [403, /refused the request \(HTTP 403\)/],
    [404, /not found \(HTTP 404\)/],
  ];
  for (const [status, pattern] of cases) {
    const error = classifyStatus(status, "provider detail", 30);
    assertEquals(error.retryable, false, `${status} not retryable`);
    assertEquals(error.retryAfterSeconds, null, `${status} has no retry delay`);
    assertMatch(error.message, pattern, `${status} message`);
    assertMatch(error.message, /: provider detail$/, `${status} keeps the provider's words`);
  }
});

Deno.test("the offline model is deterministic and labelled", async () => {
  const model = createOfflineModel();
  const request = {
    model: "any",
    timeoutMs: 1000,
    signal: new AbortController().signal,
    messages: [{ role: "system" as const, content: "s" }, { role: "user" as const, content: "hi" }],
  };
  const a = await model.complete(request);
  const b = await model.complete(request);
  assertEquals(a.text, b.text, "same input, same answer");
  assertEquals([a.model, a.offline], ["offline/echo", true], "labelled offline");
  assertMatch(a.text, /^\[offline model: no OPENROUTER_KEY is set/, "says it is not an AI");
});

Deno.test("the offline model honours an abort", async () => {
  const controller = new AbortController();
  const model = createOfflineModel(10_000);
  const call = model.complete({
    model: "any",
    timeoutMs: 1000,
    signal: controller.signal,
    messages: [{ role: "user", content: "hi" }],
  });
  controller.abort("cancelled");
  const error = await call.then(() => null, (e) => e);
  assertEquals(error?.kind, "aborted", "the call ends as aborted");
});
