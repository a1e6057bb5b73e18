<?php
/*
 * Job classes for tests/php_handler.rs, loaded as the runner's bootstrap (RESQUE_BOOTSTRAP).
 * Jobs that report something write it to the file named in $this->args['out'].
 */

namespace Common\Job;

function report(array $args, $value)
{
    file_put_contents($args['out'], is_string($value) ? $value : json_encode($value));
}

function append(array $args, $value)
{
    file_put_contents($args['out'], $value . "\n", FILE_APPEND);
}

/** Writes its arguments to STDOUT (the daemon's log). */
class OkJob
{
    public $args;
    public $queue;
    public $job;

    public function perform()
    {
        fwrite(STDOUT, json_encode($this->args) . "\n");
    }
}

/** Reports what it was given: args, queue, and what $this->job carries. */
class ArgsJob
{
    public $args;
    public $queue;
    public $job;

    public function perform()
    {
        report($this->args, array(
            'args' => $this->args,
            'queue' => $this->queue,
            'job_queue' => $this->job->queue,
            'job_id' => $this->job->payload['id'],
            'job_class' => $this->job->payload['class'],
            'arguments' => $this->job->getArguments(),
        ));
    }
}

/** Records setUp/perform/tearDown in order. */
class LifecycleJob
{
    public $args;

    public function setUp()
    {
        append($this->args, 'setUp');
    }

    public function perform()
    {
        append($this->args, 'perform');
        if (!empty($this->args['throw'])) {
            throw new \RuntimeException('perform failed on purpose');
        }
    }

    public function tearDown()
    {
        append($this->args, 'tearDown');
    }
}

/** setUp throws php-resque's DontPerform (TP3 name, or CB/RP 1.x name with 'legacy'). */
class SkipJob
{
    public $args;

    public function setUp()
    {
        append($this->args, 'setUp');
        if (!empty($this->args['legacy'])) {
            throw new \Resque_Job_DontPerform();
        }
        throw new \Resque\Job\DontPerform();
    }

    public function perform()
    {
        append($this->args, 'perform');
    }

    public function tearDown()
    {
        append($this->args, 'tearDown');
    }
}

class ThrowJob
{
    public function perform()
    {
        $this->deeper();
    }

    private function deeper()
    {
        throw new \RuntimeException('something broke: ' . "\u{4e2d}");
    }
}

class UndefinedFunctionJob
{
    public function perform()
    {
        \this_function_does_not_exist();
    }
}

/** A genuine fatal error (E_COMPILE_ERROR): declaring a class twice. */
class RedeclareJob
{
    public function perform()
    {
        eval('class ResqueTestTwice {}');
        eval('class ResqueTestTwice {}');
    }
}

/** Runs out of memory the slow way: many small allocations up to the limit. */
class OomJob
{
    public function perform()
    {
        ini_set('memory_limit', '16M');
        $keep = array();
        while (true) {
            $keep[] = str_repeat('x', 4096);
        }
    }
}

class ExitJob
{
    public $args;

    public function perform()
    {
        exit(isset($this->args['code']) ? (int)$this->args['code'] : 3);
    }
}

/** Kills its own process: no PHP code runs afterwards, no response is written. */
class SelfKillJob
{
    public function perform()
    {
        posix_kill(getmypid(), SIGKILL);
        sleep(10);
    }
}

/** Reports the pid of the process running it. */
class PidJob
{
    public $args;

    public function perform()
    {
        report($this->args, (string)getmypid());
    }
}

/** Reports its pid, then sleeps. */
class SleepJob
{
    public $args;

    public function perform()
    {
        report($this->args, (string)getmypid());
        sleep(isset($this->args['seconds']) ? (int)$this->args['seconds'] : 60);
    }
}

/** Reports its pid, then waits (up to 20 s) until the file 'other' exists: needs a second process. */
class RendezvousJob
{
    public $args;

    public function perform()
    {
        report($this->args, (string)getmypid());
        for ($i = 0; $i < 200; $i++) {
            if (file_exists($this->args['other'])) {
                return;
            }
            usleep(100000);
        }
        throw new \RuntimeException('the other job never started');
    }
}

class QueueJob
{
    public $args;
    public $queue;

    public function perform()
    {
        echo 'queue=' . $this->queue . "\n";
        fwrite(STDERR, "to stderr\n");
        report($this->args, $this->queue);
    }
}

class NoPerformJob
{
    public function run()
    {
    }
}

/** Reports whether the command-mode entry point booted this process. */
class BootedJob
{
    public $args;

    public function perform()
    {
        report($this->args, defined('RESQUE_TEST_ENTRY_BOOTED') ? 'entry' : 'runner');
    }
}

/**
 * Throws php-resque's own exception, as the seed's jobs do to fail; php-resque is not loaded
 * here (the runner's fallback class stands in). args: {"legacy": true} throws Resque_Exception.
 */
class ResqueExceptionJob
{
    public $args;

    public function perform()
    {
        if (!empty($this->args['legacy'])) {
            throw new \Resque_Exception('legacy resque failure');
        }
        throw new \Resque\Exception('order 42 is not paid');
    }
}
