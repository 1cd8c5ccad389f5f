// The worker's batched log sink: lines logged together leave in one write,
// in order, whole, and nothing is held past the work that logged it.

import { batchedSink, createLogger } from "./log.ts";
import { assertEquals } from "./testing/assert.ts";

function capture() {
  const writes: string[] = [];
  const decoder = new TextDecoder();
  const sink = batchedSink((bytes) => writes.push(decoder.decode(bytes)));
  return { sink, writes };
}

Deno.test("lines logged in one piece of work leave in one write, in order", async () => {
  const { sink, writes } = capture();
  const log = createLogger("json", "runner", sink);
  log.info("claimed", { task_id: "a" });
  log.info("claimed", { task_id: "b" });
  log.warn("retried", { task_id: "c" });
  assertEquals(writes.length, 0, "nothing written while the work runs");

  await Promise.resolve();
  assertEquals(writes.length, 1, "one write once it ends");
  const lines = writes[0].split("\n");
  assertEquals(lines.at(-1), "", "the write ends with a newline");
  assertEquals(
    lines.slice(0, -1).map((l) => [JSON.parse(l).event, JSON.parse(l).task_id]),
    [["claimed", "a"], ["claimed", "b"], ["retried", "c"]],
    "every line, whole and in order",
  );
});

Deno.test("later work gets its own write; flush writes what is pending, once", async () => {
  const { sink, writes } = capture();
  sink("first");
  await Promise.resolve();
  sink("second");
  sink("third");
  sink.flush();
  assertEquals(writes, ["first\n", "second\nthird\n"], "flush wrote the pending lines");
  await Promise.resolve();
  sink.flush();
  assertEquals(writes.length, 2, "nothing is written twice, and an empty flush writes nothing");
});
