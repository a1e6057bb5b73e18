<?php
/*
 * A stand-in for the seed's vendored php-resque (TP3 flavour, namespaced classes): only what
 * the app, the guide and the tests use. Keys and order as php-resque writes them: enqueue pushes
 * the job, then SETs its WAITING status; keys under "resque:" whatever prefix() is given.
 */

namespace {
    if (!class_exists('Resque', false)) {
        class Resque
        {
            public static $host = '127.0.0.1';
            public static $port = 6379;
            public static $db = 0;
            private static $fp = null;

            public static function setBackend($server, $database = 0)
            {
                if (is_array($server)) {
                    self::$host = $server['redis']['host'];
                    self::$port = (int)$server['redis']['port'];
                } else {
                    list(self::$host, self::$port) = explode(':', $server);
                }
                self::$db = (int)$database;
                self::$fp = null;
            }

            public static function call()
            {
                if (self::$fp === null) {
                    $fp = fsockopen(self::$host, self::$port, $errno, $errstr, 5);
                    if (!$fp) {
                        throw new \Resque\Exception("cannot connect to Redis: $errstr");
                    }
                    self::$fp = $fp;
                    self::send(array('SELECT', (string)self::$db));
                }
                return self::send(func_get_args());
            }

            private static function send(array $args)
            {
                $out = '*' . count($args) . "\r\n";
                foreach ($args as $arg) {
                    $out .= '$' . strlen($arg) . "\r\n" . $arg . "\r\n";
                }
                fwrite(self::$fp, $out);
                return self::reply();
            }

            private static function reply()
            {
                $line = fgets(self::$fp);
                if ($line === false) {
                    throw new \Resque\Exception('Redis closed the connection');
                }
                $rest = substr($line, 1, -2);
                switch ($line[0]) {
                    case '+': return $rest;
                    case '-': throw new \Resque\Exception('Redis error: ' . $rest);
                    case ':': return (int)$rest;
                    case '$':
                        if ((int)$rest < 0) return null;
                        $data = '';
                        while (strlen($data) < (int)$rest + 2) {
                            $data .= fread(self::$fp, (int)$rest + 2 - strlen($data));
                        }
                        return substr($data, 0, -2);
                    case '*':
                        $items = array();
                        for ($i = 0; $i < (int)$rest; $i++) $items[] = self::reply();
                        return $items;
                }
                throw new \Resque\Exception('unexpected reply: ' . $line);
            }

            public static function enqueue($queue, $class, $args = null, $trackStatus = false)
            {
                $id = md5(uniqid('', true));
                self::call('SADD', 'resque:queues', $queue);
                self::call('RPUSH', 'resque:queue:' . $queue, json_encode(array(
                    'class' => $class,
                    'args' => array($args),
                    'id' => $id,
                )));
                if ($trackStatus) {
                    \Resque\Job\Status::create($id);
                }
                return $id;
            }
        }
    }
}

namespace Resque {
    if (!class_exists('Resque\Exception', false)) {
        class Exception extends \Exception
        {
        }
    }

    if (!class_exists('Resque\Redis', false)) {
        class Redis
        {
            /** The seed's php-resque accepts a prefix and never applies it. */
            public static function prefix($prefix)
            {
            }
        }
    }

    if (!class_exists('Resque\Worker', false)) {
        /** php-resque's worker loop, as `php resque start` runs it: it takes jobs from Redis itself. */
        class Worker
        {
            const LOG_NORMAL = 1;
            const LOG_VERBOSE = 2;
            public $logLevel = 0;
            private $queues;
            private $id;

            public function __construct($queues)
            {
                $this->queues = is_array($queues) ? $queues : array($queues);
                $this->id = gethostname() . ':' . getmypid() . ':' . implode(',', $this->queues);
            }

            public function __toString()
            {
                return $this->id;
            }

            public function work($interval = 5)
            {
                // startup(): pruneDeadWorkers() runs ps, then registerWorker().
                exec('ps -e -o pid,command | grep [r]esque', $pids);
                \Resque::call('SADD', 'resque:workers', $this->id);
                \Resque::call('SET', 'resque:worker:' . $this->id . ':started', date('D M d H:i:s T Y'));
                while (true) {
                    $queues = in_array('*', $this->queues) ? \Resque::call('SMEMBERS', 'resque:queues') : $this->queues;
                    $payload = null;
                    foreach ($queues as $queue) {
                        $payload = \Resque::call('LPOP', 'resque:queue:' . $queue);
                        if ($payload !== null) {
                            break;
                        }
                    }
                    if ($payload === null) {
                        usleep((int)($interval * 1000000));
                        continue;
                    }
                    $job = json_decode($payload, true);
                    file_put_contents(APP_PATH . 'Runtime/php-resque-took.log', $job['id'] . "\n", FILE_APPEND);
                    $class = ltrim($job['class'], '\\');
                    $instance = new $class();
                    $instance->args = $job['args'][0];
                    $instance->perform();
                }
            }

            public function shutdown()
            {
            }
        }
    }
}

namespace Resque\Job {
    if (!class_exists('Resque\Job\Status', false)) {
        class Status
        {
            const STATUS_WAITING = 1;
            const STATUS_RUNNING = 2;
            const STATUS_FAILED = 3;
            const STATUS_COMPLETE = 4;
            private $id;

            public function __construct($id)
            {
                $this->id = $id;
            }

            public static function create($id)
            {
                \Resque::call('SET', 'resque:job:' . $id . ':status', json_encode(array(
                    'status' => self::STATUS_WAITING,
                    'updated' => time(),
                    'started' => time(),
                )));
            }

            public function isTracking()
            {
                return \Resque::call('EXISTS', 'resque:job:' . $this->id . ':status') > 0;
            }

            public function get()
            {
                $status = json_decode((string)\Resque::call('GET', 'resque:job:' . $this->id . ':status'), true);
                return $status ? $status['status'] : false;
            }
        }
    }

    if (!class_exists('Resque\Job\DontPerform', false)) {
        class DontPerform extends \Exception
        {
        }
    }
}
