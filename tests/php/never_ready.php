<?php
/*
 * An entry point that never hands over to the runner (never `require getenv('RESQUE_RUNNER')`):
 * it prints a line on each stream, then waits for ever, as an app stuck in its boot would.
 */
fwrite(STDOUT, "booting the application\n");
fwrite(STDERR, "still booting\n");
while (true) {
    sleep(1);
}
