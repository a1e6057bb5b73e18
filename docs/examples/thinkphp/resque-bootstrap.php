<?php
/*
 * Bootstrap file for resque's PHP workers, for jobs that do not need ThinkPHP
 * itself (no C(), M(), D(), S(), no behaviours): what APP_INCLUDE / --app was.
 *
 *   /etc/resque.toml:  [[handler]] bootstrap = "/var/www/app/resque-bootstrap.php"
 *   or:                resque start --app=/var/www/app/resque-bootstrap.php
 *
 * It is loaded once per PHP worker process, before its first job. Define here
 * whatever the job classes use. See docs/thinkphp.md.
 */

// ThinkPHP sets the time zone from DEFAULT_TIMEZONE; plain PHP uses php.ini's.
date_default_timezone_set('PRC');

define('APP_PATH', __DIR__ . '/Application/');
define('COMMON_PATH', APP_PATH . 'Common/');

// php-resque, for jobs that enqueue further jobs or read a job's status: the
// same library and the same backend call as the app_init behaviour of the seed,
// with the app's own QUEUE config (Conf/config.php must be a plain
// "return array(...)" file). Jobs that only throw \Resque\Exception (or
// Resque_Exception, DontPerform) do not need it: the runner defines those
// classes when php-resque is not loaded.
require_once __DIR__ . '/ThinkPHP/Library/Vendor/php-resque/autoload.php';
$config = require COMMON_PATH . 'Conf/config.php';
\Resque::setBackend(array('redis' => $config['QUEUE']), 1);

// The job classes, loaded as QueueController::start() loaded them: every .php
// file in Application/Common/Job (XxxxJob.class.php, XxxxJob.php).
foreach (glob(COMMON_PATH . 'Job/*.php') as $file) {
    require_once $file;
}
