#!/usr/bin/env node
// A small CLI around node-resque's Queue and Worker, used by tests/node_interop.rs to check that
// what resque writes is read by a real node-resque and the other way round.
//
//   node peer.js enqueue PORT QUEUE CLASS ARGS_JSON   queue.enqueue(QUEUE, CLASS, ARGS)
//   node peer.js queued PORT QUEUE                    prints queue.queued(QUEUE, 0, -1) as JSON
//   node peer.js failed PORT                          prints queue.failed(0, -1) as JSON
//   node peer.js retry-first PORT                     queue.retryAndRemoveFailed(first failed item)
//   node peer.js work PORT QUEUE N                    a Worker on QUEUE until N jobs were performed;
//                                                     one JSON line per job: what it received
//
// Redis is 127.0.0.1:PORT, database 0, namespace "resque" (node-resque's defaults).
// Exit codes: 0 done, 1 error, 2 usage, 3 timed out (PEER_TIMEOUT_MS, default 60 s).
"use strict";

const { Queue, Worker } = require("node-resque");

const TIMEOUT_MS = Number(process.env.PEER_TIMEOUT_MS || 60000);

function usage() {
  process.stderr.write(
    "usage: node peer.js enqueue PORT QUEUE CLASS ARGS_JSON | queued PORT QUEUE | " +
      "failed PORT | retry-first PORT | work PORT QUEUE N\n",
  );
  process.exit(2);
}

function connection(port) {
  const n = Number(port);
  if (!Number.isInteger(n) || n <= 0) usage();
  return { pkg: "ioredis", host: "127.0.0.1", port: n, database: 0, namespace: "resque" };
}

function print(value) {
  process.stdout.write(JSON.stringify(value) + "\n");
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

// The job map of the worker: what each job received is recorded by the event handlers below.
function jobs(received) {
  return {
    // Records its arguments and succeeds.
    "Common\\Job\\Mail": {
      perform: async function (...args) {
        received.push(args);
        return "sent";
      },
    },
    // Records its arguments and throws, so node-resque writes a failure record.
    "Node\\Job\\Boom": {
      perform: async function (...args) {
        received.push(args);
        const reason = args[0] && args[0].reason ? args[0].reason : "no reason";
        throw new Error(`boom: ${reason}`);
      },
    },
  };
}

async function work(port, queueName, count) {
  const n = Number(count);
  if (!Number.isInteger(n) || n < 1) usage();
  const received = [];
  const worker = new Worker(
    // A short poll interval: node-resque polls (it does not block in Redis).
    { connection: connection(port), queues: [queueName], timeout: 100 },
    jobs(received),
  );
  let done = 0;
  const report = (outcome, queue, job, extra) => {
    done += 1;
    print({
      outcome,
      queue,
      class: job.class,
      payload: job,
      received: received.shift() || null,
      ...extra,
    });
  };
  worker.on("success", (queue, job, result) => report("success", queue, job, { result }));
  worker.on("failure", (queue, job, failure) =>
    report("failure", queue, job, { exception: failure.name, error: failure.message }),
  );
  worker.on("error", (error, queue, job) =>
    process.stderr.write(`worker error on ${queue}: ${error.stack || error} ${JSON.stringify(job)}\n`),
  );
  await worker.connect();
  await worker.start();
  while (done < n) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  await worker.end();
}

async function main() {
  const [command, port, ...rest] = process.argv.slice(2);
  if (!command || !port) usage();
  switch (command) {
    case "enqueue": {
      if (rest.length !== 3) usage();
      const [queueName, className, argsJson] = rest;
      const args = JSON.parse(argsJson);
      await withQueue(port, async (queue) => print(await queue.enqueue(queueName, className, args)));
      break;
    }
    case "queued": {
      if (rest.length !== 1) usage();
      await withQueue(port, async (queue) => print(await queue.queued(rest[0], 0, -1)));
      break;
    }
    case "failed": {
      if (rest.length !== 0) usage();
      await withQueue(port, async (queue) => print(await queue.failed(0, -1)));
      break;
    }
    case "retry-first": {
      if (rest.length !== 0) usage();
      await withQueue(port, async (queue) => {
        const failed = await queue.failed(0, 0);
        if (failed.length === 0) throw new Error("the failed list is empty");
        print(await queue.retryAndRemoveFailed(failed[0]));
      });
      break;
    }
    case "work": {
      if (rest.length !== 2) usage();
      await work(port, rest[0], rest[1]);
      break;
    }
    default:
      usage();
  }
}

const timer = setTimeout(() => {
  process.stderr.write(`peer.js: timed out after ${TIMEOUT_MS} ms\n`);
  process.exit(3);
}, TIMEOUT_MS);
timer.unref();

main().then(
  () => process.exit(0),
  (error) => {
    process.stderr.write(`peer.js: ${error.stack || error}\n`);
    process.exit(1);
  },
);
