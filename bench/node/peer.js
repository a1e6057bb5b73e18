#!/usr/bin/env node
// The node-resque peer of bench/run.sh.
//
//   node peer.js bench PORT N [IDLE_SECONDS]
//       1. idle: 2 worker processes on an empty queue; after 3 s, the VmRSS of each; over
//          IDLE_SECONDS (default 5), Redis commands/s per worker (INFO total_commands_processed).
//       2. drain: N no-op jobs pre-enqueued (pipelined RPUSH of node-resque's own payload
//          {"class":"NoopJob","queue":"bench","args":[]} + SADD queues), then 2 fresh worker
//          processes; jobs/s from the first to the last job, read by polling
//          resque:stat:processed every millisecond; the CPU time of the workers and of
//          redis-server (INFO cpu) over that window; the RSS of each worker after the drain.
//       Prints one JSON object.
//   node peer.js work PORT QUEUE      (internal) one Worker with default settings but
//                                     timeout: 1000 ms (its poll interval) and a NoopJob.
//
// Redis is 127.0.0.1:PORT, database 0, namespace "resque" (node-resque's defaults). Only the
// keys of that namespace that the run uses are deleted first: use a scratch Redis anyway.
"use strict";

const { fork } = require("child_process");
const fs = require("fs");
const { Worker } = require("node-resque");
const IORedis = require("ioredis");

const QUEUE = "bench";
const PAYLOAD = JSON.stringify({ class: "NoopJob", queue: QUEUE, args: [] });

function connection(port) {
  return { pkg: "ioredis", host: "127.0.0.1", port: Number(port), database: 0, namespace: "resque" };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function work(port, queue) {
  const worker = new Worker(
    { connection: connection(port), queues: [queue], timeout: 1000 },
    { NoopJob: { perform: async () => null } },
  );
  worker.on("error", (error) => process.stderr.write(`worker error: ${error.stack || error}\n`));
  process.on("message", async (m) => {
    if (m === "stop") {
      await worker.end();
      process.exit(0);
    }
  });
  await worker.connect();
  await worker.start();
  process.send({ ready: true });
}

function procStatus(pid, field) {
  const text = fs.readFileSync(`/proc/${pid}/status`, "utf8");
  const line = text.split("\n").find((l) => l.startsWith(field));
  return line ? Number(line.split(/\s+/)[1]) / 1024 : null; // MiB
}

// utime + stime of a process, in seconds.
function cpuSeconds(pid) {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const ticks = Number(fields[11]) + Number(fields[12]);
  return ticks / 100; // USER_HZ is 100 on Linux
}

async function info(redis) {
  const text = await redis.info("stats");
  const cpu = await redis.info("cpu");
  const get = (t, k) => Number((t.match(new RegExp(`^${k}:(\\S+)`, "m")) || [])[1]);
  return {
    commands: get(text, "total_commands_processed"),
    cpu: get(cpu, "used_cpu_user") + get(cpu, "used_cpu_sys"),
  };
}

async function startWorkers(port, n) {
  const children = [];
  for (let i = 0; i < n; i++) {
    const child = fork(__filename, ["work", String(port), QUEUE], { stdio: ["ignore", "ignore", "inherit", "ipc"] });
    children.push(child);
  }
  await Promise.all(
    children.map(
      (c) =>
        new Promise((resolve, reject) => {
          c.once("message", (m) => (m && m.ready ? resolve() : reject(new Error("bad message"))));
          c.once("exit", (code) => reject(new Error(`worker exited with ${code}`)));
        }),
    ),
  );
  return children;
}

async function stopWorkers(children) {
  await Promise.all(
    children.map(
      (c) =>
        new Promise((resolve) => {
          if (c.exitCode !== null) return resolve();
          const t = setTimeout(() => c.kill("SIGKILL"), 10000);
          c.once("exit", () => {
            clearTimeout(t);
            resolve();
          });
          c.send("stop");
        }),
    ),
  );
}

async function bench(port, n, idleSeconds) {
  const redis = new IORedis({ host: "127.0.0.1", port: Number(port) });
  const processedKey = "resque:stat:processed";
  await redis.del("resque:queue:" + QUEUE, processedKey, "resque:stat:failed", "resque:failed");
  const result = { workers: 2, jobs: n, node: process.version };

  // 1. Idle workers: RSS after 3 s, commands per second.
  {
    const children = await startWorkers(port, 2);
    await sleep(3000);
    result.idle_rss_mib = children.map((c) => procStatus(c.pid, "VmRSS:"));
    const a = await info(redis);
    await sleep(idleSeconds * 1000);
    const b = await info(redis);
    // Our own two INFO calls in between count too.
    result.idle_seconds = idleSeconds;
    result.idle_commands_per_second_per_worker = (b.commands - a.commands - 2) / idleSeconds / 2;
    await stopWorkers(children);
  }

  // 2. Drain N pre-enqueued jobs.
  await redis.del(processedKey);
  await redis.sadd("resque:queues", QUEUE);
  for (let i = 0; i < n; i += 1000) {
    const pipe = redis.pipeline();
    for (let j = i; j < Math.min(n, i + 1000); j++) pipe.rpush("resque:queue:" + QUEUE, PAYLOAD);
    await pipe.exec();
  }
  const children = await startWorkers(port, 2);
  let first = null;
  let last = null;
  let polls = 0; // our own GETs after the first observation, not the workers' commands
  const deadline = Date.now() + 300000;
  while (Date.now() < deadline) {
    const processed = Number((await redis.get(processedKey)) || 0);
    const now = process.hrtime.bigint();
    if (first !== null) polls += 1;
    if (first === null && processed > 0) {
      const i = await info(redis);
      first = { t: now, processed, cpu: children.map((c) => cpuSeconds(c.pid)), redis: i.cpu, commands: i.commands };
    }
    if (processed >= n) {
      const i = await info(redis);
      last = { t: now, cpu: children.map((c) => cpuSeconds(c.pid)), redis: i.cpu, commands: i.commands };
      break;
    }
    await sleep(1);
  }
  if (!last) throw new Error("node-resque did not drain the jobs within 300 s");
  const seconds = Number(last.t - first.t) / 1e9;
  result.seconds = seconds;
  result.jobs_per_second = (n - first.processed) / seconds;
  // Between the two INFO stats: the first pair's INFO cpu and our GETs were counted too.
  result.redis_commands_per_job = (last.commands - first.commands - 1 - polls) / (n - first.processed);
  result.drain_cpu = {
    workers_s: last.cpu.reduce((s, v) => s + v, 0) - first.cpu.reduce((s, v) => s + v, 0),
    redis_s: last.redis - first.redis,
  };
  result.after_drain_rss_mib = children.map((c) => procStatus(c.pid, "VmRSS:"));
  await stopWorkers(children);
  await redis.quit();
  process.stdout.write(JSON.stringify(result) + "\n");
}

async function main() {
  const [cmd, ...args] = process.argv.slice(2);
  if (cmd === "work" && args.length === 2) return work(args[0], args[1]);
  if (cmd === "bench" && (args.length === 2 || args.length === 3)) {
    return bench(args[0], Number(args[1]), Number(args[2] || 5));
  }
  process.stderr.write("usage: node peer.js bench PORT N [IDLE_SECONDS] | work PORT QUEUE\n");
  process.exit(2);
}

main().catch((e) => {
  process.stderr.write(`${e.stack || e}\n`);
  process.exit(1);
});
