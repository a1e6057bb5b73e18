<?php
/*
 * resque PHP runner: runs php-resque jobs for the resque daemon, one after another, in a
 * long-lived PHP process (or, with RESQUE_ISOLATION=fork, in a forked child per job).
 *
 * Run directly (`php runner.php`) or `require getenv('RESQUE_RUNNER');` from an application's own
 * entry point once its framework has booted ("command" mode).
 *
 * Protocol with the daemon (never stdin/stdout: jobs write to STDOUT, which goes to the log):
 *   fd 3 (requests), one JSON line per job:
 *     {"class":C,"args":<payload.args[0]>,"queue":Q,"id":ID|null,"payload":<whole payload>}
 *   fd 4 (responses), one JSON line each:
 *     {"ready":true,"pid":N,"php":"8.2.1","isolation":"pool"|"fork"}   once, after bootstrap
 *     {"ok":true,"memory":N}                                            job done
 *     {"ok":true,"dont_perform":true,"memory":N}                        DontPerform thrown
 *     {"ok":false,"exception":E,"error":M,"backtrace":[...],"memory":N} job failed
 *   A response written while the process is going down (fatal error, exit() in a job) also
 *   carries "exiting":true: the daemon must not send another job to this process.
 *   EOF on fd 3: exit 0.
 *
 * Environment: RESQUE_BOOTSTRAP (php-resque's APP_INCLUDE) is require_once'd once at start;
 * RESQUE_ISOLATION=fork forks a child per job (needs pcntl).
 * Exit codes at start: 78 (configuration: bootstrap missing, pcntl missing, fds 3/4 not open),
 * 70 (the bootstrap threw).
 */

namespace Resque\Runner {

    if (!\class_exists('Resque\Runner\JobContext', false)) {
        /**
         * What a job sees as `$this->job` (php-resque passes its Resque_Job there).
         */
        class JobContext
        {
            /** @var array the decoded payload */
            public $payload;
            /** @var string the queue the job was reserved from */
            public $queue;
            /** @var null no Resque_Worker object exists in this process */
            public $worker = null;
            /** @var object|null the job instance */
            public $instance = null;

            public function __construct($queue, $payload)
            {
                $this->queue = $queue;
                $this->payload = $payload;
            }

            /** php-resque's Resque_Job::getArguments(): args[0], or an empty array. */
            public function getArguments()
            {
                if (!isset($this->payload['args']) || !\is_array($this->payload['args'])) {
                    return array();
                }
                return \array_key_exists(0, $this->payload['args']) ? $this->payload['args'][0] : array();
            }

            public function getInstance()
            {
                return $this->instance;
            }

            public function __toString()
            {
                $name = array('Job{' . $this->queue . '}');
                if (!empty($this->payload['id'])) {
                    $name[] = 'ID: ' . $this->payload['id'];
                }
                $name[] = isset($this->payload['class']) ? $this->payload['class'] : '';
                if (!empty($this->payload['args'])) {
                    $name[] = \json_encode($this->payload['args']);
                }
                return '(' . \implode(' | ', $name) . ')';
            }
        }
    }

