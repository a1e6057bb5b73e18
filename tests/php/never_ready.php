<?php
/*
 * An entry point that never hands over to the runner: what `php resque runner` does when the
 * app's Queue controller has no `runner` case. args: "quiet" prints nothing and sleeps; "loop"
 * prints like a php-resque worker would not (a plain message), then sleeps.
 */
fwrite(STDOUT, "booting the application\n");
fwrite(STDERR, "still booting\n");
while (true) {
    sleep(1);
}
