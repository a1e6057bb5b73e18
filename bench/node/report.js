#!/usr/bin/env node
// bench/run.sh's summary: reads the step results of one run (RESULTS_DIR), checks the targets,
// prints the tables and writes them as JSON and Markdown.
//
//   node report.js RESULTS_DIR OUT_JSON OUT_MD
"use strict";

const fs = require("fs");
const path = require("path");

const [dir, outJson, outMd] = process.argv.slice(2);
if (!dir || !outJson || !outMd) {
  process.stderr.write("usage: node report.js RESULTS_DIR OUT_JSON OUT_MD\n");
  process.exit(2);
}

const file = (name) => path.join(dir, name);
const exists = (name) => fs.existsSync(file(name));
const json = (name) => (exists(name) ? JSON.parse(fs.readFileSync(file(name), "utf8")) : null);
const tsv = (name) =>
  exists(name)
    ? Object.fromEntries(
        fs
          .readFileSync(file(name), "utf8")
          .split("\n")
          .filter(Boolean)
          .map((l) => [l.slice(0, l.indexOf("\t")), l.slice(l.indexOf("\t") + 1)]),
      )
    : {};
// redis-benchmark --csv: "name","rps",... (the EVAL name holds the script: take the last line).
const csvRows = (name) =>
  exists(name)
    ? fs
        .readFileSync(file(name), "utf8")
        .split("\n")
        .map((l) => l.match(/^"?(.*?)","([0-9.]+)","([0-9.]+)"/))
        .filter(Boolean)
        .map((m) => ({ test: m[1].split("\n").pop(), rps: Number(m[2]), avg_ms: Number(m[3]) }))
    : [];

const machine = tsv("machine.tsv");
const load = tsv("load.tsv");
const ceilingRow = csvRows("ceiling.csv").pop();
const ceiling = ceilingRow ? ceilingRow.rps : null;
const plain = csvRows("plain.csv");
const node = json("node.json");
const counts = [1, 2, 4, 8, 16, 32, 64];
// Each in-process COUNT ran one or more times: the figure is the median run; all runs are kept.
const inproc = counts
  .map((c) => {
    const runs = fs
      .readdirSync(dir)
      .filter((n) => n.startsWith(`inproc-${c}-r`) && n.endsWith(".json"))
      .map((n) => json(n))
      .sort((a, b) => a.jobs_per_second - b.jobs_per_second);
    return { count: c, r: runs.length ? runs[Math.floor((runs.length - 1) / 2)] : null, runs };
  })
  .filter((x) => x.r);
const exec = [2, 4].map((c) => ({ count: c, r: json(`exec-${c}.json`) })).filter((x) => x.r);
const php = json("php-2.json");
const phpFork = json("php-fork-2.json");
const spawn1 = json("spawn-1.json");
const spawn2 = json("spawn-2.json");
const lat1 = json("latency-1q.json");
const lat3 = json("latency-3q.json");
const rss = Object.fromEntries(
  [1, 4, 16]
    .filter((c) => exists(`daemon-rss-${c}.kib`))
    .map((c) => [c, Number(fs.readFileSync(file(`daemon-rss-${c}.kib`), "utf8")) / 1024]),
);
const rtt = json("rtt.json");
const rttRuns = Object.fromEntries(
  [1, 8, 32].filter((c) => exists(`rtt-${c}.json`)).map((c) => [c, json(`rtt-${c}.json`)]),
);
const top = exists("top.tsv")
  ? fs
      .readFileSync(file("top.tsv"), "utf8")
      .split("\n")
      .filter(Boolean)
      .map((l) => l.split("\t"))
  : [];

const IDLE = Number(process.env.BENCH_IDLE || 30);
const SAMPLES = Number(process.env.BENCH_SAMPLES || 50);
const f0 = (v) => (v == null || Number.isNaN(v) ? "–" : Math.round(v).toLocaleString("en-US"));
const f1 = (v) => (v == null || Number.isNaN(v) ? "–" : v.toFixed(1));
const f2 = (v) => (v == null || Number.isNaN(v) ? "–" : v.toFixed(2));
const f3 = (v) => (v == null || Number.isNaN(v) ? "–" : v.toFixed(3));
const max = (xs) => xs.reduce((m, x) => (x > m ? x : m), -Infinity);

