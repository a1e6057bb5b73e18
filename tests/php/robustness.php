<?php
/*
 * Job classes for tests/handler_robustness.rs, loaded as the runner's bootstrap.
 */

namespace Robust;

/** Appends its job id to args['out']. */
class RecordJob
{
    public $args;
    public $job;

    public function perform()
    {
        file_put_contents($this->args['out'], $this->job->payload['id'] . "\n", FILE_APPEND);
    }
}

/**
 * Leaves a process behind that inherits the PHP worker's STDOUT and writes to it as fast as it
 * can (`y` lines), long after this job has answered (as a job that starts a helper and forgets
 * it).
 */
class ChattyJob
{
    public $args;

    /** @var array the helpers' handles: kept, so that PHP does not wait for them */
    public static $helpers = array();

    public function perform()
    {
        $helper = proc_open(
            array('yes'),
            array(0 => array('file', '/dev/null', 'r'), 1 => STDOUT, 2 => STDERR),
            $pipes
        );
        if ($helper === false) {
            throw new \RuntimeException('cannot start the helper');
        }
        self::$helpers[] = $helper;
        // Let it fill the pipe before we answer.
        usleep(200000);
    }
}
