<?php
/*
 * What the application does in a controller: boot, then \Resque::enqueue(QUEUE, CLASS, ARGS, true).
 * Usage: php enqueue.php QUEUE CLASS ARGS_JSON   (prints the job id)
 */
define('APP_PATH', './Application/');
define('COMMON_PATH', APP_PATH . 'Common/');
function C($name) { $c = require COMMON_PATH . 'Conf/config.php'; return $c[$name]; }
require './ThinkPHP/Library/Vendor/php-resque/autoload.php';
\Resque::setBackend(['redis' => C('QUEUE')], 1);
echo \Resque::enqueue($argv[1], $argv[2], json_decode($argv[3], true), true), "\n";