const best = inproc.length ? inproc.reduce((a, b) => (b.r.jobs_per_second > a.r.jobs_per_second ? b : a)) : null;
const bestRate = best ? best.r.jobs_per_second : null;
const inproc2 = inproc.find((x) => x.count === 2);
const bestExec = exec.length ? max(exec.map((x) => x.r.jobs_per_second)) : null;

// Throughput must not fall as COUNT grows: each COUNT within 10% (noise) of the best below it.
let falls = [];
for (let i = 1; i < inproc.length; i++) {
  const before = max(inproc.slice(0, i).map((x) => x.r.jobs_per_second));
  if (inproc[i].r.jobs_per_second < 0.9 * before) {
    falls.push(`COUNT ${inproc[i].count}: ${f0(inproc[i].r.jobs_per_second)} < 90% of ${f0(before)}`);
  }
}

const targets = [];
const target = (name, value, shown, goal, pass) =>
  targets.push({ name, value, shown, target: goal, pass: value == null ? null : pass });
target(
  `in-process (best: COUNT ${best ? best.count : "?"}) vs node-resque (2 processes)`,
  bestRate && node ? bestRate / node.jobs_per_second : null,
  bestRate && node ? `${f0(bestRate)} / ${f0(node.jobs_per_second)} = ${f1(bestRate / node.jobs_per_second)}×` : "–",
  "≥ 4×",
  bestRate && node && bestRate >= 4 * node.jobs_per_second,
);
target(
  "in-process (best) vs Redis ceiling",
  bestRate && ceiling ? bestRate / ceiling : null,
  bestRate && ceiling ? `${f0(bestRate)} / ${f0(ceiling)} = ${f2(bestRate / ceiling)}` : "–",
  "≥ 0.33",
  bestRate && ceiling && bestRate >= ceiling / 3,
);
target(
  "exec /bin/true (best COUNT) vs spawn loop (1 loop)",
  bestExec && spawn1 ? bestExec / spawn1.spawns_per_second : null,
  bestExec && spawn1 ? `${f0(bestExec)} / ${f0(spawn1.spawns_per_second)} = ${f2(bestExec / spawn1.spawns_per_second)}` : "–",
  "≥ 0.5",
  bestExec && spawn1 && bestExec >= 0.5 * spawn1.spawns_per_second,
);
target(
  "PHP pool vs PHP fork (COUNT 2)",
  php && phpFork ? php.jobs_per_second / phpFork.jobs_per_second : null,
  php && phpFork ? `${f0(php.jobs_per_second)} / ${f0(phpFork.jobs_per_second)} = ${f1(php.jobs_per_second / phpFork.jobs_per_second)}×` : "–",
  "≥ 10×",
  php && phpFork && php.jobs_per_second >= 10 * phpFork.jobs_per_second,
);
for (const [label, r] of [["one queue", lat1], ["three queues", lat3]]) {
  const p = r && r.pickup_latency;
  target(`pickup p50, ${label} (ms)`, p ? p.p50_ms : null, p ? f3(p.p50_ms) : "–", "≤ 1 ms", p && p.p50_ms <= 1);
  target(`pickup p99, ${label} (ms)`, p ? p.p99_ms : null, p ? f3(p.p99_ms) : "–", "≤ 5 ms", p && p.p99_ms <= 5);
}
const idle = lat1 ? lat1.idle_commands_per_second_per_worker : null;
target(
  `idle Redis commands/s per worker (COUNT 16, ${IDLE} s)`,
  idle,
  f3(idle),
  "≤ 0.25",
  idle != null && idle <= 0.25,
);
target("daemon RSS at COUNT 16 (MiB)", rss[16] ?? null, f1(rss[16]), "≤ 15 MiB", rss[16] != null && rss[16] <= 15);
target(
  "throughput as COUNT grows to 64",
  inproc.length ? (falls.length ? 0 : 1) : null,
  falls.length ? falls.join("; ") : inproc.map((x) => f0(x.r.jobs_per_second)).join(" → "),
  "no fall > 10%",
  falls.length === 0,
);
const r1 = rttRuns[1];
const r32 = rttRuns[32];
target(
  "1 ms RTT: COUNT 32 vs COUNT 1",
  r1 && r32 ? r32.jobs_per_second / r1.jobs_per_second : null,
  r1 && r32 ? `${f0(r32.jobs_per_second)} / ${f0(r1.jobs_per_second)} = ${f1(r32.jobs_per_second / r1.jobs_per_second)}×` : "–",
  "≥ 10×",
  r1 && r32 && r32.jobs_per_second >= 10 * r1.jobs_per_second,
);

