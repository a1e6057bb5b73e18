<?php
/*
 * Enqueues a job exactly as php-resque (TP3 Resque::enqueue with $trackStatus = true) writes it,
 * talking RESP to Redis over a plain socket, so no extension is needed:
 *   SADD resque:queues Q; RPUSH resque:queue:Q <json_encode(payload)>; SET resque:job:<id>:status.
 *
 * Usage: php enqueue.php HOST PORT QUEUE ARGS_JSON   (prints the job id)
 */

require __DIR__ . '/resp.php';

if ($argc !== 5) {
    fwrite(STDERR, "usage: php enqueue.php HOST PORT QUEUE ARGS_JSON\n");
    exit(64);
}
list(, $host, $port, $queue, $argsJson) = $argv;
$args = json_decode($argsJson, true);

$fp = fsockopen($host, (int)$port, $errno, $errstr, 5);
if (!$fp) {
    fwrite(STDERR, "cannot connect to Redis: $errstr\n");
    exit(69);
}

// Resque::enqueue → Resque::push → Job\Status::create, in TP3's order.
$id = md5(uniqid('', true));
resp_call($fp, array('SADD', 'resque:queues', $queue));
resp_call($fp, array('RPUSH', 'resque:queue:' . $queue, json_encode(array(
    'class' => '\\Common\\Job\\OkJob',
    'args' => array($args),
    'id' => $id,
))));
resp_call($fp, array('SET', 'resque:job:' . $id . ':status', json_encode(array(
    'status' => 1,
    'updated' => time(),
    'started' => time(),
))));
fclose($fp);
echo $id, "\n";
