// The results as a Markdown report and a hand-drawn SVG bar chart.

const fmt = (value, digits = 0) =>
  value === undefined || value === null || Number.isNaN(value)
    ? "–"
    : Number(value).toLocaleString("en-US", {
      minimumFractionDigits: digits, maximumFractionDigits: digits,
    });
const mib = (bytes) => (bytes ? fmt(bytes / 2 ** 20, 0) : "–");
const failed = (r) => (r?.error ? `failed: ${r.error}` : null);

function table(header, rows) {
  const line = (cells) => `| ${cells.join(" | ")} |`;
  return [line(header), line(header.map(() => "---")), ...rows.map(line)].join("\n");
}

const OURS = ["ours-runner", "ours-sql"];

export function renderMarkdown({ machine, knobs, results }) {
  const keys = Object.keys(results);
  const ours = OURS.filter((k) => results[k]?.drain?.perSecond);
  const out = [];

  out.push("# Benchmark: process-ai-tasks beside graphile-worker and pg-boss", "");
  out.push(`Machine: ${machine.cores} cores (${machine.cpu}), ${machine.memoryGiB} GiB; ` +
    `PostgreSQL ${machine.postgres} (${machine.durability}), the same cluster and ` +
    `settings for every queue; Node ${machine.node}. Run ${machine.date} with ` +
    `\`${machine.command}\` at commit ${machine.commit} in ${machine.durationSeconds} s.`, "");
  out.push("Figures from one run on a shared 2-core machine while other test suites ran; " +
    "expect run-to-run noise of tens of percent. Workers run in their own processes; " +
    "the harness polls for completion every 20 ms." +
    (machine.restarts ? ` Another session restarted the cluster during this run; ` +
      `${machine.restarts} step(s) were run again.` : ""), "");

  out.push("## Settings", "");
  out.push([
    "- ours (runner): runner/worker.ts's Worker with the runner's own config, database layer " +
      "and chat_reply handler; RUNNER_CONCURRENCY 100, RUNNER_BATCH_SIZE 50, other RUNNER_* " +
      "defaults (completions batched into complete_ai_tasks, pool of 10); the runner's " +
      "offline model; JSON logs at info (three lines per task: claimed, model_called, completed), written as the runner writes them, to a pipe.",
    "- ours (SQL, unbatched): Node and postgres.js, claim_ai_task batches of 50, up to 100 " +
      "tasks held, pool of 10, one complete_ai_task per task.",
    "- graphile-worker 0.17.3 (fast): concurrency 24, localQueue.size 500, " +
      "completeJobBatchDelay 0, failJobBatchDelay 0. (defaults): concurrency 24 (its default " +
      "is 1), every other option at its default.",
    "- pg-boss 10.4.2: 10 work() loops, batchSize 100, pollingIntervalSeconds 0.5 (its " +
      "minimum), other options at their defaults.",
    "- Pickup runs: ours with concurrency 10 and batches of 10. In-flight runs: concurrency " +
      "equal to the level (ours claims at most 100 at a time; graphile keeps its fast options).",
    "- graphile-worker 0.17.3 and pg-boss 10.4.2 are the newest releases that run on Node 20 " +
      "(graphile-worker 0.18 and pg-boss 11 and later ask for Node 22). Tasks of ours are " +
      "spread over 1,000 projects: the claim caps each project's running tasks (4 by default).",
  ].join("\n"), "");

  out.push(`## Queue overhead: drain ${fmt(knobs.tasks)} queued tasks`, "");
  out.push("All tasks are queued in one transaction while the worker idles; the clock runs " +
    "from that commit until none is left queued or running. Ours: claim_ai_task in batches, " +
    "a model that answers at once, and the real writes of a completion (assistant message, " +
    "build log, status): the runner sends completions in complete_ai_tasks batches, the SQL " +
    "row one complete_ai_task per task. Peers: a handler that does nothing.", "");
  out.push(table(
    ["queue", "tasks/s", "seconds", "worker peak RSS (MiB)",
      ...ours.map((k) => `${results[k].label} ÷ this`)],
    keys.map((k) => {
      const d = results[k].drain;
      if (!d || d.error) return [results[k].label, failed(d) ?? "–", "", "", ...ours.map(() => "")];
      return [results[k].label, fmt(d.perSecond), fmt(d.seconds, 1), mib(d.peakRss),
        ...ours.map((o) => fmt(results[o].drain.perSecond / d.perSecond, 2) + "×")];
    }),
  ), "");

  out.push(`## Pickup latency: an idle worker, tasks queued one at a time every ` +
    `${knobs.latencyGapMs} ms`, "");
  out.push("From the moment the enqueuer's COMMIT returned to the moment the worker's " +
    "handler (our model call) had the task, on one wall clock. pg-boss polls (every " +
    "0.5 s, its minimum) and gets fewer tasks.", "");
  out.push(table(["queue", "tasks", "p50 (ms)", "p95 (ms)", "p99 (ms)", "max (ms)"],
    keys.filter((k) => results[k].latency).map((k) => {
      const l = results[k].latency;
      if (l.error) return [results[k].label, failed(l), "", "", "", ""];
      return [results[k].label, fmt(l.count), fmt(l.p50, 1), fmt(l.p95, 1), fmt(l.p99, 1),
        fmt(l.max, 1)];
    })), "");

  out.push("## In flight: a model that takes 1 s per reply, one worker process", "");
  out.push(`Each level drains level × ${knobs.inflightWaves} tasks; ideal tasks/s equals ` +
    "the level. Peak RSS is VmHWM of the worker process.", "");
  const inflightRows = [];
  for (const k of keys.filter((k) => results[k].inflight)) {
    for (const [level, r] of Object.entries(results[k].inflight)) {
      if (r.error) inflightRows.push([results[k].label, level, failed(r), "", "", ""]);
      else {
        inflightRows.push([results[k].label, fmt(Number(level)), fmt(r.n), fmt(r.perSecond),
          fmt(100 * r.perSecond / Number(level)) + "%", mib(r.peakRss)]);
      }
    }
  }
  out.push(table(["queue", "in flight", "tasks", "tasks/s", "of ideal", "peak RSS (MiB)"],
    inflightRows), "");

  out.push(`## Cost per task: ${fmt(knobs.costTasks)} tasks drained through a counting relay`,
    "");
  out.push("The worker connects through a TCP relay that reads the PostgreSQL wire " +
    "protocol: statements are Query and Execute messages, round trips are ReadyForQuery " +
    "answers (each time the client waits), transactions are ReadyForQuery with status " +
    "idle. WAL is read with pg_waldump and kept when it touches the queue's database or " +
    "belongs to one of its transactions (other sessions' WAL and the enqueue are left " +
    "out); WAL commits are the COMMIT records, each a WAL flush.", "");
  out.push(table(
    ["queue", "statements", "round trips", "transactions", "WAL commits", "WAL bytes"],
    keys.filter((k) => results[k].cost).map((k) => {
      const c = results[k].cost;
      if (c.error || !c.cost) return [results[k].label, failed(c) ?? "–", "", "", "", ""];
      const x = c.cost;
      return [results[k].label, fmt(x.statements, 3), fmt(x.roundTrips, 3),
        fmt(x.transactions, 3), fmt(x.walCommits, 3),
        fmt(x.walBytes) + (x.walMethod === "pg_waldump" ? "" : " (cluster-wide)")];
    })), "");

  out.push("## Against our targets", "");
  out.push(table(["target", "figure", "met"], targets(results)), "");
  return out.join("\n");
}

