<?php
// Demo job classes, written exactly as a php-resque / ThinkPHP app writes them.
namespace Demo\Job;

class Hello
{
    public function setUp()
    {
        fwrite(STDOUT, "setUp\n");
    }

    public function perform()
    {
        fwrite(STDOUT, 'Hello, ' . $this->args['name'] . " (queue {$this->queue})\n");
    }

    public function tearDown()
    {
        fwrite(STDOUT, "tearDown\n");
    }
}

class Fails
{
    public function perform()
    {
        throw new \RuntimeException('this job fails on purpose: ' . json_encode($this->args));
    }
}