    if (!\class_exists('Resque\Runner\Runner', false)) {
        final class Runner
        {
            const EX_SOFTWARE = 70;
            const EX_CONFIG = 78;

            /** DontPerform exceptions of the php-resque variants (TP3, CB/RP 1.x, RP 2). */
            private static $dontPerform = array(
                'Resque\Job\DontPerform',
                'Resque_Job_DontPerform',
                'Resque\Exceptions\DoNotPerformException',
            );

            /** @var bool main() has been entered (a second require must not start again) */
            public static $started = false;
            /** @var resource|null where responses go: fd 4, or the socket to the parent in a forked child */
            private static $out = null;
            /** @var resource|null fd 4 */
            private static $fd4 = null;
            /** @var bool a job is running in this process */
            private static $inJob = false;
            /** @var bool this process is a forked job child */
            private static $isChild = false;
            /** @var string|null memory kept back for the shutdown function after an out-of-memory error */
            private static $reserve = null;

            public static function main()
            {
                if (self::$started) {
                    return;
                }
                self::$started = true;

                $fork = \strtolower((string)\getenv('RESQUE_ISOLATION')) === 'fork';
                if ($fork && !\function_exists('pcntl_fork')) {
                    self::fail(self::EX_CONFIG, 'RESQUE_ISOLATION=fork needs the pcntl extension, which this PHP lacks');
                }

                $in = @\fopen('php://fd/3', 'rb');
                $out = @\fopen('php://fd/4', 'wb');
                if ($in === false || $out === false) {
                    self::fail(self::EX_CONFIG, 'file descriptors 3 (requests) and 4 (responses) must be open: '
                        . 'this script is run by the resque daemon, not by hand');
                }
                self::$fd4 = $out;
                self::$out = $out;

                \spl_autoload_register(array(__CLASS__, 'autoloadFallback'));
                \register_shutdown_function(array(__CLASS__, 'onShutdown'));
                self::$reserve = \str_repeat("\0", 1 << 20);

                $bootstrap = (string)\getenv('RESQUE_BOOTSTRAP');
                if ($bootstrap !== '') {
                    if (!\is_file($bootstrap) || !\is_readable($bootstrap)) {
                        self::fail(self::EX_CONFIG, 'bootstrap file ' . $bootstrap
                            . ' (RESQUE_BOOTSTRAP, APP_INCLUDE) does not exist or is not readable'
                            . ' (working directory ' . \getcwd() . ')');
                    }
                    try {
                        self::requireOnce($bootstrap);
                    } catch (\Throwable $e) {
                        self::fail(self::EX_SOFTWARE, 'bootstrap file ' . $bootstrap . ' threw '
                            . \get_class($e) . ': ' . $e->getMessage() . ' in ' . $e->getFile() . ':' . $e->getLine());
                    }
                }

                // Output buffers a framework left open would hold job output back from the log.
                while (\ob_get_level() > 0 && @\ob_end_flush()) {
                }
                self::flushOutput();

                self::send(array(
                    'ready' => true,
                    'pid' => \getmypid(),
                    'php' => \PHP_VERSION,
                    'isolation' => $fork ? 'fork' : 'pool',
                ));

                while (($line = \fgets($in)) !== false) {
                    if (\trim($line) === '') {
                        continue;
                    }
                    $response = $fork ? self::runForked($line) : self::run($line);
                    self::send($response);
                }
                exit(0);
            }

            /** require_once in a scope of its own: the bootstrap sees no runner variables. */
            private static function requireOnce($file)
            {
                require_once $file;
            }

            private static function fail($code, $message)
            {
                \fwrite(\STDERR, 'resque runner: ' . $message . "\n");
                exit($code);
            }

            /**
             * Defines php-resque's exception classes a job may throw (DontPerform, and
             * Resque\Exception / Resque_Exception, the one the seed's jobs throw to fail) when the
             * application has not loaded php-resque: without them such a job would fail with
             * `Class "Resque\Exception" not found` instead of its own message. php-resque's own
             * classes win when the application can load them: the autoloaders registered after
             * this one (the bootstrap's, or one a job registers) are asked first.
             */
            public static function autoloadFallback($class)
            {
                switch (\strtolower(\ltrim($class, '\\'))) {
                    case 'resque\job\dontperform':
                        $code = 'namespace Resque\Job; class DontPerform extends \Exception {}';
                        break;
                    case 'resque_job_dontperform':
                        $code = 'class Resque_Job_DontPerform extends \Exception {}';
                        break;
                    case 'resque\exception':
                        $code = 'namespace Resque; class Exception extends \Exception {}';
                        break;
                    case 'resque_exception':
                        $code = 'class Resque_Exception extends \Exception {}';
                        break;
                    default:
                        return;
                }
                $self = array(__CLASS__, 'autoloadFallback');
                $after = false;
                foreach (\spl_autoload_functions() as $loader) {
                    if ($after) {
                        \call_user_func($loader, $class);
                        if (\class_exists($class, false)) {
                            return;
                        }
                    } elseif (\is_array($loader) && \count($loader) === 2
                        && $loader[0] === $self[0] && $loader[1] === $self[1]) {
                        $after = true;
                    }
                }
                eval($code);
            }

            /**
             * A backtrace for a failure the runner itself reports (no job class, no perform
             * method), as php-resque's record has one for the Resque_Exception it throws there:
             * the runner's frames that led to it.
             */
            private static function runnerTrace()
            {
                $e = new \Exception();
                return \explode("\n", $e->getTraceAsString());
            }

            private static function isDontPerform($e)
            {
                foreach (self::$dontPerform as $class) {
                    if (\is_a($e, $class)) {
                        return true;
                    }
                }
                return false;
            }

            /** Runs one request in this process; returns the response. */
            private static function run($line)
            {
                $request = \json_decode($line, true);
                if (!\is_array($request) || !isset($request['class']) || !\is_string($request['class'])) {
                    return self::failure('Resque\Exception', 'Could not decode the job request: ' . \json_last_error_msg(), self::runnerTrace());
                }
                $queue = isset($request['queue']) ? (string)$request['queue'] : '';
                $payload = isset($request['payload']) && \is_array($request['payload']) ? $request['payload'] : $request;
                $args = \array_key_exists('args', $request) ? $request['args'] : null;
                $class = $request['class'];
                $name = \strncmp($class, '\\', 1) === 0 ? (string)\substr($class, 1) : $class;

                \error_clear_last();
                self::$inJob = true;
                try {
                    try {
                        if ($name === '' || !\class_exists($name)) {
                            return self::failure('Resque\Exception', 'Could not find job class ' . $class . '.', self::runnerTrace());
                        }
                        if (!\method_exists($name, 'perform')) {
                            return self::failure('Resque\Exception', 'Job class ' . $class . ' does not contain a perform method.', self::runnerTrace());
                        }
                        $context = new JobContext($queue, $payload);
                        $instance = new $name();
                        $context->instance = $instance;
                        $instance->job = $context;
                        $instance->args = $args;
                        $instance->queue = $queue;
                        if (\method_exists($instance, 'setUp')) {
                            $instance->setUp();
                        }
                        $instance->perform();
                        if (\method_exists($instance, 'tearDown')) {
                            $instance->tearDown();
                        }
                        return self::success(false);
                    } catch (\Throwable $e) {
                        if (self::isDontPerform($e)) {
                            return self::success(true);
                        }
                        return self::failure(
                            \get_class($e),
                            $e->getMessage(),
                            \explode("\n", $e->getTraceAsString())
                        );
                    }
                } finally {
                    self::$inJob = false;
                    self::flushOutput();
                }
            }

            /** Runs one request in a forked child, as php-resque does; returns the response. */
            private static function runForked($line)
            {
                $pair = @\stream_socket_pair(\STREAM_PF_UNIX, \STREAM_SOCK_STREAM, \STREAM_IPPROTO_IP);
                if ($pair === false) {
                    return self::failure('Resque\Job\DirtyExitException', 'Could not create a socket pair for the job child');
                }
                self::flushOutput();
                $pid = \pcntl_fork();
                if ($pid === -1) {
                    \fclose($pair[0]);
                    \fclose($pair[1]);
                    return self::failure('Resque\Job\DirtyExitException', 'Could not fork: ' . \pcntl_strerror(\pcntl_get_last_error()));
                }
                if ($pid === 0) {
                    \fclose($pair[0]);
                    self::$isChild = true;
                    self::$out = $pair[1];
                    self::$fd4 = null;
                    self::send(self::run($line));
                    exit(0);
                }

                \fclose($pair[1]);
                $reply = \fgets($pair[0]);
                \fclose($pair[0]);
                $status = 0;
                do {
                    $waited = \pcntl_waitpid($pid, $status);
                } while ($waited === -1 && \pcntl_get_last_error() === \PCNTL_EINTR);

                $exited = $waited === $pid && \pcntl_wifexited($status);
                $code = $exited ? \pcntl_wexitstatus($status) : null;
                $signal = ($waited === $pid && \pcntl_wifsignaled($status)) ? \pcntl_wtermsig($status) : null;

                $response = $reply === false ? null : \json_decode($reply, true);
                if (\is_array($response) && isset($response['ok'])) {
                    if (!empty($response['exiting'])) {
                        unset($response['exiting']);
                        if ($response['error'] === 'Job called exit()' && $code !== null) {
                            $response['error'] .= ' with exit code ' . $code;
                        }
                    }
                    $response['memory'] = \memory_get_usage(true);
                    return $response;
                }
                if ($exited) {
                    return self::failure('Resque\Job\DirtyExitException', 'Job exited with exit code ' . $code);
                }
                return self::failure(
                    'Resque\Job\DirtyExitException',
                    'Job exited abnormally' . ($signal !== null ? ' (signal ' . $signal . ')' : '')
                );
            }

            private static function success($dontPerform)
            {
                $response = array('ok' => true);
                if ($dontPerform) {
                    $response['dont_perform'] = true;
                }
                $response['memory'] = \memory_get_usage(true);
                return $response;
            }

            private static function failure($exception, $error, $backtrace = array())
            {
                return array(
                    'ok' => false,
                    'exception' => $exception,
                    'error' => (string)$error,
                    'backtrace' => $backtrace,
                    'memory' => \memory_get_usage(true),
                );
            }

            private static function flushOutput()
            {
                // Buffers the job opened and left open.
                while (\ob_get_level() > 0 && @\ob_end_flush()) {
                }
                @\flush();
                if (\defined('STDOUT')) {
                    @\fflush(\STDOUT);
                }
                if (\defined('STDERR')) {
                    @\fflush(\STDERR);
                }
            }

            private static function send(array $response)
            {
                $flags = \JSON_UNESCAPED_SLASHES | \JSON_PARTIAL_OUTPUT_ON_ERROR;
                if (\defined('JSON_INVALID_UTF8_SUBSTITUTE')) {
                    $flags |= \JSON_INVALID_UTF8_SUBSTITUTE;
                }
                $json = \json_encode($response, $flags);
                if (!\is_string($json)) {
                    $json = \json_encode(array(
                        'ok' => false,
                        'exception' => 'Resque\Exception',
                        'error' => 'Could not encode the job response: ' . \json_last_error_msg(),
                        'backtrace' => array(),
                        'memory' => \memory_get_usage(true),
                    ));
                }
                if (self::$out !== null) {
                    @\fwrite(self::$out, $json . "\n");
                    @\fflush(self::$out);
                }
            }

            /**
             * A job ended the process (fatal error, out of memory, exit()): answer for it before the
             * process is gone.
             */
            public static function onShutdown()
            {
                self::$reserve = null;
                if (!self::$inJob) {
                    return;
                }
                self::$inJob = false;
                $limit = \ini_get('memory_limit');
                if ($limit !== false && $limit !== '' && $limit !== '-1') {
                    @\ini_set('memory_limit', (string)(\memory_get_usage(true) + (32 << 20)));
                }

                $fatal = \E_ERROR | \E_PARSE | \E_CORE_ERROR | \E_COMPILE_ERROR | \E_USER_ERROR | \E_RECOVERABLE_ERROR;
                $error = \error_get_last();
                if ($error !== null && ($error['type'] & $fatal)) {
                    switch ($error['type']) {
                        case \E_PARSE:
                            $kind = 'PHP Parse error';
                            break;
                        case \E_RECOVERABLE_ERROR:
                            $kind = 'PHP Recoverable fatal error';
                            break;
                        default:
                            $kind = 'PHP Fatal error';
                    }
                    $response = self::failure($kind, $error['message'] . ' in ' . $error['file'] . ':' . $error['line']);
                } else {
                    $response = self::failure('Resque\Job\DirtyExitException', 'Job called exit()');
                }
                $response['exiting'] = true;
                self::flushOutput();
                self::send($response);
            }
        }
    }
}

namespace {
    \Resque\Runner\Runner::main();
}
