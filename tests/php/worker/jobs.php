<?php
/*
 * Job classes for tests/worker.rs: everything in ../jobs.php, plus jobs that wait for the test
 * (a "gate" file) so a status can be observed while the job runs, without timing assumptions.
 */

namespace {
    require_once __DIR__ . '/../jobs.php';
}

namespace Worker\Job {

    /** Waits (up to 20 s) until args['gate'] exists; then throws args['throw'] if given. */
    class GateJob
    {
        public $args;

        public function perform()
        {
            for ($i = 0; $i < 400; $i++) {
                if (file_exists($this->args['gate'])) {
                    break;
                }
                usleep(50000);
            }
            if (!empty($this->args['throw'])) {
                throw new \DomainException($this->args['throw']);
            }
        }
    }
}