// --- tables -----------------------------------------------------------------------------------
const md = [];
const table = (head, rows) => {
  md.push(`| ${head.join(" | ")} |`);
  md.push(`|${head.map(() => "---").join("|")}|`);
  for (const r of rows) md.push(`| ${r.join(" | ")} |`);
  md.push("");
};
const cpu = (r) => (r && r.drain_cpu ? r.drain_cpu : null);
const cores = (r, k) => {
  const c = cpu(r);
  return c ? f2(c[k] / Math.max(c.seconds, 1e-9)) : "–";
};

md.push(`# resque benchmarks — ${machine.date || ""}`);
md.push("");
md.push(
  `Machine: ${machine.cpu || "?"}, ${machine.cores || "?"} cores, ${machine.ram || "?"} RAM, kernel ${machine.kernel || "?"}; ` +
    `redis-server ${machine.redis || "?"}, node ${machine.node || "?"} (node-resque ${machine.node_resque || "?"}), ` +
    `PHP ${machine.php || "?"}, ${machine.rustc || ""}; ${machine.resque || ""} at ${machine.commit || "?"}.`,
);
md.push("");
md.push(
  `Load: ${load.load_at_start || "?"} at start (waited ${load.waited_seconds || 0} s for it), ${load.load_at_end || "?"} at the end.`,
);
const foreign = {};
const ours = /^(redis-server|redis-benchmark|redis-cli|resque|node|php|true|spawn_true|delay_proxy|top|cargo|ip|bash|awk|sleep)$/;
for (const [, pct, cmd] of top) if (!ours.test(cmd)) foreign[cmd] = Math.max(foreign[cmd] || 0, Number(pct));
const foreignText = Object.entries(foreign)
  .sort((a, b) => b[1] - a[1])
  .map(([c, p]) => `${c} (up to ${p}% CPU)`)
  .join(", ");
md.push(`Other processes seen using ≥ 5% CPU during the run: ${foreignText || "none"}.`);
md.push("");

md.push("## Targets");
md.push("");
table(
  ["figure", "measured", "target", "result"],
  targets.map((t) => [t.name, t.shown, t.target, t.pass == null ? "n/a" : t.pass ? "PASS" : "FAIL"]),
);

md.push("## Throughput (no-op jobs, jobs/s)");
md.push("");
md.push(
  "CPU columns: CPU seconds per wall second during the drain (1.00 = one core busy) of the resque " +
    "process, of its child processes (exec jobs, PHP runners) and of redis-server; the machine has " +
    `${machine.cores || "?"} cores.`,
);
md.push("");
const rows = [];
if (ceiling) rows.push(["Redis ceiling: EVAL of one job's commands (redis-benchmark -c 50 -P 16)", "–", f0(ceiling), "–", "–", "–", "–", "–"]);
if (node) {
  const d = node.drain_cpu || {};
  rows.push([
    `node-resque ${machine.node_resque || ""} (2 processes, timeout 1000 ms)`,
    "2",
    f0(node.jobs_per_second),
    f1(node.redis_commands_per_job),
    f2(d.workers_s / node.seconds),
    "–",
    f2(d.redis_s / node.seconds),
    `idle ${f1(node.idle_rss_mib && node.idle_rss_mib[0])} / after ${f1(node.after_drain_rss_mib && node.after_drain_rss_mib[0])} MiB per process`,
  ]);
}
const resqueRow = (label, count, r) => [
  label,
  String(count),
  f0(r.jobs_per_second),
  f1(r.redis_commands_per_job),
  cores(r, "resque_cpu_seconds"),
  cores(r, "children_cpu_seconds"),
  cores(r, "redis_cpu_seconds"),
  `${f1(r.peak_rss_mib)} MiB (bench process)`,
];
for (const x of inproc) {
  const row = resqueRow("resque in-process", x.count, x.r);
  if (x.runs.length > 1) {
    row[0] += ` (median of ${x.runs.length}: ${x.runs.map((r) => f0(r.jobs_per_second)).join(", ")})`;
  }
  rows.push(row);
}
for (const x of exec) rows.push(resqueRow("resque exec /bin/true", x.count, x.r));
if (php) rows.push(resqueRow("resque PHP pool", 2, php));
if (phpFork) rows.push(resqueRow('resque PHP isolation = "fork"', 2, phpFork));
if (spawn1) rows.push(["spawn_true: spawn + reap /bin/true, 1 loop", "1", f0(spawn1.spawns_per_second), "–", "–", "–", "–", "–"]);
if (spawn2) rows.push(["spawn_true, 2 loops in parallel", "2", f0(spawn2.spawns_per_second), "–", "–", "–", "–", "–"]);
table(["what", "COUNT", "jobs/s", "Redis cmds/job", "resque CPU", "children CPU", "redis CPU", "memory"], rows);

