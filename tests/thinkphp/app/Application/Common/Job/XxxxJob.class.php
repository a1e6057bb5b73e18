<?php
namespace Common\Job;

/* The seed's example job; it also records what ran it (the daemon's runner or a php-resque loop). */
class XxxxJob
{
    public function perform()
    {
        $args = $this->args;
        fwrite(STDOUT, json_encode($args) . PHP_EOL);
        $by = getenv('RESQUE_RUNNER') ? 'resque' : 'php-resque';
        file_put_contents(APP_PATH . 'Runtime/ran.log', $by . ' ' . json_encode($args) . "\n", FILE_APPEND);
    }
}
