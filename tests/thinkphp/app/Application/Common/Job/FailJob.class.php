<?php
namespace Common\Job;

/* Fails the way the seed's jobs fail on purpose: with php-resque's own exception. */
class FailJob
{
    public function perform()
    {
        throw new \Resque\Exception('FailJob: ' . (isset($this->args['why']) ? $this->args['why'] : 'no reason'));
    }
}
