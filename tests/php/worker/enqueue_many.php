<?php
/*
 * Enqueues many jobs in php-resque's order (TP3 Resque::enqueue): SADD queues, RPUSH the job,
 * and only then — a separate command, after GAP microseconds at most (a PHP process can be
 * descheduled there) — SET its WAITING status, if tracked. Talks RESP over a plain socket.
 *
 * Usage: php enqueue_many.php HOST PORT QUEUE CLASS COUNT TRACK(0|1) MAX_GAP_US PAUSE_US
 * Prints one job id per line. PAUSE_US: wait between jobs (0: as fast as possible).
 */

require __DIR__ . '/resp.php';

if ($argc !== 9) {
    fwrite(STDERR, "usage: php enqueue_many.php HOST PORT QUEUE CLASS COUNT TRACK MAX_GAP_US PAUSE_US\n");
    exit(64);
}
list(, $host, $port, $queue, $class, $count, $track, $maxGap, $pause) = $argv;

$fp = fsockopen($host, (int)$port, $errno, $errstr, 5);
if (!$fp) {
    fwrite(STDERR, "cannot connect to Redis: $errstr\n");
    exit(69);
}
mt_srand((int)(microtime(true) * 1000000) ^ getmypid());
for ($i = 0; $i < (int)$count; $i++) {
    $id = md5(uniqid('', true));
    resp_call($fp, array('SADD', 'resque:queues', $queue));
    resp_call($fp, array('RPUSH', 'resque:queue:' . $queue, json_encode(array(
        'class' => $class,
        'args' => array(array('n' => $i)),
        'id' => $id,
    ))));
    if ((int)$track) {
        $gap = mt_rand(0, (int)$maxGap);
        if ($gap > 0) {
            usleep($gap);
        }
        resp_call($fp, array('SET', 'resque:job:' . $id . ':status', json_encode(array(
            'status' => 1,
            'updated' => time(),
            'started' => time(),
        ))));
    }
    echo $id, "\n";
    if ((int)$pause > 0) {
        usleep((int)$pause);
    }
}
fclose($fp);
