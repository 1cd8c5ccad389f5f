// What every Node worker of the benchmark shares: its settings (one JSON
// environment variable), a high-resolution wall clock comparable across
// processes, the record of when each task reached the handler, and the
// JSON-lines conversation with the harness.

import readline from "node:readline";

export const settings = JSON.parse(process.env.BENCH_WORKER ?? "{}");

/** Wall-clock milliseconds with sub-millisecond resolution (same clock in every process). */
export const wallMs = () => performance.timeOrigin + performance.now();

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export function emit(bench, fields = {}) {
  process.stdout.write(JSON.stringify({ bench, ...fields }) + "\n");
}

// seq (from the task's payload) -> when the handler got it. Kept only when
// the harness asks for latency, so long drains do not grow a large map.
const received = new Map();
export function gotTask(seq) {
  if (settings.recordLatency && seq !== undefined) received.set(Number(seq), wallMs());
}

/** Answers the harness's commands; `stop` runs on SIGTERM or {"cmd":"stop"}. */
export function serve(stop) {
  let stopping = false;
  const shutdown = async () => {
    if (stopping) return;
    stopping = true;
    try {
      await stop();
    } finally {
      emit("stopped");
      process.exit(0);
    }
  };
  process.on("SIGTERM", shutdown);
  process.on("SIGINT", shutdown);
  readline.createInterface({ input: process.stdin }).on("line", (line) => {
    const { cmd } = JSON.parse(line);
    if (cmd === "report") emit("report", { received: [...received.entries()] });
    if (cmd === "stop") shutdown();
  });
}
