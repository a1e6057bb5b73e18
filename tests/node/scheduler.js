#!/usr/bin/env node
// node-resque's delayed-job side, for tests/scheduler.rs:
//
//   node scheduler.js enqueue-in PORT MS QUEUE CLASS ARGS_JSON   queue.enqueueIn(MS, …); prints the due second
//   node scheduler.js enqueue-many PORT AT_MS QUEUE CLASS N        N × queue.enqueueAt(AT_MS, …) with args [{n: i}]
//   node scheduler.js run PORT SECONDS [POLL_MS]                   a node-resque Scheduler (poll every POLL_MS,
//                                                                  default 50) for SECONDS; prints {"transferred": N}
//
// Redis is 127.0.0.1:PORT, database 0, namespace "resque" (node-resque's defaults).
"use strict";

const { Queue, Scheduler } = require("node-resque");

function connection(port) {
  return { pkg: "ioredis", host: "127.0.0.1", port: Number(port), database: 0, namespace: "resque" };
}

async function withQueue(port, fn) {
  const queue = new Queue({ connection: connection(port) });
  queue.on("error", (error) => process.stderr.write(`queue error: ${error.stack || error}\n`));
  await queue.connect();
  try {
    return await fn(queue);
  } finally {
    await queue.end();
  }
}

async function main() {
  const [command, port, ...rest] = process.argv.slice(2);
  switch (command) {
    case "enqueue-in": {
      const [ms, q, cls, argsJson] = rest;
      await withQueue(port, async (queue) => {
        await queue.enqueueIn(Number(ms), q, cls, JSON.parse(argsJson));
        process.stdout.write(JSON.stringify({ at: Math.round((Date.now() + Number(ms)) / 1000) }) + "\n");
      });
      break;
    }
    case "enqueue-many": {
      const [atMs, q, cls, n] = rest;
      await withQueue(port, async (queue) => {
        const pending = [];
        for (let i = 0; i < Number(n); i++) {
          pending.push(queue.enqueueAt(Number(atMs), q, cls, [{ n: i }]));
          if (pending.length >= 500) await Promise.all(pending.splice(0));
        }
        await Promise.all(pending);
      });
      break;
    }
    case "run": {
      const [seconds, pollMs] = rest;
      const scheduler = new Scheduler({
        connection: connection(port),
        timeout: Number(pollMs || 50),
        name: "node-scheduler",
      });
      let transferred = 0;
      scheduler.on("transferredJob", () => (transferred += 1));
      scheduler.on("error", (error) => process.stderr.write(`scheduler error: ${error.stack || error}\n`));
      await scheduler.connect();
      scheduler.start();
      await new Promise((resolve) => setTimeout(resolve, Number(seconds) * 1000));
      await scheduler.end();
      process.stdout.write(JSON.stringify({ transferred }) + "\n");
      break;
    }
    default:
      process.stderr.write("usage: see the header of scheduler.js\n");
      process.exit(2);
  }
}

main().then(
  () => process.exit(0),
  (error) => {
    process.stderr.write(`scheduler.js: ${error.stack || error}\n`);
    process.exit(1);
  },
);