function targets(results) {
  const rows = [];
  const ourKey = OURS.find((k) => results[k]?.drain?.perSecond);
  if (!ourKey) return rows;
  const label = results[ourKey].label;
  const gf = results["graphile-fast"]?.drain?.perSecond;
  const mine = results[ourKey].drain.perSecond;
  if (gf) {
    rows.push([`overhead ≥ graphile-worker fast (${label})`,
      `${fmt(mine)} vs ${fmt(gf)} tasks/s`, mine >= gf ? "yes" : "no"]);
  }
  const lat = results[ourKey].latency;
  if (lat?.p50 !== undefined) {
    rows.push([`pickup p50 < 5 ms (${label})`, `${fmt(lat.p50, 1)} ms`,
      lat.p50 < 5 ? "yes" : "no"]);
  }
  const k1000 = results[ourKey].inflight?.[1000];
  if (k1000?.perSecond) {
    const mem = k1000.peakRss / 2 ** 20;
    rows.push([`1,000 in flight ≥ 900 tasks/s under 256 MiB (${label})`,
      `${fmt(k1000.perSecond)} tasks/s, ${fmt(mem)} MiB`,
      k1000.perSecond >= 900 && mem < 256 ? "yes" : "no"]);
  }
  const unbatched = results["ours-sql"]?.cost?.cost;
  if (unbatched) {
    rows.push([`≤ 2 round trips per task without batching (${results["ours-sql"].label})`,
      `${fmt(unbatched.roundTrips, 3)} per task`, unbatched.roundTrips <= 2 ? "yes" : "no"]);
  }
  const batched = results["ours-runner"]?.cost?.cost;
  if (batched && unbatched) {
    rows.push([`fewer with batching (${results["ours-runner"].label})`,
      `${fmt(batched.roundTrips, 3)} per task`,
      batched.roundTrips < unbatched.roundTrips ? "yes" : "no"]);
  }
  return rows;
}

