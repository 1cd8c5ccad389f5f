// The chaos suite's model process: the shared fake (runner/testing/fake_openai.ts)
// answering after --latency-ms, except that a conversation whose latest user
// message contains "hang-forever" gets no answer at all, as a provider that
// stalls would. Prints {"url": ...}; on SIGTERM prints its counts on stderr.
//   deno run --allow-net chaos/fake_model.ts --port 0 --latency-ms 2000

import { startFakeOpenAI } from "../runner/testing/fake_openai.ts";

function option(name: string, fallback: number): number {
  const i = Deno.args.indexOf(name);
  if (i < 0) return fallback;
  const value = Number(Deno.args[i + 1]);
  if (!Number.isFinite(value) || value < 0) {
    console.error(`${name} must be a number >= 0, got ${Deno.args[i + 1]}`);
    Deno.exit(2);
  }
  return value;
}

const latencyMs = option("--latency-ms", 0);
const counts: Record<string, number> = { reply: 0, hang: 0 };

const fake = await startFakeOpenAI({
  port: option("--port", 0),
  record: false,
  defaultScenario: (req) => {
    const messages = Array.isArray(req.body?.messages) ? req.body.messages : [];
    const last = [...messages].reverse().find((m) => m?.role === "user");
    const hang = typeof last?.content === "string" && last.content.includes("hang-forever");
    counts[hang ? "hang" : "reply"]++;
    return hang ? { kind: "hang", ms: 3_600_000 } : { kind: "reply", delayMs: latencyMs };
  },
});
console.log(JSON.stringify({ url: fake.url }));

const stop = async () => {
  await fake.close();
  const served = counts.reply + counts.hang;
  console.error(JSON.stringify({ component: "chaos_fake_model", served, counts }));
  Deno.exit(0);
};
Deno.addSignalListener("SIGTERM", stop);
Deno.addSignalListener("SIGINT", stop);
