// How much the fake model adds on top of its configured latency when many
// streams run at once, so load tests know the fake is not their bottleneck.
// Starts the CLI as its own process (as load tests do), opens N concurrent
// streamed completions through the openai SDK and prints figures.
//
//   deno run --allow-net --allow-run --allow-read --allow-env --allow-sys \
//     runner/testing/fake_openai_bench.ts [--streams 1000] [--latency-ms 1000] [--words 50]
import OpenAI from "openai";

function flag(name: string, fallback: number): number {
  const i = Deno.args.indexOf(`--${name}`);
  const value = i >= 0 ? Number(Deno.args[i + 1]) : fallback;
  if (!Number.isFinite(value) || value < 0) {
    throw new RangeError(`--${name} must be a number >= 0, got ${Deno.args[i + 1]}`);
  }
  return value;
}

const streams = flag("streams", 1000);
const latencyMs = flag("latency-ms", 1000);
const words = flag("words", 50);

const child = new Deno.Command(Deno.execPath(), {
  args: [
    "run",
    "--allow-net",
    new URL("./fake_openai.ts", import.meta.url).pathname,
    "--port",
    "0",
    "--fault-rate",
    "0",
    "--latency-ms",
    String(latencyMs),
    "--seed",
    "1",
  ],
  stdout: "piped",
  stderr: "piped",
}).spawn();
const stderrText = new Response(child.stderr).text();
const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
let line = "";
while (!line.includes("\n")) {
  const { value, done } = await reader.read();
  if (done) throw new Error("fake model exited before printing its URL");
  line += value;
}
reader.cancel();
const { url } = JSON.parse(line.trim());

const client = new OpenAI({ apiKey: "sk-bench-not-real", baseURL: url, maxRetries: 0 });
const prompt = Array.from({ length: words }, (_, i) => `w${i}`).join(" ");

async function one(): Promise<{ ms: number; chunks: number }> {
  const started = performance.now();
  const stream = await client.chat.completions.create({
    model: "openai/gpt-4o-mini",
    messages: [{ role: "user", content: prompt }],
    stream: true,
    stream_options: { include_usage: true },
  });
  let chunks = 0;
  for await (const _ of stream) chunks++;
  return { ms: performance.now() - started, chunks };
}

// The fake's own CPU time (utime + stime, in 10 ms Linux clock ticks): the
// figure that says whether the fake could be a load test's bottleneck.
async function cpuMs(pid: number): Promise<number | null> {
  // Deno reads /proc only with --allow-all, so `cat` (already allowed to run) reads it.
  const out = await new Deno.Command("cat", { args: [`/proc/${pid}/stat`], stdout: "piped" })
    .output();
  if (!out.success) return null;
  const stat = new TextDecoder().decode(out.stdout);
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) * 10;
}
const cpuBefore = await cpuMs(child.pid);
const wallStart = performance.now();
const results = await Promise.all(Array.from({ length: streams }, one));
const wallMs = performance.now() - wallStart;

const fakeCpuMs = await cpuMs(child.pid);

child.kill("SIGTERM");
await child.status;
const served = JSON.parse((await stderrText).trim().split("\n").pop()!);

const times = results.map((r) => r.ms).sort((a, b) => a - b);
const pct = (p: number) => times[Math.min(times.length - 1, Math.floor(p * times.length))];
console.log(JSON.stringify({
  component: "fake_openai_bench",
  streams,
  latency_ms: latencyMs,
  chunks_per_stream: results[0]?.chunks,
  served: served.served,
  wall_ms: Math.round(wallMs),
  p50_ms: Math.round(pct(0.5)),
  p99_ms: Math.round(pct(0.99)),
  max_ms: Math.round(times[times.length - 1]),
  // What the fake and the client together add over the configured latency;
  // on a shared 2-core machine the client's side dominates it.
  p99_overhead_ms: Math.round(pct(0.99) - latencyMs),
  fake_cpu_ms: fakeCpuMs === null || cpuBefore === null ? null : fakeCpuMs - cpuBefore,
  fake_cpu_ms_per_stream: fakeCpuMs === null || cpuBefore === null
    ? null
    : Math.round(((fakeCpuMs - cpuBefore) / streams) * 1000) / 1000,
}));