// ----------------------------------------------------------------------- chart

const esc = (s) => String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;");

/** Horizontal bars in three panels: drain tasks/s, pickup p50, tasks/s at 1,000 in flight. */
export function renderChart({ machine, results }) {
  const keys = Object.keys(results);
  const panels = [
    { title: "Drain: tasks per second (higher is better)",
      value: (r) => r.drain?.perSecond, unit: "/s", digits: 0 },
    { title: "Pickup latency p50 in ms (lower is better)",
      value: (r) => r.latency?.p50, unit: " ms", digits: 1 },
    { title: "1,000 in flight, 1 s model: tasks per second",
      value: (r) => r.inflight?.[1000]?.perSecond, unit: "/s", digits: 0 },
  ];
  const width = 760, labelW = 210, barMax = 430, rowH = 26, gap = 18;
  const colors = { "ours-runner": "#2f6fdf", "ours-sql": "#6f9ff0" };
  let y = 78;
  const parts = [];
  for (const panel of panels) {
    const rows = keys.map((k) => [k, panel.value(results[k])]).filter(([, v]) => v > 0);
    if (rows.length === 0) continue;
    const max = Math.max(...rows.map(([, v]) => v));
    parts.push(`<text x="12" y="${y}" font-size="15" font-weight="bold">` +
      `${esc(panel.title)}</text>`);
    y += 10;
    for (const [k, v] of rows) {
      const w = Math.max(2, (v / max) * barMax);
      parts.push(`<text x="${labelW - 8}" y="${y + 17}" font-size="13" text-anchor="end">` +
        `${esc(results[k].label)}</text>`);
      parts.push(`<rect x="${labelW}" y="${y + 4}" width="${w.toFixed(1)}" height="${rowH - 8}" ` +
        `fill="${colors[k] ?? "#9a9a9a"}"/>`);
      parts.push(`<text x="${(labelW + w + 6).toFixed(1)}" y="${y + 17}" font-size="13">` +
        `${esc(fmt(v, panel.digits) + panel.unit)}</text>`);
      y += rowH;
    }
    y += gap + 12;
  }
  const height = y + 10;
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" ` +
      `viewBox="0 0 ${width} ${height}" font-family="Helvetica, Arial, sans-serif">`,
    `<rect width="100%" height="100%" fill="#ffffff"/>`,
    `<text x="12" y="24" font-size="17" font-weight="bold">process-ai-tasks vs graphile-worker ` +
      `and pg-boss</text>`,
    `<text x="12" y="44" font-size="12" fill="#555">${esc(`${machine.cores} cores, ` +
      `PostgreSQL ${machine.postgres.split(" ")[0]}, fsync and synchronous_commit on, ` +
      `${machine.date.slice(0, 10)}, commit ${machine.commit}`)}</text>`,
    `<text x="12" y="60" font-size="12" fill="#555">One run on a shared machine while other ` +
      `tests ran: figures are noisy.</text>`,
    ...parts,
    `</svg>`,
    "",
  ].join("\n");
}