if (plain.length) {
  md.push("Plain redis-benchmark -P 16 for context (requests/s): " + plain.map((p) => `${p.test} ${f0(p.rps)}`).join(", ") + ".");
  md.push("");
}

md.push("## Pickup latency (enqueue → job starts, idle workers, COUNT 16)");
md.push("");
table(
  ["queues", "samples", "p50 ms", "p90 ms", "p99 ms", "max ms"],
  [
    ["bench", lat1],
    ["a,b,c (jobs go to c)", lat3],
  ]
    .filter(([, r]) => r && r.pickup_latency)
    .map(([q, r]) => [q, String(SAMPLES), f3(r.pickup_latency.p50_ms), f3(r.pickup_latency.p90_ms), f3(r.pickup_latency.p99_ms), f3(r.pickup_latency.max_ms)]),
);

md.push("## Idle cost and memory");
md.push("");
table(
  ["what", "value"],
  [
    ["resque: Redis commands/s per idle worker (COUNT 16)", f3(idle)],
    ["node-resque: Redis commands/s per idle worker (timeout 1000 ms)", f3(node && node.idle_commands_per_second_per_worker)],
    ...[1, 4, 16].map((c) => [`resque daemon VmRSS after 3 s idle, COUNT ${c} (MiB)`, f1(rss[c])]),
    ["node-resque worker process VmRSS after 3 s idle (MiB, each)", node && node.idle_rss_mib ? node.idle_rss_mib.map(f1).join(", ") : "–"],
    ["node-resque worker process VmRSS after the drain (MiB, each)", node && node.after_drain_rss_mib ? node.after_drain_rss_mib.map(f1).join(", ") : "–"],
  ],
);

md.push("## 1 ms of added round-trip time");
md.push("");
if (rtt) {
  md.push(
    `Delay: ${rtt.method === "netem" ? "tc netem delay 500us on lo" : `bench/delay_proxy.rs (no netem in this kernel), ${rtt.one_way_us} µs each way`}` +
      `${rtt.netns ? ", inside a network namespace" : ""}; PING RTT ${f3(rtt.base_rtt_us / 1000)} ms without, ${f3(rtt.rtt_us / 1000)} ms with it.`,
  );
  md.push("");
}
table(
  ["COUNT", "jobs/s", "× COUNT 1", "resque CPU", "redis CPU"],
  [1, 8, 32]
    .filter((c) => rttRuns[c])
    .map((c) => [
      String(c),
      f0(rttRuns[c].jobs_per_second),
      r1 ? f1(rttRuns[c].jobs_per_second / r1.jobs_per_second) : "–",
      cores(rttRuns[c], "resque_cpu_seconds"),
      cores(rttRuns[c], "redis_cpu_seconds"),
    ]),
);

const text = md.join("\n");
fs.writeFileSync(outMd, text + "\n");
fs.writeFileSync(
  outJson,
  JSON.stringify(
    {
      machine,
      load,
      other_processes: foreign,
      targets,
      redis_ceiling_jobs_per_second: ceiling,
      redis_plain: plain,
      node_resque: node,
      resque: {
        in_process: Object.fromEntries(inproc.map((x) => [x.count, { median: x.r, runs: x.runs }])),
        exec: Object.fromEntries(exec.map((x) => [x.count, x.r])),
        php_pool: php,
        php_fork: phpFork,
        latency_one_queue: lat1,
        latency_three_queues: lat3,
        daemon_rss_mib: rss,
      },
      spawn: { one_loop: spawn1, two_loops: spawn2 },
      rtt: { ...(rtt || {}), runs: rttRuns },
    },
    null,
    2,
  ) + "\n",
);
process.stdout.write(text + "\n");
const failed = targets.filter((t) => t.pass === false).length;
process.stdout.write(`\n${targets.length - failed} passed, ${failed} failed (targets)\n`);
