<?php
/*
 * A stand-in for an application's own entry point (ThinkPHP's `resque` script): it boots "the
 * framework", then hands over to the runner the daemon names in RESQUE_RUNNER.
 */
define('RESQUE_TEST_ENTRY_BOOTED', true);
require_once __DIR__ . '/jobs.php';

if (($argv[1] ?? '') !== 'runner') {
    fwrite(STDERR, "usage: entry.php runner\n");
    exit(64);
}
require getenv('RESQUE_RUNNER');
